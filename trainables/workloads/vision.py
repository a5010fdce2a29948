"""The seed paper's image classification workloads (Golmant et al., 2018, Table 1).

``cifar10_{resnet34,vgg16,alexnet,mobilenetv2}``, ``cifar100_resnet34``, ``svhn_resnet34`` and
``mnist_resnet34``: a torchvision model adapted to 32x32 (:mod:`trainables.models`) trained
with cross-entropy on the dataset's training split, evaluated on its test split
(``eval_loss``, ``eval_accuracy``, ``eval_error``).

Speed, in the manner of cifar10-airbench: the (subset of the) training set lives on the
device as uint8; each batch is gathered there, randomly cropped (4-pixel zero padding) and
flipped with batched tensor ops seeded by the generator :class:`TensorBatches` passes,
normalised there, and fed in channels-last layout under bf16 autocast. Nothing reads a value
back to the host between eval points. Nothing assumes a whole GPU either: a trial uses
whatever device Ray gives it, so fractional ``resources: {gpus: 0.25}`` works.

Options (``config.options``; defaults in :class:`VisionOptions`):
``augment`` (crop + flip, default true), ``flip`` (default: true for CIFAR, false for
digits), ``pad`` (crop padding in pixels, 4), ``channels_last`` / ``bf16`` (default: on for
cuda, off for cpu), ``compile`` (torch.compile the model, default false; a string names
the backend, e.g. ``aot_eager``), ``eval_limit``
(test images evaluated, 0 = all), ``eval_batch_size`` (1024), ``limit_train`` (training
images before ``data_fraction``; 50,000 for MNIST and SVHN as in the paper, 0 = all),
``subset_seed`` (seed of the fixed training subset, 0), ``extra`` (SVHN: add the 531,131
``extra`` images, as the paper's data-fraction experiment), ``nesterov`` (read by the loop).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.api import InputError, Target, TrialConfig
from trainables.datasets.images import DATASETS, SVHN_EXTRA_SIZE, read_split, subset_indices
from trainables.loop import Task, TensorBatches
from trainables.models import build_model
from trainables.options import parse_options
from trainables.registry import Workload, register

PAPER_LIMIT_TRAIN = 50_000  # the paper cuts MNIST and SVHN to 50k training images (Fig. 3)
IMAGE_SIZE = 32  # every model here is sized for 32x32; MNIST's 28x28 is zero-padded to it


@dataclass(frozen=True)
class VisionOptions:
    augment: bool = True  # random crop + flip (false: none)
    flip: bool | None = None  # None: the dataset's default (flips change the label of a digit)
    pad: int = 4  # pixels of zero padding before the random 32x32 crop
    channels_last: bool | None = None  # None: on for cuda
    bf16: bool | None = None  # None: bf16 autocast on for cuda
    compile: bool | str = False  # true: torch.compile (inductor); a string: that backend
    eval_limit: int = 0  # test images evaluated at each eval point; 0 = the whole test split
    eval_batch_size: int = 1024  # images per evaluation forward pass
    limit_train: int | None = None  # None: the workload's default; 0: the whole split
    subset_seed: int = 0  # fixes the training subset across trials (not the trial seed)
    extra: bool = False  # SVHN only: train on train + extra (604,388 images)

    @staticmethod
    def parse(options: dict[str, Any]) -> VisionOptions:
        opts = parse_options(VisionOptions, options, "an image workload")
        minimum = {
            "pad": 0,
            "eval_limit": 0,
            "eval_batch_size": 1,
            "limit_train": 0,
            "subset_seed": 0,
        }
        for name, low in minimum.items():
            value = getattr(opts, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < low
            ):
                raise InputError(f"options.{name}: must be an integer >= {low}, got {value!r}")
        return opts


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """Per-image random ``H x W`` crop of ``x`` zero-padded by ``pad`` pixels, then (if ``flip``)
    a horizontal flip with probability 1/2; one batched gather, any dtype, on ``x``'s device."""
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen, device=dev)
    rows = dy + torch.arange(h, device=dev)  # b x h: rows of the padded image to take
    cols = dx + torch.arange(w, device=dev)  # b x w
    if flip:
        flipped = torch.rand(b, 1, generator=gen, device=dev) < 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


class DeviceImages:
    """uint8 images -> normalised float batches, on the device; the ``transform`` of
    :class:`TensorBatches` (with augmentation) and the eval path (without)."""

    def __init__(
        self,
        mean,
        std,
        device: torch.device,
        augment: bool,
        pad: int,
        flip: bool,
        channels_last: bool,
    ):
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1)
        self.augment, self.pad, self.flip = augment, pad, flip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) * self.inv_std
        return x.contiguous(memory_format=self.memory_format)

    def __call__(
        self, batch: tuple[torch.Tensor, ...], gen: torch.Generator
    ) -> tuple[torch.Tensor, ...]:
        x, y = batch
        if self.augment:
            x = random_crop_flip(x, gen, self.pad, self.flip)
        return self.normalise(x), y


def _to_device_uint8(images: np.ndarray, device: torch.device) -> torch.Tensor:
    h, w = images.shape[-2:]
    if (h, w) != (IMAGE_SIZE, IMAGE_SIZE):  # MNIST: 28x28 -> 32x32, digit centred
        top, left = (IMAGE_SIZE - h) // 2, (IMAGE_SIZE - w) // 2
        images = np.pad(
            images, ((0, 0), (0, 0), (top, IMAGE_SIZE - h - top), (left, IMAGE_SIZE - w - left))
        )
    return torch.from_numpy(np.ascontiguousarray(images)).to(device)


def limit_for(dataset: str, opts: VisionOptions) -> int | None:
    """Training images before the data fraction (None: the whole split)."""
    if opts.limit_train is not None:
        return opts.limit_train or None
    return PAPER_LIMIT_TRAIN if dataset in ("mnist", "svhn") else None


def train_size(dataset: str, options: dict[str, Any], data_fraction: float = 1.0) -> int:
    """Training images a trial of ``dataset`` uses under ``options`` (before reading the data,
    assuming full-size files), e.g. to turn an epoch budget into steps."""
    opts = VisionOptions.parse(options)
    n = DATASETS[dataset].train_size + (SVHN_EXTRA_SIZE if dataset == "svhn" and opts.extra else 0)
    limit = limit_for(dataset, opts)
    base = min(n, limit) if limit else n
    return max(1, int(round(base * data_fraction)))


def build_task(dataset: str, arch: str, config: TrialConfig, device: torch.device) -> Task:
    opts = VisionOptions.parse(config.options)
    spec = DATASETS[dataset]
    cuda = device.type == "cuda"
    channels_last = cuda if opts.channels_last is None else opts.channels_last
    bf16 = cuda if opts.bf16 is None else opts.bf16
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels

    train = read_split(dataset, True, config.data_root, extra=opts.extra)
    test = read_split(dataset, False, config.data_root)
    idx = subset_indices(
        len(train), limit_for(dataset, opts), config.data_fraction, opts.subset_seed
    )
    x_train = _to_device_uint8(train.images[idx], device)
    y_train = torch.from_numpy(train.labels[idx]).to(device)
    n_eval = min(len(test), opts.eval_limit) if opts.eval_limit else len(test)
    x_test = _to_device_uint8(test.images[:n_eval], device)
    y_test = torch.from_numpy(test.labels[:n_eval]).to(device)

    images = DeviceImages(
        spec.mean,
        spec.std,
        device,
        augment=opts.augment,
        pad=opts.pad,
        flip=spec.flip if opts.flip is None else opts.flip,
        channels_last=channels_last,
    )
    model = build_model(arch, spec.num_classes, spec.channels).to(
        device, memory_format=images.memory_format
    )
    if opts.compile:  # in place: state_dict keys (checkpoints) stay those of the plain model
        model.compile(**({"backend": opts.compile} if isinstance(opts.compile, str) else {}))

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return m(x)

    def loss(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(forward(m, x).float(), y)

    def evaluate(m: nn.Module) -> dict[str, float]:
        total = torch.zeros(2, device=device)  # summed loss, correct predictions
        for i in range(0, n_eval, opts.eval_batch_size):
            x, y = x_test[i : i + opts.eval_batch_size], y_test[i : i + opts.eval_batch_size]
            logits = forward(m, images.normalise(x)).float()
            total += torch.stack(
                [F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) == y).sum().float()]
            )
        eval_loss, correct = (total / n_eval).tolist()  # the one host sync of an eval point
        return {"eval_loss": eval_loss, "eval_accuracy": correct, "eval_error": 1.0 - correct}

    batches = TensorBatches((x_train, y_train), config.batch_size, config.seed, transform=images)
    return Task(model, batches, loss, evaluate, len(idx))


# name -> (dataset, architecture, label, default target accuracy: about what a tuned small
# batch reaches in the paper's 200 epochs, so the default goal is reachable but demanding,
# default options)
WORKLOADS: dict[str, tuple[str, str, str, float, dict[str, Any]]] = {
    "cifar10_resnet34": ("cifar10", "resnet34", "ResNet-34 on CIFAR-10", 0.90, {}),
    "cifar10_vgg16": ("cifar10", "vgg16", "VGG-16 (batch norm) on CIFAR-10", 0.90, {}),
    "cifar10_alexnet": ("cifar10", "alexnet", "AlexNet on CIFAR-10", 0.75, {}),
    "cifar10_mobilenetv2": ("cifar10", "mobilenetv2", "MobileNetV2 on CIFAR-10", 0.90, {}),
    "cifar100_resnet34": ("cifar100", "resnet34", "ResNet-34 on CIFAR-100", 0.65, {}),
    "svhn_resnet34": ("svhn", "resnet34", "ResNet-34 on SVHN", 0.95, {}),
    "mnist_resnet34": ("mnist", "resnet34", "ResNet-34 on MNIST", 0.99, {}),
    # The paper's data-fraction experiment (Fig. 4) trains on all 604,388 SVHN images. A
    # workload of its own, so that its registered train_size (epochs -> steps) is right.
    "svhn_extra_resnet34": (
        "svhn",
        "resnet34",
        "ResNet-34 on SVHN train + extra",
        0.95,
        {"extra": True, "limit_train": 0},
    ),
}
METRICS = {"eval_loss": "min", "eval_accuracy": "max", "eval_error": "min"}


def _register(
    name: str, dataset: str, arch: str, label: str, accuracy: float, defaults: dict[str, Any]
) -> None:
    spec = DATASETS[dataset]
    n = train_size(dataset, defaults)
    cut = ", cut to 50k as in the paper" if n < spec.train_size else ""

    def build(config: TrialConfig, device: torch.device) -> Task:
        if defaults:  # the workload's own defaults, under what the job sets
            config = dataclasses.replace(config, options={**defaults, **config.options})
        return build_task(dataset, arch, config, device)

    register(
        Workload(
            name=name,
            description=f"{label} ({n:,} train images{cut} / {spec.test_size:,} test; seed paper Table 1)",
            metrics=METRICS,
            default_target=Target("eval_accuracy", accuracy, "max"),
            train_size=n,
            build=build,
            dataset="svhn-extra" if defaults.get("extra") else dataset,
            options=VisionOptions,
            cpu_friendly=False,
        )
    )


for _name, _spec in WORKLOADS.items():
    _register(_name, *_spec)
