"""The branching protocol: the critical batch size along training (Merrill et al. 2025, arXiv 2505.23971).

A base run at batch size ``base_batch_size`` (B0) and learning rate ``base_lr`` (lr0) is
checkpointed at ``branch_at`` (base steps). From each checkpoint, one branch per factor k in
``factors`` (1 included) trains ``window_steps / k`` steps at batch k * B0, so every branch of a
point sees the same ``window_steps * B0`` examples; its LR is lr0 * k (``linear``, the SGD rule)
or lr0 * sqrt(k) (``sqrt``, the Adam rule). A branch passes when its loss at the end of the
window is <= (1 + ``tolerance``) x the k = 1 branch's; a branch that diverged (or, where the
stability edge is known, whose LR is at or past it) fails.

The local critical batch size at a branch point is the largest passing k * B0, as the paper
defines it, whether or not every smaller factor passed too: callers report every branch's
pass or fail next to it, so a failing factor below the local CBS shows.

This module is the one definition of the protocol's parameters, their checks, the branch's
batch size, steps and LR, and the pass rule; the exact NQM answer
(:func:`trainables.nqm_truth.branched_losses`), the analysis (:mod:`analysis.branch`) and the
runs on Ray Tune all use it. It also defines the batch-size schedule that follows from it
(:func:`check_batch_size_schedule`, :func:`batch_size_at`) and the LR rule a schedule trains
with (:func:`scaled_lr`), which the supervised loop applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from trainables.api import InputError

LR_RULES = ("linear", "sqrt")


@dataclass(frozen=True)
class BranchPlan:
    """What to branch, from where, and how a branch is judged (units in each field's comment)."""

    base_batch_size: int  # B0, examples per step of the base run and the k = 1 branch
    base_lr: float  # lr0, the base run's (constant) learning rate
    branch_at: tuple[int, ...]  # base-run steps at which branches start, increasing, >= 0
    factors: tuple[int, ...]  # batch-size multipliers k, increasing, 1 included
    window_steps: int  # steps of the k = 1 branch; a branch takes window_steps / k steps
    tolerance: float = 0.01  # a branch passes at loss <= (1 + tolerance) x the k = 1 loss
    lr_rule: str = "linear"  # lr = lr0 * k (linear, SGD) or lr0 * sqrt(k) (sqrt, Adam)

    def check(self, name: Callable[[str], str] = str) -> BranchPlan:
        """Raise :class:`InputError` at the first bad field; ``name(field)`` is how the message
        names it (``--window-steps`` on the command line, ``branch.window_steps`` in a job)."""
        for field, ok, fix in self._problems():
            if not ok:
                value = getattr(self, field)
                shown = ",".join(map(str, value)) if isinstance(value, tuple) else repr(value)
                raise InputError(f"{name(field)} {shown}: {fix}")
        return self

    def _problems(self):
        ints = lambda xs: all(isinstance(x, int) and not isinstance(x, bool) for x in xs)  # noqa: E731
        f = self.factors
        yield ("base_batch_size", ints([self.base_batch_size]) and self.base_batch_size >= 1,
               "give a positive integer, e.g. 8")  # fmt: skip
        yield (
            "base_lr",
            _real(self.base_lr) and self.base_lr > 0,
            "give a learning rate > 0, e.g. 0.05",
        )
        yield ("tolerance", _real(self.tolerance) and self.tolerance >= 0,
               "give a relative tolerance >= 0, e.g. 0.01 (1% above the k = 1 branch's loss)")  # fmt: skip
        yield ("lr_rule", self.lr_rule in LR_RULES,
               "give linear (lr0 * k, for SGD) or sqrt (lr0 * sqrt(k), for Adam)")  # fmt: skip
        yield ("branch_at", len(self.branch_at) > 0 and ints(self.branch_at) and min(self.branch_at) >= 0
               and _increasing(self.branch_at),
               "give base-run steps >= 0 in increasing order without repeats, e.g. 0,100,1000")  # fmt: skip
        yield ("factors", len(f) > 0 and ints(f) and min(f) >= 1 and 1 in f and _increasing(f),
               "give positive integers in increasing order without repeats, 1 included "
               "(the reference branch), e.g. 1,2,4,8")  # fmt: skip
        yield ("window_steps", ints([self.window_steps]) and self.window_steps >= 1,
               "give a positive integer, e.g. 3200")  # fmt: skip
        lcm = math.lcm(*f)
        yield ("window_steps", self.window_steps % lcm == 0,
               f"must be divisible by every factor (a branch at k takes window_steps / k steps); "
               f"use a multiple of {lcm}, e.g. {lcm * max(1, round(self.window_steps / lcm))}")  # fmt: skip

    def batch_size(self, factor: int) -> int:
        return self.base_batch_size * factor

    def steps(self, factor: int) -> int:
        """Steps of the branch at ``factor``: the same examples as the k = 1 branch."""
        return self.window_steps // factor

    def lr(self, factor: int) -> float:
        return scaled_lr(self.base_lr, factor, self.lr_rule)


def scaled_lr(lr0: float, ratio: float, rule: str) -> float:
    """The LR at ``ratio`` x the base batch size: lr0 * ratio (``linear``) or lr0 * sqrt(ratio)
    (``sqrt``). The branches' rule, and a batch-size schedule's (:func:`batch_size_at`)."""
    if rule not in LR_RULES:
        raise ValueError(f"lr_rule {rule!r}: use linear or sqrt")
    return lr0 * (ratio if rule == "linear" else math.sqrt(ratio))


def check_batch_size_schedule(
    pairs, name: str = "batch_size_schedule"
) -> tuple[tuple[int, int], ...]:
    """A batch-size schedule, checked: ``(examples, batch_size)`` pairs, each batch size used
    once the examples seen reach its threshold; thresholds start at 0 and increase, every value
    a positive integer (thresholds >= 0). :func:`analysis.branch.batch_size_schedule` makes one
    from branch results. Raises :class:`InputError` naming ``name`` and the fix."""
    example = "e.g. [[0, 32], [20000, 64], [60000, 128]]"
    if isinstance(pairs, str | bytes) or not hasattr(pairs, "__len__") or len(pairs) == 0:
        raise InputError(f"{name}: {pairs!r}; give a non-empty list of [examples, batch_size] "
                         f"pairs, {example}")  # fmt: skip
    out = []
    for i, p in enumerate(pairs):
        ok = (not isinstance(p, str | bytes) and hasattr(p, "__len__") and len(p) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) for x in p))  # fmt: skip
        if not ok:
            raise InputError(f"{name}[{i}]: {p!r}; each entry is a pair of integers "
                             f"[examples, batch_size], {example}")  # fmt: skip
        e, b = int(p[0]), int(p[1])
        if b < 1:
            raise InputError(f"{name}[{i}]: batch size {b}; give a positive integer")
        if i == 0 and e != 0:
            raise InputError(f"{name}[0]: starts at {e} examples; the first pair starts at 0 "
                             f"(the batch size to begin with), {example}")  # fmt: skip
        if out and e <= out[-1][0]:
            raise InputError(f"{name}[{i}]: {e} examples after {out[-1][0]}; give the "
                             f"thresholds in increasing order without repeats, {example}")  # fmt: skip
        out.append((e, b))
    return tuple(out)


def batch_size_at(schedule: Sequence[tuple[int, int]], examples: int) -> int:
    """The batch size of a (checked) schedule once ``examples`` examples have been seen: that
    of the last pair whose threshold is <= ``examples``."""
    b = schedule[0][1]
    for e, size in schedule:
        if examples >= e:
            b = size
        else:
            break
    return b


def passes(loss: float, reference_loss: float, tolerance: float) -> bool:
    """A branch passes when its loss is finite and <= (1 + tolerance) x the k = 1 branch's."""
    return math.isfinite(loss) and loss <= (1.0 + tolerance) * reference_loss


def local_critical_batch_size(batch_sizes: Sequence[int], passed: Sequence[bool]) -> int | None:
    """The largest passing batch size (None when none passes, e.g. the k = 1 branch diverged)."""
    ok = [b for b, p in zip(batch_sizes, passed, strict=True) if p]
    return max(ok) if ok else None


def _real(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _increasing(xs: Sequence) -> bool:
    return all(a < b for a, b in zip(xs, xs[1:], strict=False))
