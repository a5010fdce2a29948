"""Training batches of exactly the trial's batch size, seeded and resumable.

Two paths share one index stream (:class:`IndexStream`), so the same seed draws the same
examples in the same order whichever path a workload takes:

- :class:`TensorBatches`: tensors that already live on the training device; a batch is one
  gather there (the fast path: nothing crosses to the host between eval points).
- :class:`DatasetBatches`: a map-style ``torch.utils.data.Dataset`` (``__len__`` and
  ``__getitem__``); items are read (by DataLoader workers where that is faster), collated
  and moved to the device. The stream's position at the last batch *handed to the loop* is
  the checkpoint, so a restored trial sees the same batches even though workers read ahead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch


class IndexStream:
    """Example indices in batches of ``batch_size``: a fresh seeded permutation per epoch; a
    batch that runs past the end of an epoch is filled from the next one, so every batch has
    exactly ``batch_size`` examples (batch size is the scientific variable: it must not wobble)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next_indices(self) -> torch.Tensor:
        parts = []
        need = self.batch_size
        while need > 0:
            if self.pos >= self.n:
                self.perm = torch.randperm(self.n, generator=self.gen)
                self.pos = 0
            take = min(need, self.n - self.pos)
            parts.append(self.perm[self.pos : self.pos + take])
            self.pos += take
            need -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.gen.set_state(s["gen"])
        self.perm = s["perm"].clone()
        self.pos = int(s["pos"])


class TensorBatches:
    """Shuffled mini-batches over tensors that already live on the training device.

    ``transform(batch, generator)`` applies on-device augmentation. The position in the
    stream is part of the checkpoint, so a restored trial sees the same batches.
    """

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        batch_size: int,
        seed: int,
        transform: Callable[[tuple[torch.Tensor, ...], torch.Generator], tuple[torch.Tensor, ...]]
        | None = None,
    ):
        self.tensors = tensors
        self.n = int(tensors[0].shape[0])
        self.batch_size = batch_size
        self.transform = transform
        self.device = tensors[0].device
        self.stream = IndexStream(self.n, batch_size, seed)
        self.aug_gen = torch.Generator(device=self.device).manual_seed(seed + 1)

    def __next__(self) -> tuple[torch.Tensor, ...]:
        idx = self.stream.next_indices().to(self.device, non_blocking=True)
        batch = tuple(t[idx] for t in self.tensors)
        if self.transform is not None:
            batch = self.transform(batch, self.aug_gen)
        return batch

    def __iter__(self):
        return self

    def set_batch_size(self, batch_size: int) -> None:
        """Draw batches of ``batch_size`` from here on (a batch-size schedule), the stream
        going on where it is."""
        self.batch_size = self.stream.batch_size = batch_size

    def state_dict(self) -> dict[str, Any]:
        return {**self.stream.state_dict(), "aug_gen": self.aug_gen.get_state()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.stream.load_state_dict(s)
        self.aug_gen.set_state(s["aug_gen"])


def default_workers(device: torch.device) -> int:
    """DataLoader workers for a Dataset: on a GPU, a few processes read and collate while the
    device trains; on a CPU the trial's threads already train, and workers only add the cost
    of pickling every batch across processes (BENCHMARKS.md, "Dataset path")."""
    return min(4, torch.multiprocessing.cpu_count()) if device.type == "cuda" else 0


class DatasetBatches:
    """Mini-batches of a map-style Dataset, in the order :class:`IndexStream` draws.

    ``num_workers`` DataLoader processes read ahead (``None``: :func:`default_workers`); the
    checkpointed position is that of the batches returned so far, and a restore restarts the
    readers from it. Items go through ``collate`` (torch's default: tensors stacked, numbers
    made tensors) and land on ``device`` (pinned memory first on CUDA).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        seed: int,
        device: torch.device,
        num_workers: int | None = None,
        collate: Callable[[list[Any]], Any] | None = None,
    ):
        from torch.utils.data import default_collate

        self.dataset, self.batch_size, self.seed, self.device = dataset, batch_size, seed, device
        self.n = len(dataset)
        self.num_workers = default_workers(device) if num_workers is None else num_workers
        self.collate = collate or default_collate
        self.consumed = IndexStream(self.n, batch_size, seed)  # what the loop has been given
        self._it: Iterator[Any] | None = None

    def _start(self) -> Iterator[Any]:
        from torch.utils.data import DataLoader

        ahead = IndexStream(self.n, self.batch_size, self.seed)
        ahead.load_state_dict(self.consumed.state_dict())

        class _Sampler:  # an endless stream of index lists, read ahead by the loader
            def __iter__(self):
                while True:
                    yield ahead.next_indices().tolist()

        loader = DataLoader(
            self.dataset,
            batch_sampler=_Sampler(),
            num_workers=self.num_workers,
            collate_fn=self.collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_seed_worker,
            generator=torch.Generator().manual_seed(self.seed + 2),  # workers' base seed
        )
        return iter(loader)

    def __next__(self) -> Any:
        if self._it is None:
            self._it = self._start()
        batch = next(self._it)
        if type(batch) is list:  # default_collate turns (x, y) items into [xs, ys]: as tensors do
            batch = tuple(batch)
        self.consumed.next_indices()  # keep the checkpointed position in step with the loop
        return _to_device(batch, self.device)

    def __iter__(self):
        return self

    def set_batch_size(self, batch_size: int) -> None:
        """Batches of ``batch_size`` from here on; the readers restart from the position."""
        self.batch_size = self.consumed.batch_size = batch_size
        self._it = None

    def state_dict(self) -> dict[str, Any]:
        return self.consumed.state_dict()

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.consumed.load_state_dict(s)
        self._it = None  # readers restart from the restored position


def _seed_worker(worker_id: int) -> None:
    """Python's and numpy's RNGs in a worker follow torch's per-worker seed (set from the
    loader's seeded generator), so random augmentation in ``__getitem__`` is reproducible."""
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple | list):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def as_batches(batches: Any, batch_size: int, seed: int, device: torch.device) -> Any:
    """What a Task's ``batches`` may be, made a batch iterator: an iterator with
    ``state_dict``/``load_state_dict`` as it is; a map-style Dataset as :class:`DatasetBatches`;
    a tuple of tensors as :class:`TensorBatches` (moved to ``device``)."""
    if isinstance(batches, tuple) and batches and all(isinstance(t, torch.Tensor) for t in batches):
        return TensorBatches(tuple(t.to(device) for t in batches), batch_size, seed)
    if hasattr(batches, "__next__"):
        return batches
    if hasattr(batches, "__getitem__") and hasattr(batches, "__len__"):
        return DatasetBatches(batches, batch_size, seed, device)
    raise TypeError(
        f"Task.batches: got {type(batches).__name__}; give a map-style torch Dataset, a tuple of "
        "tensors, or an iterator of batches with state_dict/load_state_dict (e.g. TensorBatches)"
    )
