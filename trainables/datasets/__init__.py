"""Readers of standard on-disk dataset formats (CIFAR pickles, MNIST idx, SVHN .mat, WikiText, Cityscapes)."""
