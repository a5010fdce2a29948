"""The seed paper's image classifiers, from torchvision, adapted to 32x32 inputs as is usual.

torchvision's models are built for 224x224 ImageNet images; on 32x32 images their stems throw
away most of the resolution. The adaptations are the ones the CIFAR literature uses
(e.g. kuangliu/pytorch-cifar, bearpaw/pytorch-classification):

- ResNet-34: 3x3 stride-1 stem conv, no initial max-pool (32x32 -> 4x4 before the pool).
- VGG-16: the batch-norm variant (plain VGG-16 does not train at lr 0.1 from scratch); the five
  max-pools take 32x32 to 1x1, so the classifier is one Linear(512, classes).
- AlexNet: torchvision's widths; 11x11 stride-4 stem padded 5 (32 -> 8) and 2x2 max-pools
  (8 -> 4 -> 2 -> 1), so the classifier is one Linear(256, classes).
- MobileNetV2: stride-1 stem and stride 1 in the 24-channel stage (32 -> 4 at the end).

``in_channels`` replaces the stem's input channels (1 for MNIST). All models expect inputs
of at least 32x32 (MNIST's 28x28 digits are padded to 32x32 by the workload).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision import models as tvm


def resnet34(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    m = tvm.resnet34(weights=None, num_classes=num_classes)
    m.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    m.maxpool = nn.Identity()
    return m


def vgg16(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    m = tvm.vgg16_bn(weights=None, num_classes=num_classes)
    m.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    m.avgpool = nn.Flatten()  # features end at 512 x 1 x 1 for a 32x32 input
    m.classifier = nn.Linear(512, num_classes)
    return m


def alexnet(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    m = tvm.alexnet(weights=None, num_classes=num_classes)
    m.features[0] = nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=5)
    for i, layer in enumerate(m.features):
        if isinstance(layer, nn.MaxPool2d):
            m.features[i] = nn.MaxPool2d(kernel_size=2, stride=2)
    m.avgpool = nn.Flatten()  # features end at 256 x 1 x 1 for a 32x32 input
    m.classifier = nn.Linear(256, num_classes)
    return m


def mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    # torchvision's setting (t, c, n, s) with the 24-channel stage at stride 1, as for CIFAR.
    setting = [
        [1, 16, 1, 1],
        [6, 24, 2, 1],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]
    m = tvm.mobilenet_v2(weights=None, num_classes=num_classes, inverted_residual_setting=setting)
    stem = m.features[0][0]
    m.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride=1, padding=1, bias=False)
    return m


MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet34": resnet34,
    "vgg16": vgg16,
    "alexnet": alexnet,
    "mobilenetv2": mobilenetv2,
}


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels)
