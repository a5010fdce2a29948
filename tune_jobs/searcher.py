"""Ray Tune edge of the search: a Searcher that keeps one Optuna study per batch size (its
scheduler, which early-stops a trial only against trials of its own batch size, is
:mod:`tune_jobs.scheduler`).

Decision (recorded in the sweep note): one Tuner for the whole sweep, whose searcher keeps a
study per (batch size, seed). All batch sizes then share one Ray cluster and one trial queue
(no idle slots while a slow batch size finishes), one run folder, one resume; Ray's own
OptunaSearch would refuse the batch-size grid.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from analysis.packets import points_of
from trainables.api import Status, final_status
from tune_jobs.config import JobConfig
from tune_jobs.confirm import PHASE, Confirmation
from tune_jobs.journal import ASK, EVENT, WITHDRAW, append_record
from tune_jobs.lr_search import WAIT, LRSearch, Outcome, Proposal, objective
from tune_jobs.replay import replay
from tune_jobs.vclock import VirtualClock


def trial_outcome(
    last: dict[str, Any], best_metric: float | None, censored_at: float | None = None
) -> Outcome:
    status = final_status(last.get("status"))
    reached = last.get("steps_to_target")
    return Outcome(
        status,
        reached,
        best_metric,
        int(last.get("step", 0)),
        None if reached is not None else censored_at,
    )


class SweepSearcher(Searcher):
    """Proposes (batch size, seed, lr) trials from :class:`LRSearch` and tells it results.

    Strategies other than ``tuned`` have no LR to search: one trial per (batch size, seed)
    with the LR the strategy computes.
    """

    def __init__(
        self,
        job: JobConfig,
        storage: str | None,
        train_sizes: dict[int, int],
        journal: Path | None = None,
        slots: int = 0,
    ):
        # No metric declared to Tune: a diverged trial's report legitimately lacks eval
        # metrics, and the searcher reads the target metric itself.
        super().__init__(metric=None, mode=None)
        self.job = job
        self.train_sizes = train_sizes
        r = job.lr_search
        self.search = LRSearch(
            job.batch_sizes, job.seeds, r.min, r.max, job.trials_per_study, r.seed,
            r.algorithm if job.tuned else "grid", r.log, storage, r.widen_on_edge,
            converge_tol=r.convergence_tolerance if r.stop_when_converged else None,
            lag=r.lag_stop, cascade=r.cascade, pipeline=r.pipeline, parallel=r.parallel,
        )  # fmt: skip
        self.proposals: dict[str, Proposal] = {}
        self.confirm = Confirmation(r.confirm_seeds, job.eval_every, job.confirm_lr_factors)
        self.confirming: dict[str, Proposal] = {}  # trial id -> its confirmation run
        self.best_metric: dict[str, float] = {}
        self.censored: dict[str, float] = {}  # trial id -> steps bound it was stopped at
        # trial id -> the report the scheduler stopped it at: what the trial sent after it
        # (the rest of its packet) is not part of the result, as if each report came alone
        self.stopped_at: dict[str, dict[str, Any]] = {}
        self.curves: dict[str, list[tuple[float, float]]] = {}  # trial id -> (step, metric)
        # No storage: the studies live in memory and travel in this searcher's snapshot
        # (save/restore), taken by Tune together with its own trial states, so a resumed
        # sweep sees studies and trials as of the same moment. An SQLite study file cost
        # ~0.15 s per trial on 2 cores and 4 s to open; it is still read for sweeps that
        # have one (started by an older critbatch).
        self.in_memory = storage is None
        # The journal of finished trials (tune_jobs/journal.py): appended before the search
        # hears a result. None: not kept (a sweep started by an older critbatch).
        self.journal = journal
        self.records: dict[str, dict[str, Any]] = {}  # trial id -> its record, until MLflow has it
        self.asha_fed: dict[str, list[tuple[float, float]]] = {}  # trial id -> (step, value) fed
        self.requeue: list[Proposal] = []  # asked before a resume, never finished: run again
        self.confirm_requeue: list[Proposal] = []  # the same for confirmation runs
        self.exhausted = False  # replay found every trial finished: nothing left to run
        self.withdrawn: set[str] = set()  # parallel search: trials taken back while running
        self.used_ids: set[str] = set()  # every trial id given out in this sweep (suggest)
        # The parallel search runs on a virtual clock (tune_jobs/vclock.py): it asks, and
        # ends trials, as the scheduler hands it their reports in virtual-time order; what it
        # asked waits in `requeue` for Tune's next suggest. None in the other modes.
        self.clock = VirtualClock(slots) if self.search.parallel else None
        self.clock_started = False  # the first asks made (at virtual time 0, or by a replay)
        self.settled: dict[str, float] = {}  # clock: trial id -> step its result is known to

    # ---- Tune API ------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        # Tune draws a trial id as 8 random hex digits (Trial.generate_id): two trials of a
        # 10,000-trial sweep share one with probability ~1.2% (it happened in the 10,000-trial
        # benchmark: two trials' points went to one MLflow run). Everything here is keyed by
        # trial id, so an id already given out in this sweep is refused; Tune draws another at
        # its next step.
        if trial_id in self.used_ids:
            return None
        config = self._suggest(trial_id)
        if isinstance(config, dict):
            self.used_ids.add(trial_id)
        return config

    def _suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        extra: dict[str, Any] = {}
        # On the clock the search's own trials come first: one started on the clock and still
        # queued in reality holds the clock until it runs.
        p = self._next_on_clock()
        if p is None:
            # a finished study's confirmation runs (those a resume owes before new ones)
            p = (
                self.confirm_requeue.pop(0)
                if self.confirm_requeue
                else self.confirm.ask(self.search)
            )
            if p is not None:
                self.confirming[trial_id] = p
                budget = self.job.max_steps_for(p.batch_size, self.train_sizes.get(p.batch_size))
                extra = self.confirm.trial_fields(self.search, p.study, budget)
                if not self.job.tuned:
                    from trainables.schedules import peak_lr

                    p = Proposal(p.study, p.batch_size, p.seed,
                                 peak_lr(self.job.schedule(), p.batch_size), p.number)  # fmt: skip
            elif self.clock is not None:
                if self.clock.live or self.confirm.pending(self.search):
                    return None  # Tune asks again once the clock has moved
                return Searcher.FINISHED
            elif self.requeue:
                p = self.requeue.pop(0)
            else:
                p = self._ask()
                if p is None:
                    return None if self.confirm.pending(self.search) else Searcher.FINISHED
                if p == WAIT:
                    return None  # Tune asks again once a running trial reports
        if not extra:
            self.proposals[trial_id] = p
        return {
            "batch_size": p.batch_size,
            "lr": p.lr,
            "seed": p.seed,
            "study": p.study,
            "study_trial": p.number,
            "strategy": self.job.strategy.name,
            "max_steps": self.job.max_steps_for(p.batch_size, self.train_sizes.get(p.batch_size)),
            "workload": self.job.workload,
        } | extra

    def _ask(self) -> Proposal | str | None:
        p = self.search.ask()
        if isinstance(p, Proposal) and not self.job.tuned:
            from trainables.schedules import peak_lr

            p = Proposal(
                p.study, p.batch_size, p.seed, peak_lr(self.job.schedule(), p.batch_size), p.number
            )
        return p

    def _next_on_clock(self) -> Proposal | None:
        """Parallel search: the next trial asked on the clock (the first asks, every study at
        virtual time 0, on the first call); None off the clock or with none waiting."""
        if self.clock is None:
            return None
        if not self.clock_started:
            self.clock_started = True
            self.ask_on_clock()
        return self.requeue.pop(0) if self.requeue else None

    def ask_on_clock(self) -> None:
        """Parallel search: while a virtual worker is free, ask the next study that may ask, at
        the clock's virtual time (the trial starts there on the clock), journaled in that
        order; Tune's next suggests hand them out."""
        assert self.clock is not None
        while self.clock.free() and isinstance(p := self._ask(), Proposal):
            self._event(ASK, None, p, order=self.clock.asked)
            self.clock.start((p.study, p.number))
            self.requeue.append(p)

    def clock_key(self, trial_id: str) -> tuple[str, int] | None:
        """The clock's key of a search trial (None: not on the clock, or a confirmation run)."""
        p = self.proposals.get(trial_id) if self.clock is not None else None
        return None if p is None else (p.study, p.number)

    def settled_step(self, trial_id: str) -> float:
        """The step up to which a trial's reports are part of its result for sure: the last one
        the clock handed out, or where the search ended it (every step, off the clock)."""
        if self.clock_key(trial_id) is None:
            return math.inf
        return self.settled.get(trial_id, -math.inf)

    def fold(self, trial_id: str, point: dict) -> None:
        """Clock: one report, handed out in virtual order, into the trial's curve and best."""
        self.settled[trial_id] = float(point.get("step", 0))
        self._fold(trial_id, point)

    def conclude(self, trial_id: str, last: dict | None, error: bool = False) -> None:
        """Clock: the search ends a trial at its report ``last`` (its own end, a stop, a
        withdrawal; None or ``error``: it errored), journals and tells it, then asks again."""
        assert self.clock is not None
        p = self.proposals[trial_id]
        self.clock.end((p.study, p.number))
        if last is not None:
            self.settled[trial_id] = float(last.get("step", 0))
        self._complete(trial_id, p, last, error or last is None)
        self.ask_on_clock()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.clock_key(trial_id) is not None:  # folded as the clock hands reports out
            return
        stop = self.stopped_at.get(trial_id, {}).get("step", math.inf)
        for point in points_of(result):  # a packet: each of its reports, in order
            if point.get("step", 0) <= stop:  # none past the report it was stopped at
                self._fold(trial_id, point)

    def _fold(self, trial_id: str, point: dict) -> None:
        v = point.get(self.job.target.metric)
        if v is None or not math.isfinite(v):
            return
        curve = self.curves.setdefault(trial_id, [])
        step = float(point.get("step", 0))
        if curve and step <= curve[-1][0]:  # the final report, or a restored trial's repeat
            curve[-1] = (curve[-1][0], float(v)) if step == curve[-1][0] else curve[-1]
        else:
            curve.append((step, float(v)))
        old = self.best_metric.get(trial_id)
        better = old is None or (v < old if self.job.target.direction == "min" else v > old)
        if better:
            self.best_metric[trial_id] = v

    def withdraw_if_obsolete(self, trial_id: str) -> bool:
        """Parallel search: take back a running trial that the provisional fit has since moved
        away from (:meth:`LRSearch.obsolete`); the scheduler then stops it. Journaled before
        the search hears of it, as a result is. Its study asks again at once."""
        p = self.proposals.get(trial_id)
        if p is None or trial_id in self.withdrawn or not self.search.obsolete(p):
            return False
        self._event(WITHDRAW, trial_id, p)
        self.search.withdraw(p)
        self.withdrawn.add(trial_id)
        return True

    def _event(self, kind: str, trial_id: str | None, p: Proposal, **extra: Any) -> None:
        if self.clock is not None:
            extra.setdefault("at", self.clock.now)
        if self.journal is not None:
            append_record(self.journal, {EVENT: kind, "trial_id": trial_id, "study": p.study,
                                         "number": p.number, "lr": p.lr, **extra})  # fmt: skip

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        p = self.proposals.get(trial_id)
        if p is not None and self.clock is not None:
            return  # the clock ends search trials (conclude), in virtual order
        self._complete(trial_id, p, result, error)

    def _complete(
        self, trial_id: str, p: Proposal | None, result: dict | None, error: bool
    ) -> None:
        if p is not None and trial_id in self.withdrawn:  # no result: journaled for the table
            self.curves.pop(trial_id, None)
            record = self._record(trial_id, p, result, None)
            record["status"] = record["row"]["status"] = Status.WITHDRAWN.value
            if self.journal is not None:
                append_record(self.journal, record)
            self.records[trial_id] = record
            return
        if p is None:  # a confirmation run (or unknown): nothing to tell the search
            self.curves.pop(trial_id, None)
            c = self.confirming.get(trial_id)
            if c is not None:  # journaled like a search trial, so it is in MLflow and the table
                record = self._record(trial_id, c, result if not error else None, None)
                status = final_status((result or {}).get("status"), errored=error or not result)
                record["phase"], record["status"], record["row"]["status"] = PHASE, status, status
                if self.journal is not None:
                    append_record(self.journal, record)
                self.records[trial_id] = record
            return
        outcome = None
        if not (error or not result):
            self.on_trial_result(trial_id, result)
            result = self.stopped_at.get(trial_id, result)  # its last report, as Tune saw it
            outcome = trial_outcome(
                result, self.best_metric.get(trial_id), self.censored.get(trial_id)
            )
            outcome = dataclasses.replace(outcome, curve=tuple(self.curves.pop(trial_id, ())))
        self.stopped_at.pop(trial_id, None)
        record = self._record(trial_id, p, result if outcome else None, outcome)
        if self.journal is not None:  # on disk before anything acts on the result
            append_record(self.journal, record)
        self.records[trial_id] = record
        self.asha_fed.pop(trial_id, None)
        self._tell(p, outcome)

    def _tell(self, p: Proposal, outcome: Outcome | None) -> None:
        if outcome is None:
            self.search.fail(p)
            return
        t = self.job.target
        max_steps = self.job.max_steps_for(p.batch_size, self.train_sizes.get(p.batch_size))
        self.search.tell(p, outcome, max_steps, t.value, t.direction)

    def _record(
        self, trial_id: str, p: Proposal, last: dict[str, Any] | None, outcome: Outcome | None
    ) -> dict[str, Any]:
        """What the journal keeps of a finished trial (tune_jobs/journal.py)."""
        last = last or {}
        status = final_status(last.get("status"), errored=outcome is None)
        t, metric = self.job.target, self.job.target.metric
        max_steps = self.job.max_steps_for(p.batch_size, self.train_sizes.get(p.batch_size))
        return {
            # the virtual time a search trial ended at (confirmation runs are off the clock)
            **({"at": self.clock.now} if self.clock_key(trial_id) is not None else {}),
            "trial_id": trial_id, "proposal": dataclasses.asdict(p), "status": status,
            "outcome": None if outcome is None else dataclasses.asdict(outcome),
            "objective": None if outcome is None else objective(outcome, max_steps, t.value, t.direction),
            "asha": self.asha_fed.get(trial_id, []),
            "row": {
                "trial_id": trial_id, "batch_size": p.batch_size, "lr": p.lr, "seed": p.seed,
                "study": p.study, "status": status, "steps_to_target": last.get("steps_to_target"),
                "steps_run": last.get("step"), "examples": last.get("examples"),
                metric: last.get(metric),
            },
        }  # fmt: skip

    def replay(self, events: list[dict[str, Any]]) -> None:
        """Rebuild the search from the journal of a sweep whose driver died
        (:func:`tune_jobs.replay.replay`)."""
        replay(self, events)

    # ---- resume --------------------------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        state = {
            "search": self.search.state(),
            "proposals": self.proposals,
            "best_metric": self.best_metric,
            "censored": self.censored,
            "stopped_at": self.stopped_at,
            "curves": self.curves,
            "studies": self.search.studies if self.in_memory else None,
            "confirm": self.confirm.state(),
            "confirming": self.confirming,
            "confirm_requeue": self.confirm_requeue,
            "withdrawn": self.withdrawn,
            "used_ids": self.used_ids,
            "clock": (self.clock, self.clock_started, self.settled, self.requeue),
        }
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.proposals = state["proposals"]
        self.best_metric = state["best_metric"]
        self.censored = state.get("censored", {})
        self.stopped_at = state.get("stopped_at", {})
        self.curves = state.get("curves", {})
        self.confirm.load_state(state.get("confirm", {}))
        self.confirming = state.get("confirming", {})
        self.confirm_requeue = state.get("confirm_requeue", [])
        self.withdrawn = state.get("withdrawn", set())
        if state.get("clock") and self.clock is not None:
            self.clock, self.clock_started, self.settled, self.requeue = state["clock"]
        self.used_ids = state.get("used_ids", set(self.proposals) | set(self.confirming))
        if state.get("studies"):
            self.search.studies.update(state["studies"])
        live: dict[str, set[int]] = {}
        for p in self.proposals.values():
            live.setdefault(p.study, set()).add(p.number)
        self.search.load_state(state["search"], live)
