"""`cityscapes_drn`: DRN-D-22 semantic segmentation on Cityscapes (the seed paper's IS workload).

The model is DRN-D-22 (Yu, Koltun and Funkhouser, "Dilated Residual Networks", 2017; layer
for layer as ``drn_d_22`` in github.com/fyu/drn): a 7x7 stem and plain 3x3 conv stages
instead of max-pooling, residual stages of BasicBlocks at strides 4 and 8, then dilation 2
and 4 in place of further striding, and two de-gridding conv layers (dilation 2, then 1):
512 channels at output stride 8. A 1x1 classifier gives 19 class scores, upsampled
bilinearly to the input size. Trained from scratch (no ImageNet weights: critbatch has no
downloads), so absolute mIoU is below the DRN paper's pretrained numbers.

Loss: per-pixel cross entropy, ignore index 255, averaged over the labelled pixels of the
batch. Eval on the validation images, whole (no crop), at the training resolution:
``eval_loss``, ``eval_pixel_accuracy`` and ``eval_miou`` (IoU per class from the confusion
matrix of all evaluated pixels, averaged over the classes that appear in the labels or the
predictions, as the DRN code and the official script do).

Data: every image decoded once (PIL), kept as uint8 tensors on the training device when they
fit in a quarter of its free memory (else in pinned host memory); each batch is a random
square crop and horizontal flip per image, done by one gather on the tensors' device.

Options: ``crop`` (448: DRN's 896 crop at the default ``downscale`` 2 sees the same field of
view), ``downscale`` (2: 1024x512 images; 1 = full 2048x1024 resolution), ``eval_images``
(0 = all 500), ``eval_batch`` (4), ``flip`` (true), ``decode_workers`` (0 = min(8, cores)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainables.api import Target, TrialConfig
from trainables.datasets import cityscapes
from trainables.loop import Task, TensorBatches
from trainables.options import parse_options
from trainables.registry import Workload, register

N_CLASSES = len(cityscapes.CLASSES)


@dataclass(frozen=True)
class SegmentationOptions:
    crop: int = 448  # side of the random square training crop, pixels (after downscale)
    downscale: int = 2  # images and labels shrunk by this factor when decoded
    eval_images: int = 0  # validation images evaluated (0 = all 500)
    eval_batch: int = 4  # images per evaluation forward pass
    flip: bool = True  # random horizontal flips of the training crops
    decode_workers: int = 0  # processes decoding the PNGs once (0 = one per CPU)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)
    return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: tuple[int, int] = (1, 1)):
        super().__init__()
        d1, d2 = dilation
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=d1, dilation=d1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=d2, dilation=d2, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + residual, inplace=True)


def _residual_stage(
    cin: int, cout: int, blocks: int, stride: int = 1, dilation: int = 1
) -> nn.Sequential:
    # DRN-D's dilated stages use new_level=False: the first block is dilated fully too.
    layers = [BasicBlock(cin, cout, stride, (dilation, dilation))]
    layers += [BasicBlock(cout, cout, 1, (dilation, dilation)) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class DRND22(nn.Module):
    """DRN-D-22 trunk (output stride 8, 512 channels) + 1x1 classifier + bilinear upsampling."""

    def __init__(self, classes: int = N_CLASSES):
        super().__init__()
        c = (16, 32, 64, 128, 256, 512, 512, 512)
        self.base = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(3, c[0], 7, 1, padding=3, bias=False),
                nn.BatchNorm2d(c[0]),
                nn.ReLU(inplace=True),
            ),
            nn.Sequential(*_conv_bn_relu(c[0], c[0])),  # layer1
            nn.Sequential(*_conv_bn_relu(c[0], c[1], stride=2)),  # layer2: 1/2
            _residual_stage(c[1], c[2], 2, stride=2),  # layer3: 1/4
            _residual_stage(c[2], c[3], 2, stride=2),  # layer4: 1/8
            _residual_stage(c[3], c[4], 2, dilation=2),  # layer5
            _residual_stage(c[4], c[5], 2, dilation=4),  # layer6
            nn.Sequential(*_conv_bn_relu(c[5], c[6], dilation=2)),  # layer7: de-gridding
            nn.Sequential(*_conv_bn_relu(c[6], c[7])),  # layer8
        )
        self.seg = nn.Conv2d(c[7], classes, 1)
        for m in self.modules():  # DRN's initialisation (He normal over fan-out)
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.seg(self.base(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, classes: int = N_CLASSES
) -> torch.Tensor:
    """counts[t, p]: labelled pixels of true class t predicted as p (ignore pixels skipped)."""
    keep = target != cityscapes.IGNORE
    idx = target[keep].long() * classes + pred[keep].long()
    return torch.bincount(idx, minlength=classes * classes).reshape(classes, classes)


def segmentation_metrics(counts: torch.Tensor) -> dict[str, float]:
    """Pixel accuracy and mean IoU from a confusion matrix; classes absent from both the
    labels and the predictions (union 0) are left out of the mean."""
    counts = counts.double()
    tp = counts.diag()
    union = counts.sum(0) + counts.sum(1) - tp
    present = union > 0
    total = counts.sum()
    return {
        "eval_miou": float((tp[present] / union[present]).mean()) if present.any() else 0.0,
        "eval_pixel_accuracy": float(tp.sum() / total) if total > 0 else 0.0,
    }


def _normalizer(device: torch.device):
    mean = torch.tensor(cityscapes.MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cityscapes.STD, device=device).view(1, 3, 1, 1)
    return lambda img: (img.float() / 255.0 - mean) / std


def crop_and_flip(crop: int, flip: bool, out_device: torch.device):
    """Batch transform: a random ``crop`` x ``crop`` window and a random horizontal flip per
    image, by one gather on the tensors' device, then normalised floats on ``out_device``."""
    normalize = _normalizer(out_device)

    def transform(
        batch: tuple[torch.Tensor, ...], gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        n, _, h, w = images.shape
        ch, cw, dev = min(crop, h), min(crop, w), images.device
        oy = torch.randint(0, h - ch + 1, (n, 1), generator=gen, device=dev)
        ox = torch.randint(0, w - cw + 1, (n, 1), generator=gen, device=dev)
        cols = torch.arange(cw, device=dev).expand(n, cw)
        if flip:
            flipped = torch.rand(n, 1, generator=gen, device=dev) < 0.5
            cols = torch.where(flipped, cw - 1 - cols, cols)
        rows = oy + torch.arange(ch, device=dev)  # (n, ch)
        cols = ox + cols  # (n, cw)
        b = torch.arange(n, device=dev)
        img = images[
            b[:, None, None, None],
            torch.arange(3, device=dev)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
        lab = labels[b[:, None, None], rows[:, :, None], cols[:, None, :]]
        img = img.to(out_device, non_blocking=True)
        return normalize(img), lab.to(out_device, non_blocking=True).long()

    return transform


def _placement(nbytes: int, device: torch.device) -> torch.device:
    """The training device if the data fits in a quarter of its free memory, else the host."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    return device if nbytes < free // 4 else torch.device("cpu")


def build(config: TrialConfig, device: torch.device) -> Task:
    o = parse_options(SegmentationOptions, config.options, "cityscapes_drn")
    downscale, workers = o.downscale, o.decode_workers
    images, labels = cityscapes.load_split(config.data_root, "train", downscale, 0, workers)
    n = max(
        1, int(round(images.shape[0] * config.data_fraction))
    )  # the first fraction, sorted order
    images, labels = images[:n], labels[:n]
    home = _placement(images.numel() + labels.numel(), device)
    images, labels = images.to(home), labels.to(home)  # no copy when already there
    if home != device:  # too big for the accelerator: batches are cropped on the host, then copied
        images, labels = images.pin_memory(), labels.pin_memory()
    transform = crop_and_flip(o.crop, o.flip, device)
    batches = TensorBatches((images, labels), config.batch_size, config.seed, transform)

    val_images, val_labels = cityscapes.load_split(
        config.data_root, "val", downscale, o.eval_images, workers
    )
    eval_batch = o.eval_batch
    normalize = _normalizer(device)

    def loss(m: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        total = F.cross_entropy(m(x), y, ignore_index=cityscapes.IGNORE, reduction="sum")
        return total / (y != cityscapes.IGNORE).sum().clamp(
            min=1
        )  # an all-ignore crop gives 0, not NaN

    def evaluate(m: nn.Module) -> dict[str, float]:
        counts = torch.zeros(N_CLASSES, N_CLASSES, dtype=torch.long, device=device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for i in range(0, val_images.shape[0], eval_batch):
            x = normalize(val_images[i : i + eval_batch].to(device))
            y = val_labels[i : i + eval_batch].to(device).long()
            logits = m(x)
            loss_sum += F.cross_entropy(
                logits, y, ignore_index=cityscapes.IGNORE, reduction="sum"
            ).double()
            counts += confusion_matrix(logits.argmax(1), y)
        labelled = counts.sum()
        return {
            "eval_loss": float(loss_sum / labelled.clamp(min=1)),
            **segmentation_metrics(counts),
        }

    return Task(DRND22(), batches, loss, evaluate, n)


register(
    Workload(
        name="cityscapes_drn",
        description="DRN-D-22 semantic segmentation on Cityscapes fine (19 classes, from scratch)",
        metrics={"eval_loss": "min", "eval_miou": "max", "eval_pixel_accuracy": "max"},
        default_target=Target("eval_miou", 0.5, "max"),
        train_size=cityscapes.TRAIN_IMAGES,
        build=build,
        options=SegmentationOptions,
        dataset="cityscapes",
        cpu_friendly=False,
    )
)
