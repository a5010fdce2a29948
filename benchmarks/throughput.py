"""Training throughput of ResNet-34 on CIFAR-10-shaped data: critbatch's path vs a plain loop.

Both loops train the same 32x32 ResNet-34 (:func:`trainables.models.resnet34`) with SGD
(momentum 0.9) on the same random uint8 images (N x 3 x 32 x 32, 10 classes), side by side in
one run, at each batch size:

- **critbatch**: what the image workloads do (:mod:`trainables.workloads.vision`): the whole
  training set resident on the device as uint8; :class:`trainables.loop.TensorBatches` gathers
  each batch there; random crop (4-pixel padding) + flip and normalisation are batched tensor
  ops on the device; bf16 autocast and channels-last layout (the workloads' defaults on cuda;
  ``--bf16``/``--channels-last`` to force); losses stay on the device (no host sync per step).
- **plain**: the usual torchvision recipe: CPU uint8 tensors, per-image ``transforms.v2``
  (RandomCrop(32, padding=4), RandomHorizontalFlip, ToDtype, Normalize) in a ``DataLoader``
  (``--workers`` processes, pinned memory on cuda), ``.to(device)`` every step, fp32. It does
  not call ``loss.item()`` per step, so its figure is an upper bound for that style of loop.

Images/s = batch size x timed steps / their wall time, after ``--warmup`` untimed steps (cuDNN
autotuning, DataLoader workers starting); cuda is synchronised before each clock read.

    .venv/bin/python benchmarks/throughput.py                             # GPU: 128, 1024, 8192
    .venv/bin/python benchmarks/throughput.py --device cpu --batch-sizes 16,64 --steps 3
    .venv/bin/python benchmarks/throughput.py --smoke-test                # seconds, any device
    .venv/bin/python benchmarks/throughput.py --data-only                 # input pipelines alone

``--data-only`` times the two input pipelines without the model: a plain loop's ceiling is
its DataLoader's rate, whatever the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.datasets.images import DATASETS  # noqa: E402
from trainables.loop import TensorBatches, resolve_device  # noqa: E402
from trainables.models import resnet34  # noqa: E402
from trainables.workloads.vision import DeviceImages  # noqa: E402

CIFAR = DATASETS["cifar10"]


def random_cifar(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(
        0, 10, (n,), generator=g
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def critbatch_path(
    data: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
    device: torch.device,
    steps: int,
    warmup: int,
    bf16: bool,
    channels_last: bool,
    data_only: bool = False,
) -> float:
    """Images/s of the image workloads' training step (the shared loop's inner loop); with
    ``data_only``, of their batches alone (gather, crop, flip, normalise, on the device)."""
    images = DeviceImages(
        CIFAR.mean, CIFAR.std, device, augment=True, pad=4, flip=True, channels_last=channels_last
    )
    x, y = (t.to(device) for t in data)
    batches = TensorBatches((x, y), batch_size, seed=0, transform=images)
    if data_only:
        return _rate(lambda: next(batches), batch_size, device, steps, warmup)
    model = resnet34(10).to(device, memory_format=images.memory_format).train()
    opt = _sgd(model)
    loss_sum = torch.zeros((), device=device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def step() -> None:
        xb, yb = next(batches)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb)
        loss.backward()
        opt.step()
        loss_sum.add_(loss.detach())

    return _rate(step, batch_size, device, steps, warmup)


def _rate(step: Any, batch_size: int, device: torch.device, steps: int, warmup: int) -> float:
    """Images/s of ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch_size * steps / (time.perf_counter() - t0)


class _PlainDataset(torch.utils.data.Dataset):
    """CPU uint8 images with per-image torchvision transforms, as in the tutorials."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        from torchvision.transforms import v2

        self.x, self.y = x, y
        self.transform = v2.Compose(
            [
                v2.RandomCrop(32, padding=4),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize([m / 255 for m in CIFAR.mean], [s / 255 for s in CIFAR.std]),
            ]
        )

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.x[i]), self.y[i]


def plain_path(
    data: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
    device: torch.device,
    steps: int,
    warmup: int,
    workers: int,
    data_only: bool = False,
) -> float:
    """Images/s of a plain DataLoader loop: CPU transforms, .to(device) per step, fp32; with
    ``data_only``, of its batches alone (the loader's batch moved to the device)."""
    loader = torch.utils.data.DataLoader(
        _PlainDataset(*data),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )

    def batches():
        while True:
            yield from loader

    it = batches()

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        xb, yb = next(it)
        return xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)

    if data_only:
        rate = _rate(batch, batch_size, device, steps, warmup)
        it.close()
        return rate
    model = resnet34(10).to(device).train()
    opt = _sgd(model)

    def step() -> None:
        xb, yb = batch()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()

    rate = _rate(step, batch_size, device, steps, warmup)
    it.close()  # drops the loader's iterator: its workers stop before the next batch size
    return rate


def _flag(value: str, device: torch.device) -> bool:
    return device.type == "cuda" if value == "auto" else value == "on"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--device", default="auto", help="auto (cuda if available), cuda, cpu, cuda:1, ..."
    )
    p.add_argument("--steps", type=int, default=50, help="timed steps per batch size and path")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--batch-sizes", default="128,1024,8192", help="comma-separated")
    p.add_argument(
        "--train-size", type=int, default=50_000, help="random images (CIFAR-10 has 50,000)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="DataLoader workers (plain)",
    )
    p.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="critbatch path; auto: on for cuda",
    )
    p.add_argument(
        "--channels-last", choices=("auto", "on", "off"), default="auto", help="critbatch path"
    )
    p.add_argument(
        "--data-only",
        action="store_true",
        help="time the batches alone (no model): the input pipelines side by side",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--smoke-test", action="store_true", help="batch sizes 8,16, 1 timed step: checks it runs"
    )
    args = p.parse_args(argv)
    if args.smoke_test:
        args.batch_sizes, args.steps, args.warmup, args.train_size = "8,16", 1, 1, 256
        args.workers = min(args.workers, 2)

    device = resolve_device(args.device)
    bf16, channels_last = _flag(args.bf16, device), _flag(args.channels_last, device)
    data = random_cifar(args.train_size)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    )
    print(
        f"{'input pipelines only (no model)' if args.data_only else 'ResNet-34'}, CIFAR-10 shapes, "
        f"{args.train_size:,} random images; device {name}; torch {torch.__version__}"
    )
    print(
        f"critbatch path: bf16={'on' if bf16 else 'off'}, channels_last={'on' if channels_last else 'off'}; "
        f"plain: fp32, {args.workers} DataLoader workers; {args.steps} timed steps after {args.warmup}"
    )
    print(f"{'batch':>6}  {'critbatch img/s':>15}  {'plain img/s':>12}  {'ratio':>6}")
    rows = []
    for b in (int(s) for s in args.batch_sizes.split(",")):
        fast = critbatch_path(
            data, b, device, args.steps, args.warmup, bf16, channels_last, args.data_only
        )
        plain = plain_path(data, b, device, args.steps, args.warmup, args.workers, args.data_only)
        rows.append(
            {
                "batch_size": b,
                "critbatch_images_per_s": fast,
                "plain_images_per_s": plain,
                "ratio": fast / plain,
            }
        )
        print(f"{b:>6}  {fast:>15.1f}  {plain:>12.1f}  {fast / plain:>6.2f}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        meta = {
            "device": name,
            "torch": torch.__version__,
            "steps": args.steps,
            "warmup": args.warmup,
            "bf16": bf16,
            "channels_last": channels_last,
            "workers": args.workers,
            "data_only": args.data_only,
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
