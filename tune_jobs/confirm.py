"""Confirmation runs: selection (the LR search) kept apart from estimation (steps to target).

The LR search picks, per study (batch size, seed), the LR whose trial reached the target in
the fewest steps. That fastest trial is a biased estimate of the steps the LR needs: among
several noisy trials the minimum is low (the winner's curse), and a single noisy curve first
dips below the target early (first passage). So once a study's search has finished, its
chosen LR is trained again with ``lr_search.confirm_seeds`` fresh training seeds, and so is
the LR 1.5x below it (:data:`tune_jobs.config.CONFIRM_LR_FACTORS`: noisy selection errs
towards too large an LR, whose expected loss may never reach the target); analysis estimates
the steps to target from these runs alone (the crossing of each LR's mean curve, the faster
LR's, :mod:`analysis.estimate`), and resamples them for the interval. Both LRs train the same
seeds (common random numbers: their difference is less noisy than the seeds').

Confirmation runs are never early-stopped, and do not stop at the target either: every run of
a study trains to the same horizon, ``HORIZON`` times the search's best steps S (or the step
budget). A run stopped at its own crossing would freeze the mean curve at a value chosen for
being below the target (at an LR whose expected loss never gets there, every run still dips
below it once, stops, and the mean follows). They evaluate densely: every
``S / EVALS_TO_TARGET`` steps, so the crossing is resolved to about 2% of the steps whatever
the batch size.

Ray-free, like :mod:`tune_jobs.lr_search`: the Tune searcher asks it first, and the noisy-truth
benchmark drives it in-process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tune_jobs.config import CONFIRM_LR_FACTORS
from tune_jobs.lr_search import LRSearch, Proposal
from tune_jobs.lr_study import parse_study_name as _parse

CONFIRM_SEED_BASE = 1_000_000  # confirmation seeds: base + 1000 * search seed + k
EVALS_TO_TARGET = 50  # eval points before the expected crossing: resolution ~2% of S(B)
HORIZON = 1.5  # confirmation runs train to this multiple of the search's best steps
PHASE = "confirm"  # the `phase` a confirmation run carries (params; the frame's column)


def confirm_seed(search_seed: int, k: int) -> int:
    """Training seed of the k-th confirmation run of a study: never a search seed."""
    return CONFIRM_SEED_BASE + 1000 * search_seed + k


def confirm_eval_every(best_steps: float, eval_every: int) -> int:
    """Eval interval (steps) of a study's confirmation runs: about 2% of its search's best
    steps to target, never coarser than the job's ``eval_every``."""
    return max(1, min(eval_every, int(best_steps // EVALS_TO_TARGET)))


@dataclass
class Confirmation:
    """Which confirmation runs to start, per study, once its LR search has finished.

    Run j of a study trains LR ``best_lr * lr_factors[j // n_seeds]`` with confirmation seed
    ``j % n_seeds``. A study whose search never reached the target gets none (its batch size
    has no estimate).
    """

    n_seeds: int
    eval_every: int
    lr_factors: tuple[float, ...] = CONFIRM_LR_FACTORS
    asked: dict[str, int] = field(default_factory=dict)

    @property
    def per_study(self) -> int:
        return max(self.n_seeds, 0) * len(self.lr_factors)

    def ask(self, search: LRSearch) -> Proposal | None:
        """The next confirmation run of a finished study, or None (none due now)."""
        if self.n_seeds <= 0:
            return None
        for name in search.studies:
            j = self.asked.get(name, 0)
            if j >= self.per_study or not self._due(search, name):
                continue
            self.asked[name] = j + 1
            b, s = _parse(name)
            lr = float(search.best_lr(name)) * self.lr_factors[j // self.n_seeds]
            return Proposal(name, b, confirm_seed(s, j % self.n_seeds), lr, j)
        return None

    def pending(self, search: LRSearch) -> bool:
        """Could a confirmation run still become due (a study still searching, or due)?"""
        if self.n_seeds <= 0:
            return False
        return any(
            not search.finished(n)
            or (self._due(search, n) and self.asked.get(n, 0) < self.per_study)
            for n in search.studies
        )

    def eval_every_for(self, search: LRSearch, name: str) -> int:
        return confirm_eval_every(search.stop_bound[name], self.eval_every)

    def trial_fields(self, search: LRSearch, name: str, max_steps: int) -> dict:
        """What a confirmation run's trial config sets beyond a search trial's: its phase,
        eval interval, and horizon (``max_steps``, trained to even past the target)."""
        horizon = min(max_steps, math.ceil(HORIZON * search.stop_bound[name]))
        return {"phase": PHASE, "eval_every": self.eval_every_for(search, name),
                "max_steps": horizon, "run_to_max_steps": True}  # fmt: skip

    @staticmethod
    def _due(search: LRSearch, name: str) -> bool:
        return (
            search.finished(name)
            and name in search.stop_bound  # its search reached the target
            and search.best_lr(name) is not None
        )

    def state(self) -> dict:
        return {"asked": dict(self.asked)}

    def load_state(self, state: dict) -> None:
        self.asked.update(state.get("asked", {}))
