"""The learning-rate search: one Optuna study per (batch size, seed), with ask/tell.

Ray-free on purpose: the Tune searcher (:mod:`tune_jobs.searcher`) wraps it, and the search
efficiency benchmark drives it in-process. Vocabulary of the tuning playbook: batch size is
the scientific hyperparameter, the learning rate the nuisance one, searched separately at
each batch size (one study each).

The objective of a trial is its steps to target; a trial that never reaches the target ranks
behind every trial that does, ordered by how close its best metric came (:func:`objective`).

This module runs the studies (:class:`LRSearch`: which study asks next, rounds, results);
the rest of the search lives in :mod:`tune_jobs.lr_study` (a proposal, an outcome, the state
kept per study), :mod:`tune_jobs.lr_policy` (the line search's proposals and stop rule) and
:mod:`tune_jobs.lr_state` (save and load).
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager

import optuna

from tune_jobs import lr_state
from tune_jobs.config import LINE_SEARCH, LR_ALGORITHMS
from tune_jobs.lr_policy import LinePolicy
from tune_jobs.lr_study import (
    WAIT,
    Outcome,
    Proposal,
    StudyState,
    objective,
    parse_study_name,
    study_name,
)

__all__ = [
    "LAG_FROM",
    "WAIT",
    "LRSearch",
    "Outcome",
    "Proposal",
    "StudyState",
    "objective",
    "parse_study_name",
    "study_name",
]

optuna.logging.set_verbosity(optuna.logging.WARNING)

LAG_FROM = 0.5  # behind() applies from this fraction of the fastest trial's steps on


class LRSearch(LinePolicy):
    """Studies for every (batch size, seed), proposing learning rates round-robin.

    ``algorithm``: ``line_search`` (a bracketing line search in log LR, first trials from the
    neighbouring batch sizes' best LR scaled by the linear and square-root rules; Optuna TPE,
    seeded per study, where it has nothing to propose), ``random`` (log-uniform), or ``grid``
    (a log grid of ``n_trials`` points). ``storage``: an Optuna storage URL
    (``sqlite:///.../optuna.db``) so studies survive a killed driver.

    ``converge_tol`` (``line_search`` only; None: off): a study stops before ``n_trials`` once
    its line search has converged: its best reached trial has a worse trial on each side and
    the steps still to gain inside that bracket, estimated from a parabola in log LR, are
    below this fraction (:meth:`converged`). ``lag``: the margin of :meth:`behind` (0: off).
    ``cascade`` (``line_search`` only): batch sizes one at a time from the largest down
    (:meth:`ask`). ``pipeline`` (``line_search`` only, not with ``cascade``; 0: off): every
    batch size in flight at once, each study ``pipeline`` trials behind the next larger one
    (:meth:`ask`). ``parallel`` (``line_search`` only, not with either): every study in flight
    at once, one trial each, first trials from a provisional fit across the finished batch
    sizes (low placeholders until one predicts it); a running first trial that the fit has
    since moved away from is :meth:`obsolete`, and the caller stops it and :meth:`withdraw`\ s
    it.

    Per study: its Optuna study in ``studies``, the rest in ``states``
    (:class:`~tune_jobs.lr_study.StudyState`), both in the same order (seed, batch size).
    """

    def __init__(
        self,
        batch_sizes: list[int],
        seeds: list[int],
        lr_min: float,
        lr_max: float,
        n_trials: int,
        seed: int = 0,
        algorithm: str = LINE_SEARCH,
        log: bool = True,
        storage: str | None = None,
        widen_on_edge: bool = True,
        synchronous: bool = True,
        cross_slack: float = 1.5,
        converge_tol: float | None = None,
        lag: float = 0.0,
        cascade: bool = False,
        pipeline: int = 0,
        parallel: bool = False,
    ):
        if algorithm not in LR_ALGORITHMS:
            raise ValueError(
                f"algorithm: unknown {algorithm!r}; use one of {', '.join(LR_ALGORITHMS)}"
            )
        self.batch_sizes = sorted(batch_sizes)
        self.seeds = list(seeds)
        self.lr_min, self.lr_max, self.log = lr_min, lr_max, log
        self.n_trials, self.algorithm, self.widen_on_edge = n_trials, algorithm, widen_on_edge
        self.synchronous = synchronous
        self.cross_slack = cross_slack
        self.converge_tol = converge_tol if algorithm == LINE_SEARCH else None
        self.lag = lag
        self.cascade = cascade and algorithm == LINE_SEARCH
        self.pipeline = pipeline if algorithm == LINE_SEARCH and not self.cascade else 0
        self.parallel = parallel and algorithm == LINE_SEARCH and not (cascade or pipeline)
        self.visible: dict[str, int] = {}  # pipeline: study -> its results in the current view
        self.sign = 1.0  # +1: lower target metric is better; set by tell()
        self.studies: dict[str, optuna.Study] = {}
        self.states: dict[str, StudyState] = {}
        self.reached_cut = math.inf
        # Synchronous rounds: results wait here until every study has reported the round,
        # then apply in a fixed order, so what a proposal or a stop rule sees never depends on
        # which trial of the round finished first (Tune suggests one trial at a time as slots
        # free up, so a round's later proposals would otherwise see its earlier results).
        self.pending: list[tuple] = []
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
                self.states[name] = StudyState(range=(lr_min, lr_max))
                idx += 1
                if algorithm == "grid":
                    for lr in self._grid(n_trials):
                        study.enqueue_trial({"lr": lr}, skip_if_exists=True)

    @property
    def paced(self) -> bool:
        """One trial in flight per study (cascade, pipeline or parallel): each result is applied
        as it comes, never held to the end of a round."""
        return bool(self.cascade or self.pipeline or self.parallel)

    # ---- read-only views by study name (what callers and tests read) --------------------------
    @property
    def asked(self) -> dict[str, int]:
        """Study -> trials proposed."""
        return {n: st.asked for n, st in self.states.items()}

    @property
    def done(self) -> set[str]:
        """Studies whose line search converged (no more trials)."""
        return {n for n, st in self.states.items() if st.converged}

    @property
    def stop_bound(self) -> dict[str, float]:
        """Study -> best steps-to-target so far (studies with a reached trial)."""
        return {n: st.stop_bound for n, st in self.states.items() if st.stop_bound is not None}

    @property
    def results(self) -> dict[str, dict[float, float]]:
        """Study -> {lr: objective} of its told trials (studies with one)."""
        return {n: st.results for n, st in self.states.items() if st.results}

    @property
    def history(self) -> dict[str, list[tuple]]:
        """Pipeline: study -> its (best, stop bound, diverged, converged) after each result."""
        return {n: st.history for n, st in self.states.items() if st.history}

    # ---- proposals ---------------------------------------------------------------------------
    def remaining(self) -> int:
        return sum(
            self.n_trials + st.free - st.asked for st in self.states.values() if not st.converged
        )

    def _may_start(self, name: str) -> bool:
        """Cascade: a study starts once the next larger batch size's study (same seed) has
        finished, so it starts from a converged neighbour. Pipeline: its k-th trial starts
        once that study has told k + ``pipeline`` trials or finished."""
        if self.parallel:
            return True
        b, s = parse_study_name(name)
        larger = [bb for bb in self.batch_sizes if bb > b]
        if not larger:
            return True
        nxt = study_name(min(larger), s)
        asked = self.states[name].asked
        if self.pipeline:
            return self.finished(nxt) or self.states[nxt].told >= asked + self.pipeline
        return asked > 0 or self.finished(nxt)

    def ask(self) -> Proposal | str | None:
        """Next trial to run, from the study with the fewest trials asked; ``None`` when every
        study has asked its trials or converged; :data:`WAIT` when (synchronous) the round is
        in flight, or (cascade) the studies that may run wait for their trials or neighbours.

        Cascade (``line_search``): studies run one batch size at a time per seed, from the
        largest (fewest steps, cheapest) down, each trial once the study's previous one has
        reported: a line search is sequential, and a smaller batch size starts from the best
        LR of converged larger ones, where the expensive small batch sizes need few trials.
        Deterministic whatever the completion order (a study sees only finished larger ones).
        """
        states = self.states
        open_ = [
            n for n, st in states.items() if st.asked < self.n_trials + st.free and not st.converged
        ]
        if not open_:
            return None
        if self.paced:
            open_ = [n for n in open_ if states[n].asked == states[n].told and self._may_start(n)]
            if not open_:
                return WAIT
        elif self.synchronous:
            # A converged study is out of the rounds: it must not hold the others back.
            r = min(st.told for st in states.values() if not st.converged)
            open_ = [n for n in open_ if states[n].asked == r]
            if not open_:
                return WAIT
        order = list(states)
        name = min(open_, key=lambda n: (states[n].asked, order.index(n)))
        return self.ask_study(name)

    def ask_study(self, name: str) -> Proposal:
        study, st = self.studies[name], self.states[name]
        b, s = parse_study_name(name)
        if self.algorithm == LINE_SEARCH:  # neighbours' best LR, then a line search (_next_lr)
            with self._view(name):
                lr_next = self._next_lr(name, b, s)
            if lr_next is not None:
                lo, hi = st.range
                st.range = (min(lo, lr_next), max(hi, lr_next))
                study.enqueue_trial({"lr": lr_next})
        lo, hi = st.range
        trial = study.ask()
        lr = trial.suggest_float("lr", lo, hi, log=self.log)
        st.asked += 1
        if self.parallel and self.coarse_pick and lr_next is not None:
            st.coarse.append(trial.number)  # a failure here does not count (_apply)
        if self.parallel:  # what the fit stood on when this trial was proposed (obsolete())
            trusted = self._fit_trusted(b, s)
            st.basis[trial.number] = self._fit_distance(b, s) if trusted else math.inf
        return Proposal(name, b, s, lr, trial.number)

    @contextmanager
    def _view(self, name: str):
        """Pipeline: while in this block, the other studies look as study ``name`` may see
        them whatever the completion order: the larger batch sizes of its seed as of their
        first k + ``pipeline`` results (k: results ``name`` has; they have at least that
        many, or finished with fewer), the smaller ones and other seeds as not started.
        Only what a study shows the others changes (best, stop bound, diverged LRs,
        converged: its ``history`` entries); the block must not write to the states.
        A no-op in the other modes."""
        if not self.pipeline:
            yield
            return
        b, s = parse_study_name(name)
        live = self.states
        view: dict[str, StudyState] = {}
        self.visible = {}
        for other, st in live.items():
            if other == name:
                view[other] = st
                continue
            seen: tuple = (None, None, (), False)  # not started, as far as `name` knows
            bb, ss = parse_study_name(other)
            if ss == s and bb > b and st.history:
                count = self.visible[other] = min(len(st.history), live[name].told + self.pipeline)
                if count:
                    seen = st.history[count - 1]
            best_, bound_, diverged_, done_ = seen
            view[other] = dataclasses.replace(
                st, best=best_, stop_bound=bound_, diverged=list(diverged_), converged=bool(done_)
            )
        self.states = view
        try:
            yield
        finally:
            self.states = live

    # ---- results -----------------------------------------------------------------------------
    def tell(
        self, proposal: Proposal, outcome: Outcome, max_steps: int, target: float, direction: str
    ) -> float:
        """Record a result (applied now, or at the end of its round when synchronous)."""
        value = objective(outcome, max_steps, target, direction)
        if self.paced or not self.synchronous:
            self._apply(proposal, outcome, max_steps, target, direction)
            return value
        self.pending.append((proposal, outcome, max_steps, target, direction))
        self._publish_if_round_done()
        return value

    def _publish_if_round_done(self) -> None:
        live = [n for n, st in self.states.items() if not st.converged]
        if not live:
            return
        r = min(self.states[n].told for n in live)
        reported = {n: st.told for n, st in self.states.items()}
        for item in self.pending:
            reported[item[0].study] += 1
        if any(reported[n] < min(r + 1, self.n_trials) for n in live):
            return
        order = {n: i for i, n in enumerate(self.studies)}
        pending, self.pending = self.pending, []
        for item in sorted(pending, key=lambda it: (order[it[0].study], it[0].number)):
            if item[1] is None:
                self._apply_fail(item[0])
            else:
                self._apply(*item)

    def _apply(
        self, proposal: Proposal, outcome: Outcome, max_steps: int, target: float, direction: str
    ) -> None:
        value = objective(outcome, max_steps, target, direction)
        self.reached_cut = float(max_steps)  # objectives <= max_steps are steps of reached trials
        self.sign = 1.0 if direction == "min" else -1.0
        st = self.states[proposal.study]
        st.basis.pop(proposal.number, None)
        if outcome.status == "diverged":
            st.diverged.append(proposal.lr)
        stopped = outcome.steps_to_target is None and outcome.status == "stopped_early"
        if stopped and outcome.censored_at is None:  # ASHA: behind early, as a lower LR may be
            st.unknown.append(proposal.lr)
        st.results[proposal.lr] = value
        self.studies[proposal.study].tell(proposal.number, value)
        st.told += 1
        if value > self.reached_cut and proposal.number in st.coarse:
            st.free += 1  # a failed coarse-pass trial: the study may ask one more
        if st.best is None or value < st.best[0]:
            st.best = (value, proposal.lr)
        if outcome.steps_to_target is not None:
            fastest = outcome.steps_to_target < st.bound()
            if fastest and outcome.curve:
                run, kept = math.inf, []
                for step, v in sorted(outcome.curve):
                    run = min(run, self.sign * v)  # best so far, lower is better
                    kept.append((float(step), run))
                st.curve = kept
            st.stop_bound = min(st.bound(), float(outcome.steps_to_target))
        if self.widen_on_edge and self.algorithm == LINE_SEARCH:
            self._maybe_widen(proposal.study)
        with self._view(proposal.study):
            converged = self.converged(proposal.study)
        if converged:
            st.converged = True
        self._record(proposal.study)

    def _record(self, name: str) -> None:
        """Pipeline: keep the study's state after this result (:meth:`_view`)."""
        if self.pipeline:
            st = self.states[name]
            st.history.append(st.snapshot())

    def behind(self, name: str, step: float, best_value: float) -> bool:
        """Has a running trial of this study fallen behind its fastest reached trial by more
        than ``lag``: at ``step`` its best target metric so far is worse than that trial's
        best at ``(1 - lag) * step``? Only from half the fastest trial's steps on: a lower LR
        starts slower and catches up late (lower noise floor), and lags of 10% or so are
        normal among near-optimal LRs. ``False`` when off (lag 0) or nothing to compare."""
        st = self.states[name]
        ref, bound = st.curve, st.stop_bound
        if self.lag <= 0 or not ref or bound is None or step < LAG_FROM * bound:
            return False
        u, ref_value = (1 - self.lag) * step, None
        for stp, v in ref:  # ref's best so far at its last report at or before u (lenient)
            if stp > u:
                break
            ref_value = v
        return ref_value is not None and self.sign * best_value > ref_value

    def fail(self, proposal: Proposal) -> None:
        """A trial that errored (not diverged: divergence is a result) leaves its study."""
        if self.paced or not self.synchronous:
            self._apply_fail(proposal)
            return
        self.pending.append((proposal, None, 0, 0.0, ""))
        self._publish_if_round_done()

    def _apply_fail(self, proposal: Proposal) -> None:
        self.studies[proposal.study].tell(proposal.number, state=optuna.trial.TrialState.FAIL)
        self.states[proposal.study].told += 1
        self.states[proposal.study].basis.pop(proposal.number, None)
        self._record(proposal.study)

    def withdraw(self, proposal: Proposal) -> None:
        """Take back a running trial that :meth:`obsolete` flagged (the caller has stopped
        it): no result, not counted against ``n_trials`` (its steps still cost compute; the
        study's ``withdrawn`` counts it), and the study may ask again at once."""
        self.studies[proposal.study].tell(proposal.number, state=optuna.trial.TrialState.FAIL)
        st = self.states[proposal.study]
        st.asked -= 1
        st.withdrawn += 1
        st.basis.pop(proposal.number, None)

    def steps_bound(self, name: str) -> float:
        """Best steps-to-target of a study so far, or the bound from the other batch sizes if
        lower (inf if none): a trial of that study still running past this step can no longer
        win (or is far from this batch size's best LR) and may be stopped."""
        b, s = parse_study_name(name)
        with self._view(name):
            return min(self.states[name].bound(), self._cross_bound(b, s))

    def best_lr(self, name: str) -> float | None:
        best = self.states[name].best
        return None if best is None else best[1]

    # ---- resume ------------------------------------------------------------------------------
    def state(self) -> dict:
        """Plain data for the searcher's checkpoint (:func:`tune_jobs.lr_state.dump`)."""
        return lr_state.dump(self)

    def load_state(self, state: dict, live_numbers: dict[str, set[int]]) -> None:
        """Restore counters; Optuna trials left RUNNING by a killed driver that Tune does not
        know (``live_numbers``) are marked failed so they neither count nor block TPE."""
        lr_state.restore(self, state)
        for name, study in self.studies.items():
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if t.number not in live_numbers.get(name, set()):
                    study.tell(t.number, state=optuna.trial.TrialState.FAIL)
