"""The vocabulary of the learning-rate search: a study's name, a proposal, a trial's outcome,
its objective, and what the search keeps per study (:class:`StudyState`).

Ray-free and Optuna-free: :mod:`tune_jobs.lr_search` runs the studies,
:mod:`tune_jobs.lr_policy` proposes their LRs, :mod:`tune_jobs.lr_state` saves and loads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Proposal:
    """One trial to run: study name, its batch size and seed, the LR, the Optuna trial number."""

    study: str
    batch_size: int
    seed: int
    lr: float
    number: int


@dataclass(frozen=True)
class Outcome:
    """What a finished trial tells its study.

    ``steps_to_target``: first step at which the target was met (None if never);
    ``best_metric``: best value of the target metric seen (None if never evaluated);
    ``steps_run``: steps actually taken (compute spent);
    ``censored_at``: set when the trial was stopped by the steps bound without reaching the
    target: all we know is that it needed more steps than this;
    ``curve``: (step, target metric) at its reports, when the caller kept them: the fastest
    reached trial's curve is what :meth:`LRSearch.behind` compares running trials with.
    """

    status: str
    steps_to_target: float | None
    best_metric: float | None
    steps_run: int
    censored_at: float | None = None
    curve: tuple[tuple[float, float], ...] | None = None


WAIT = "wait"  # ask() result: nothing to propose until running trials report
# objective() / max_steps: up to 1 a reached trial, above 1 and up to this a censored one
# (stopped on its way), above this one that missed (ran out of steps, or stopped by ASHA)
CENSORED_MAX = 1.5


def study_name(batch_size: int, seed: int) -> str:
    return f"bs{batch_size}-seed{seed}"


def parse_study_name(name: str) -> tuple[int, int]:
    """(batch size, seed) of a study name (:func:`study_name`)."""
    b, s = name.removeprefix("bs").split("-seed")
    return int(b), int(s)


def objective(outcome: Outcome, max_steps: int, target: float, direction: str) -> float:
    """Value to minimise. Reached: steps to target (<= max_steps). Not reached: above every
    reached value, ``max_steps * (2 + gap)``, gap >= 0 growing with the distance of the best
    metric from the target (log ratio for positive metrics); never evaluated: far behind."""
    if outcome.steps_to_target is not None:
        return float(outcome.steps_to_target)
    best = outcome.best_metric
    if outcome.censored_at is not None:
        # Stopped by the steps bound while still on its way: it needed more than
        # `censored_at` steps. Behind every reached trial, ahead of every plain miss, ordered
        # among its kind by how close its metric came.
        gap = abs(math.log(best / target)) if best and best > 0 and target > 0 else 20.0
        return max_steps * (1.0 + (CENSORED_MAX - 1.0) * min(gap, 20.0) / 20.0)
    if best is None or not math.isfinite(best):
        return max_steps * 1e3
    if best > 0 and target > 0:
        gap = abs(math.log(best / target))
    else:
        gap = abs(best - target) / (abs(target) + 1e-12)
    return max_steps * (2.0 + min(gap, 900.0))


@dataclass
class StudyState:
    """What the search knows of one study (one batch size and seed); the Optuna study itself
    is :attr:`LRSearch.studies`.

    ``best``, ``stop_bound``, ``diverged`` and ``converged`` are what the other studies see of
    this one (in pipeline mode as of a count of its results: ``history``, :meth:`snapshot`).
    """

    range: tuple[float, float]
    """LR range its trials are drawn from (widened when the best LR sits at an edge)."""
    asked: int = 0
    """Trials proposed."""
    told: int = 0
    """Trials reported (a result or a failure)."""
    best: tuple[float, float] | None = None
    """(objective, lr) of its best told trial."""
    stop_bound: float | None = None
    """Best steps-to-target so far (None: no trial reached the target)."""
    results: dict[float, float] = field(default_factory=dict)
    """{lr: objective} of its told trials, in the order they were told."""
    diverged: list[float] = field(default_factory=list)
    """LRs that diverged."""
    unknown: list[float] = field(default_factory=list)
    """LRs stopped early by a rule that does not show them worse (ASHA)."""
    curve: list[tuple[float, float]] | None = None
    """(step, best target metric so far, lower is better) of its fastest reached trial."""
    converged: bool = False
    """Its line search converged: no more trials."""
    history: list[tuple] = field(default_factory=list)
    """Pipeline: (best, stop_bound, diverged, converged) after each of its results."""
    basis: dict[int, float] = field(default_factory=dict)
    """Parallel: Optuna trial number -> distance (log batch size) to the nearest finished
    batch size when that running trial was proposed (:meth:`LRSearch.obsolete`)."""
    withdrawn: int = 0
    """Parallel: running trials withdrawn as obsolete (not counted in ``asked``)."""
    coarse: list[int] = field(default_factory=list)
    """Parallel: Optuna trial numbers of its coarse-pass trials (down from the top of the
    range while nothing predicts its best LR)."""
    free: int = 0
    """Parallel: coarse-pass trials that failed; the study may ask this many trials more
    than ``trials_per_batch_size``."""

    def snapshot(self) -> tuple:
        """What the other studies see of this one now (a ``history`` entry)."""
        return (self.best, self.stop_bound, tuple(self.diverged), self.converged)

    def bound(self) -> float:
        """Best steps-to-target so far, inf when no trial reached the target."""
        return math.inf if self.stop_bound is None else self.stop_bound
