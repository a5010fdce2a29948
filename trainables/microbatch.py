"""Gradient accumulation: one optimizer step's batch run as several smaller forward/backward
passes, so a batch size larger than the device's memory still trains.

``loss_fn(model, batch)`` is a mean over the batch's examples. :func:`backward_mean` cuts the
batch into ``k = ceil(B / micro_batch_size)`` near-equal parts and backpropagates each part's
loss weighted by its share of the batch, so the accumulated ``.grad`` is the full-batch mean
gradient, as one backward pass over the whole batch gives (up to float rounding). Two
exceptions, both as in data-parallel training, where each device holds one part: BatchNorm
normalises each part with its own statistics ("ghost batch norm"), and a loss that is a mean
over something other than examples (labelled pixels, in segmentation) is weighted by examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


def batch_len(batch: Any) -> int:
    """Examples in a batch: a tensor, or a tuple / list / dict of them (first dimension)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        return batch_len(next(iter(batch.values())))
    return batch_len(batch[0])


def slice_batch(batch: Any, lo: int, hi: int) -> Any:
    """Examples lo..hi of a batch: a tensor, or a tuple / list / dict of them."""
    if isinstance(batch, torch.Tensor):
        return batch[lo:hi]
    if isinstance(batch, dict):
        return {k: slice_batch(v, lo, hi) for k, v in batch.items()}
    return type(batch)(slice_batch(v, lo, hi) for v in batch)


def backward_mean(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    batch: Any,
    micro_batch_size: int = 0,
    weight: float = 1.0,
) -> torch.Tensor:
    """Backpropagate ``weight`` x the batch's mean loss, in parts of at most
    ``micro_batch_size`` examples (0: one pass); returns the mean loss, detached, on the
    device (no host sync)."""
    n = batch_len(batch)
    if micro_batch_size <= 0 or n <= micro_batch_size:
        loss = loss_fn(model, batch)
        (loss * weight if weight != 1.0 else loss).backward()
        return loss.detach()
    k = math.ceil(n / micro_batch_size)
    total = None
    for i in range(k):
        lo, hi = i * n // k, (i + 1) * n // k
        share = (hi - lo) / n
        loss = loss_fn(model, slice_batch(batch, lo, hi))
        (loss * (share * weight)).backward()
        part = loss.detach() * share
        total = part if total is None else total + part
    return total
