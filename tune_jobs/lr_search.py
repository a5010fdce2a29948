"""The learning-rate search: one Optuna study per (batch size, seed), with ask/tell.

Ray-free on purpose: the Tune searcher (:mod:`tune_jobs.searcher`) wraps it, and the search
efficiency benchmark drives it in-process. Vocabulary of the tuning playbook: batch size is
the scientific hyperparameter, the learning rate the nuisance one, searched separately at
each batch size (one study each).

The objective of a trial is its steps to target; a trial that never reaches the target ranks
behind every trial that does, ordered by how close its best metric came (:func:`objective`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)


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
    target: all we know is that it needed more steps than this.
    """

    status: str
    steps_to_target: float | None
    best_metric: float | None
    steps_run: int
    censored_at: float | None = None


WAIT = "wait"  # ask() result: nothing to propose until running trials report


def study_name(batch_size: int, seed: int) -> str:
    return f"bs{batch_size}-seed{seed}"


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
        return max_steps * (1.0 + 0.5 * min(gap, 20.0) / 20.0)
    if best is None or not math.isfinite(best):
        return max_steps * 1e3
    if best > 0 and target > 0:
        gap = abs(math.log(best / target))
    else:
        gap = abs(best - target) / (abs(target) + 1e-12)
    return max_steps * (2.0 + min(gap, 900.0))


class LRSearch:
    """Studies for every (batch size, seed), proposing learning rates round-robin.

    ``algorithm``: ``tpe`` (Optuna TPE seeded per study, first trials enqueued from the
    neighbouring batch sizes' best LR scaled by the linear and square-root rules), ``random``
    (log-uniform), or ``grid`` (a log grid of ``n_trials`` points). ``storage``: an Optuna
    storage URL (``sqlite:///.../optuna.db``) so studies survive a killed driver.
    """

    def __init__(
        self,
        batch_sizes: list[int],
        seeds: list[int],
        lr_min: float,
        lr_max: float,
        n_trials: int,
        seed: int = 0,
        algorithm: str = "tpe",
        log: bool = True,
        storage: str | None = None,
        widen_on_edge: bool = True,
        synchronous: bool = True,
        cross_slack: float = 1.5,
    ):
        self.batch_sizes = sorted(batch_sizes)
        self.seeds = list(seeds)
        self.lr_min, self.lr_max, self.log = lr_min, lr_max, log
        self.n_trials, self.algorithm, self.widen_on_edge = n_trials, algorithm, widen_on_edge
        self.range: dict[str, tuple[float, float]] = {}
        self.asked: dict[str, int] = {}
        self.told: dict[str, int] = {}
        self.synchronous = synchronous
        self.cross_slack = cross_slack
        self.studies: dict[str, optuna.Study] = {}
        self.best: dict[
            str, tuple[float, float]
        ] = {}  # study -> (objective, lr) of best told trial
        self.stop_bound: dict[str, float] = {}  # study -> best steps-to-target so far
        self.results: dict[str, dict[float, float]] = {}  # study -> {lr: objective} told
        self.reached_cut = math.inf
        self.diverged: dict[str, list[float]] = {}  # study -> LRs that diverged
        idx = 0
        for s in self.seeds:
            for b in self.batch_sizes:
                name = study_name(b, s)
                sampler: optuna.samplers.BaseSampler
                if algorithm == "random" or algorithm == "grid":
                    sampler = optuna.samplers.RandomSampler(seed=seed + idx)
                else:
                    sampler = optuna.samplers.TPESampler(
                        seed=seed + idx,
                        n_startup_trials=max(2, min(4, n_trials // 3)),
                        multivariate=False,
                    )
                study = optuna.create_study(
                    study_name=name,
                    storage=storage,
                    sampler=sampler,
                    direction="minimize",
                    load_if_exists=True,
                )
                self.studies[name] = study
                self.range[name] = (lr_min, lr_max)
                self.asked[name] = 0
                self.told[name] = 0
                idx += 1
                if algorithm == "grid":
                    for lr in self._grid(n_trials):
                        study.enqueue_trial({"lr": lr}, skip_if_exists=True)

    # ---- proposals ---------------------------------------------------------------------------
    def _grid(self, n: int) -> list[float]:
        if n == 1:
            return [
                math.sqrt(self.lr_min * self.lr_max)
                if self.log
                else (self.lr_min + self.lr_max) / 2
            ]
        if self.log:
            lo, hi = math.log(self.lr_min), math.log(self.lr_max)
            pts = [math.exp(lo + (hi - lo) * i / (n - 1)) for i in range(n)]
            return [min(max(p, self.lr_min), self.lr_max) for p in pts]  # no ulp past the edges
        return [self.lr_min + (self.lr_max - self.lr_min) * i / (n - 1) for i in range(n)]

    def remaining(self) -> int:
        return sum(self.n_trials - a for a in self.asked.values())

    def ask(self) -> Proposal | str | None:
        """Next trial to run, from the study with the fewest trials asked; ``None`` when every
        study has asked its trials; :data:`WAIT` when (synchronous) the round is in flight."""
        open_ = [n for n in self.studies if self.asked[n] < self.n_trials]
        if not open_:
            return None
        if self.synchronous:
            r = min(self.told.values())
            open_ = [n for n in open_ if self.asked[n] == r]
            if not open_:
                return WAIT
        name = min(open_, key=lambda n: (self.asked[n], list(self.studies).index(n)))
        return self.ask_study(name)

    def ask_study(self, name: str) -> Proposal:
        study = self.studies[name]
        b, s = _parse(name)
        if self.algorithm == "tpe":  # neighbours' best LR, then a line search (_next_lr)
            lr_next = self._next_lr(name, b, s)
            if lr_next is not None:
                lo, hi = self.range[name]
                self.range[name] = (min(lo, lr_next), max(hi, lr_next))
                study.enqueue_trial({"lr": lr_next})
        lo, hi = self.range[name]
        trial = study.ask()
        lr = trial.suggest_float("lr", lo, hi, log=self.log)
        self.asked[name] += 1
        return Proposal(name, b, s, lr, trial.number)

    def _enqueue_from_neighbours(self, name: str, b: int, s: int) -> None:
        """Start a study at LRs its neighbours suggest (linear and square-root scaling)."""
        done = [
            (bb, self.best[study_name(bb, s)][1])
            for bb in self.batch_sizes
            if study_name(bb, s) in self.best
        ]
        if not done:
            return
        nb, lr_nb = min(done, key=lambda x: abs(math.log(x[0] / b)))
        lo, hi = self.range[name]
        for lr in {lr_nb * b / nb, lr_nb * math.sqrt(b / nb)}:
            self.studies[name].enqueue_trial({"lr": min(max(lr, lo), hi)}, skip_if_exists=True)

    def _next_lr(self, name: str, b: int, s: int) -> float | None:
        """A line search in log LR on this study's own results, else its neighbours' best LR.

        Steps-to-target is unimodal in log LR (too small: slow; too large: noise floor or
        divergence), and the best LR moves smoothly with the batch size. So: with no reached
        trial yet, try the nearest studied batch size's best LR scaled by the linear, then
        the square-root rule; once the best reached trial has a worse trial on each side,
        take the vertex of the parabola through it and its neighbours (log steps against log
        LR; golden section when a neighbour did not reach); if it is the largest or smallest
        LR tried, step out by 2x. ``None``: nothing to suggest (TPE proposes).
        """
        pts = sorted((math.log(lr), v) for lr, v in self.results.get(name, {}).items())
        tried = [x for x, _ in pts]

        def fresh(x: float) -> bool:
            return all(abs(x - t) > 0.01 for t in tried)

        # A reached trial slower than what smaller batch sizes show is achievable here (the
        # slack-scaled cross bound) is no anchor for a line search: start from the neighbours.
        cut = min(self.reached_cut, self._cross_bound(b, s))
        reached = [(x, v) for x, v in pts if v <= cut]
        if not reached:
            done = [(bb, self.best_lr(study_name(bb, s))) for bb in self.batch_sizes if bb != b]
            done = [
                (bb, lr)
                for bb, lr in done
                if lr is not None and self.best[study_name(bb, s)][0] <= self.reached_cut
            ]
            if not done:
                return None
            nb, lr_nb = min(done, key=lambda x: abs(math.log(x[0] / b)))
            # Never propose at or above an LR that diverged here or at a smaller batch size
            # (the stability edge barely moves with B): take the neighbour's own best LR
            # instead, which reaches the target at this larger batch size no later than there.
            bad = [
                lr
                for bb in self.batch_sizes
                if bb <= b
                for lr in self.diverged.get(study_name(bb, s), ())
            ]
            cap = min(bad, default=math.inf)
            for lr in (lr_nb * b / nb, lr_nb * math.sqrt(b / nb), lr_nb):
                if lr >= cap:
                    lr = lr_nb if lr_nb < cap else cap / 2
                if fresh(math.log(lr)):
                    return lr
            return None
        i = min(range(len(pts)), key=lambda j: pts[j][1])
        xb, fb = pts[i][0], math.log(pts[i][1])
        if i == len(pts) - 1:
            return math.exp(xb + math.log(2))
        if i == 0:
            return math.exp(xb - math.log(2))
        (xl, vl), (xr, vr) = pts[i - 1], pts[i + 1]
        x_new = None
        if vl <= self.reached_cut and vr <= self.reached_cut:
            fl, fr = math.log(vl), math.log(vr)
            den = (xb - xl) * (fb - fr) - (xb - xr) * (fb - fl)
            if den != 0:
                x_new = xb - 0.5 * ((xb - xl) ** 2 * (fb - fr) - (xb - xr) ** 2 * (fb - fl)) / den
        if x_new is None or not (xl < x_new < xr) or not fresh(x_new):
            far = xl if xb - xl > xr - xb else xr
            x_new = xb + 0.382 * (far - xb)
        return math.exp(x_new) if fresh(x_new) else None

    # ---- results -----------------------------------------------------------------------------
    def tell(
        self, proposal: Proposal, outcome: Outcome, max_steps: int, target: float, direction: str
    ) -> float:
        value = objective(outcome, max_steps, target, direction)
        self.reached_cut = float(max_steps)  # objectives <= max_steps are steps of reached trials
        if outcome.status == "diverged":
            self.diverged.setdefault(proposal.study, []).append(proposal.lr)
        self.results.setdefault(proposal.study, {})[proposal.lr] = value
        study = self.studies[proposal.study]
        study.tell(proposal.number, value)
        self.told[proposal.study] += 1
        best = self.best.get(proposal.study)
        if best is None or value < best[0]:
            self.best[proposal.study] = (value, proposal.lr)
        if outcome.steps_to_target is not None:
            self.stop_bound[proposal.study] = min(
                self.stop_bound.get(proposal.study, math.inf), float(outcome.steps_to_target)
            )
        if self.widen_on_edge and self.algorithm == "tpe":
            self._maybe_widen(proposal.study)
        return value

    def fail(self, proposal: Proposal) -> None:
        """A trial that errored (not diverged: divergence is a result) leaves its study."""
        self.studies[proposal.study].tell(proposal.number, state=optuna.trial.TrialState.FAIL)
        self.told[proposal.study] += 1

    def _maybe_widen(self, name: str) -> None:
        lo, hi = self.range[name]
        _, lr = self.best[name]
        edge = 0.1 * math.log(hi / lo)  # within 10% (log) of an edge
        if math.log(hi / lr) < edge:
            self.range[name] = (lo, hi * 4)
        elif math.log(lr / lo) < edge:
            self.range[name] = (lo / 4, hi)

    def _cross_bound(self, b: int, s: int) -> float:
        smaller = [
            self.stop_bound.get(study_name(bb, s), math.inf) for bb in self.batch_sizes if bb < b
        ]
        return self.cross_slack * min(smaller, default=math.inf)

    def steps_bound(self, name: str) -> float:
        """Best steps-to-target of a study so far (inf if none): a trial of that study still
        running past this step can no longer win and may be stopped."""
        b, s = _parse(name)
        smaller = [
            self.stop_bound.get(study_name(bb, s), math.inf) for bb in self.batch_sizes if bb < b
        ]
        # A larger batch at the same LR has less gradient noise, so in expectation it needs no
        # more steps: the best steps of a smaller batch size bound this study's too. Measured
        # steps are noisy (a lucky small-batch trial, a quantised accuracy target), so the bound
        # from other batch sizes gets slack; 1.0 suits exact problems (the NQM benchmark).
        return min([self.stop_bound.get(name, math.inf), *(self.cross_slack * x for x in smaller)])

    def best_lr(self, name: str) -> float | None:
        return self.best.get(name, (None, None))[1]

    # ---- resume ------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "asked": dict(self.asked),
            "told": dict(self.told),
            "range": dict(self.range),
            "best": dict(self.best),
            "stop_bound": dict(self.stop_bound),
        }

    def load_state(self, state: dict, live_numbers: dict[str, set[int]]) -> None:
        """Restore counters; Optuna trials left RUNNING by a killed driver that Tune does not
        know (``live_numbers``) are marked failed so they neither count nor block TPE."""
        self.asked.update(state["asked"])
        self.told.update(state.get("told", {}))
        self.range.update({k: tuple(v) for k, v in state["range"].items()})
        self.best.update({k: tuple(v) for k, v in state["best"].items()})
        self.stop_bound.update(state["stop_bound"])
        for name, study in self.studies.items():
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if t.number not in live_numbers.get(name, set()):
                    study.tell(t.number, state=optuna.trial.TrialState.FAIL)


def _parse(name: str) -> tuple[int, int]:
    b, s = name.removeprefix("bs").split("-seed")
    return int(b), int(s)
