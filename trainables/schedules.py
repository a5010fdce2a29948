"""Learning-rate strategies and schedules as pure functions of the step (docs/science.md §1).

``peak_lr`` turns a strategy into the learning rate used at batch size B; ``lr_at`` gives the
rate at a step: linear warm-up, then constant, step decay, cosine decay or warmup-stable-decay
(WSD). All are pure: no optimizer, no state, so they are tested alone and plotted as they are.

The horizon of a decaying schedule (cosine, WSD) is where it ends: ``Schedule.horizon_steps``,
or the trial's step budget when that is 0. Steps-to-target under a decaying schedule therefore
depends on the budget (Zhang et al. 2024, "How does critical batch size scale in
pre-training?", arXiv 2410.21676): a cosine trial given more steps decays later and reaches a
target later. WSD holds the peak until the last ``wsd_decay_fraction`` of the horizon, so a
trial that reaches its target in the stable phase has a steps-to-target that does not depend
on the horizon (docs/workloads.md, "Schedules and the horizon").
"""

from __future__ import annotations

import math

from trainables.api import Schedule

STRATEGIES = ("tuned", "blr", "lsr", "srsr")
DECAYS = ("constant", "step", "cosine", "wsd")


def peak_lr(schedule: Schedule, batch_size: int, tuned_lr: float | None = None) -> float:
    """Peak learning rate at ``batch_size`` under ``schedule``.

    tuned: ``tuned_lr`` (the value the search proposes); blr: base_lr; lsr: base_lr * B/B0
    (Goyal et al.; for SGD); srsr: base_lr * sqrt(B/B0) (the square-root rule, Adam's
    counterpart of LSR: Malladi et al. 2022, "On the SDEs and scaling rules for adaptive
    gradient algorithms").
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


def horizon(schedule: Schedule, budget_steps: int) -> int:
    """Steps over which a cosine or WSD schedule runs: ``horizon_steps``, else the budget."""
    return schedule.horizon_steps if schedule.horizon_steps > 0 else max(1, budget_steps)


def lr_at(
    step: int, peak: float, schedule: Schedule, steps_per_epoch: float, budget_steps: int = 0
) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of a trial with ``budget_steps``.

    Linear warm-up from peak/W to peak over the first W steps (Goyal et al. start near 0 and
    ramp up; starting at peak/W keeps the first step non-zero). Then, by ``schedule.decay``:
    constant; divided by ``decay_factor`` at each epoch in ``decay_epochs`` (step decay, also
    applied under ``constant`` when decay_epochs is given); cosine from peak at step W to
    ``final_lr_fraction`` * peak at the horizon H; WSD: peak until H - D (D =
    ``wsd_decay_fraction`` * H), then linear to ``final_lr_fraction`` * peak at H.
    """
    w = warmup_steps(schedule, steps_per_epoch)
    if w > 0 and step < w:
        return peak * (step + 1) / w
    lr = peak
    if schedule.decay_epochs:
        epoch = step / steps_per_epoch if steps_per_epoch > 0 else 0.0
        n = sum(1 for e in schedule.decay_epochs if epoch >= e)
        lr /= schedule.decay_factor**n
    floor = schedule.final_lr_fraction
    if schedule.decay == "cosine":
        h = horizon(schedule, budget_steps)
        progress = min(1.0, max(0.0, (step - w) / max(1, h - w)))
        lr = peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    elif schedule.decay == "wsd":
        h = horizon(schedule, budget_steps)
        d = max(1, int(round(schedule.wsd_decay_fraction * h)))
        start = max(w, h - d)
        if step >= start:
            progress = min(1.0, (step - start) / max(1, h - start))
            lr = peak * (1.0 - (1.0 - floor) * progress)
    return lr
