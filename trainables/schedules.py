"""Learning-rate strategies as pure functions of the step (docs/science.md §1).

``peak_lr`` turns a strategy into the learning rate used at batch size B; ``lr_at`` gives the
rate at a step, with linear warm-up and optional step decay. Both are pure: no optimizer, no
state, so they are tested alone and plotted as they are.
"""

from __future__ import annotations

import math

from trainables.api import Schedule

STRATEGIES = ("tuned", "blr", "lsr", "srsr")


def peak_lr(schedule: Schedule, batch_size: int, tuned_lr: float | None = None) -> float:
    """Peak learning rate at ``batch_size`` under ``schedule``.

    tuned: ``tuned_lr`` (the value the search proposes); blr: base_lr; lsr: base_lr * B/B0
    (Goyal et al.); srsr: base_lr * sqrt(B/B0).
    """
    s = schedule.strategy
    if s == "tuned":
        if tuned_lr is None:
            raise ValueError("strategy 'tuned' needs the searched learning rate")
        return float(tuned_lr)
    if s not in STRATEGIES:
        raise ValueError(f"unknown strategy {s!r}; use one of {', '.join(STRATEGIES)}")
    if schedule.base_lr <= 0 or schedule.base_batch_size <= 0:
        raise ValueError(f"strategy {s!r} needs base_lr > 0 and base_batch_size > 0")
    ratio = batch_size / schedule.base_batch_size
    if s == "blr":
        return schedule.base_lr
    if s == "lsr":
        return schedule.base_lr * ratio
    return schedule.base_lr * math.sqrt(ratio)


def warmup_steps(schedule: Schedule, steps_per_epoch: float) -> int:
    """Warm-up length in steps: ``warmup_steps`` if set, else ``warmup_epochs`` converted."""
    if schedule.warmup_steps > 0:
        return schedule.warmup_steps
    return int(round(schedule.warmup_epochs * steps_per_epoch))


def lr_at(step: int, peak: float, schedule: Schedule, steps_per_epoch: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Linear warm-up from peak/W to peak over the first W steps (Goyal et al. start near 0 and
    ramp up; starting at peak/W keeps the first step non-zero), then constant, divided by
    ``decay_factor`` at each epoch in ``decay_epochs``.
    """
    w = warmup_steps(schedule, steps_per_epoch)
    lr = peak * (step + 1) / w if w > 0 and step < w else peak
    if schedule.decay_epochs:
        epoch = step / steps_per_epoch if steps_per_epoch > 0 else 0.0
        n = sum(1 for e in schedule.decay_epochs if epoch >= e)
        lr /= schedule.decay_factor**n
    return lr
