"""Ray Tune edge of the search, second half: the scheduler that stops a trial only against
trials of its own study (batch size and seed), and withdraws the parallel search's obsolete
ones; the searcher it consults is :mod:`tune_jobs.searcher`.
"""

from __future__ import annotations

import logging
import math
import time
from types import SimpleNamespace
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from analysis.packets import points_of
from trainables.api import Status, StopRule
from tune_jobs.config import JobConfig
from tune_jobs.confirm import PHASE
from tune_jobs.lr_rules import plateaued
from tune_jobs.lr_search import study_name
from tune_jobs.ray_internals import (
    asha_bracket,
    drop_cancelled_actor_tasks,
    release_finished_trial,
    resume_training,
)
from tune_jobs.searcher import SweepSearcher
from tune_jobs.vclock import END, ERROR

log = logging.getLogger("critbatch.search")
_PACED = "paced"  # _judge: a report of a paced search that no rule stopped (no ASHA)
# A trial of the clock not running this long (queued for resources, or not yet handed to Tune)
# while others wait at held reports: the cluster holds fewer trials than the clock has workers
# (it lost a node since launch), so the waiting trials go on instead.
HOLD_PENDING_S = 10.0


class PerBatchSizeScheduler(FIFOScheduler):
    """Early stopping that compares a trial only with trials of the same study.

    Four rules, all within a study (one batch size and seed): ASHA on the target metric at
    step milestones (grace, grace*rf, grace*rf^2, ...); a bound: a trial still running past
    the best steps-to-target its study has already seen (or the bound from the other batch
    sizes, :meth:`LRSearch.steps_bound`) can no longer win; a lag: a trial too far behind
    its study's fastest one at the same step (``lr_search.lag_stop``, :meth:`LRSearch.behind`);
    and a plateau: a trial whose smoothed metric has stalled short of the target
    (``early_stopping.plateau``, :meth:`_plateaued`). Bound, lag and plateau stops are
    censored (the trial needed more steps); in a cascade, pipeline or parallel search (one
    trial in flight per study) there is no ASHA (see :meth:`on_trial_result`). A parallel
    search's obsolete first trials are stopped and withdrawn, with or without early stopping
    (:meth:`SweepSearcher.withdraw_if_obsolete`). The parallel search's trials are judged on
    its virtual clock (:mod:`tune_jobs.vclock`), each report once no live trial can precede
    it in virtual time (:meth:`_on_clock`), so its decisions do not hang on the real timing;
    a trial waits at a report while its previous one is still held back (:meth:`_holds`), so
    the search's decisions cost at most one report's steps past the step a trial is ended at.
    """

    def __init__(self, job: JobConfig, searcher: SweepSearcher, max_steps: int, hold: bool = True):
        super().__init__()
        # the parallel search's trials wait at reports its clock holds back (:meth:`_holds`);
        # False where the cluster may run fewer trials at once than the clock has workers
        self.hold = hold
        es = job.early_stopping
        self.enabled = es.enabled and job.tuned
        self.grace = es.grace_steps or 5 * job.eval_every
        self.rf = es.reduction_factor
        self.max_steps = max(max_steps, self.grace)
        self.sign = 1.0 if job.target.direction == "max" else -1.0
        self.target_metric = job.target.metric
        self.searcher = searcher
        self.brackets: dict[str, Any] = {}  # study -> its ASHA bracket
        self.stopped: set[str] = set()
        self.target = job.target
        self.smoothed: dict[str, tuple[float, StopRule]] = {}  # trial -> (last step, its EMA)
        self.curves: dict[str, tuple[list[float], list[float]]] = {}  # trial -> steps, raw values
        self.lr_since: dict[str, tuple[float | None, float]] = {}  # trial -> (its LR, since step)
        s = job.strategy
        # A schedule that lowers the LR later (step, cosine, wsd) takes a trial off a plateau
        # at its peak LR: the rule would stop it before the decay that lets it reach.
        self.plateau = es.plateau if s.decay == "constant" and not s.decay_epochs else 0.0
        self.added: dict[str, int] = {}  # trial -> when Tune added it (choose_trial_to_run)
        self.last_point: dict[str, dict] = {}  # clock: trial -> its last report handed out
        self.held: dict[str, tuple[Trial, float]] = {}  # clock: waiting trials (trial, before)
        self.pending_since: dict[Any, float] = {}  # clock: key -> since when it is not running
        self.starved = False  # a trial of the clock waits to start: hold nothing
        self.warned = False  # (once a sweep)
        self._releasing = False

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        # A packet (analysis/packets.py) is judged report by report, in order, as if each had
        # come alone: the first report a rule stops the trial at is where it is censored, even
        # when the trial's own end (reached, spent, diverged) is in the same packet. Which
        # reports share a packet depends on how fast the trial runs; the search's decisions
        # must not (measured on the quickstart: letting such an end stand moved B_crit from
        # 69.2 to 79.6 and made it differ from run to run).
        # A trial's final report (status not `running`) and confirmation runs are not judged.
        # The parallel search judges on its virtual clock instead (_on_clock).
        reports = points_of(result)
        key = self.searcher.clock_key(trial.trial_id)
        if key is not None:
            before = self.searcher.clock.buffered_to(key)  # its previous report's virtual time
            action = self._on_clock(trial.trial_id, reports)
            if action == TrialScheduler.CONTINUE and self._holds(trial.trial_id, before):
                self.held[trial.trial_id] = (trial, before)
                action = TrialScheduler.NOOP
            self.release_held(tune_controller)
            return action
        points = [p for p in reports if p.get("status") == Status.RUNNING]
        if not points or trial.config.get("phase") == PHASE:  # confirmation: its stop rule
            return TrialScheduler.CONTINUE
        if not self.enabled:
            return self._withdraw_if_obsolete(trial)
        study = trial.config.get("study") or study_name(
            trial.config["batch_size"], trial.config["seed"]
        )
        # Tune tells the scheduler before the searcher: the best so far folds in the packet's
        # reports as they are judged.
        best = self.searcher.best_metric.get(trial.trial_id)
        action = TrialScheduler.CONTINUE
        for point in points:
            action, best, censor = self._judge(trial, study, point, best)
            if action == TrialScheduler.STOP:
                self._record_stop(trial.trial_id, point, censor)
                return action
        return self._withdraw_if_obsolete(trial) if action is _PACED else action

    def _record_stop(self, trial_id: str, point: dict, censor: float | None) -> None:
        self.stopped.add(trial_id)
        if censor is not None:
            self.searcher.censored[trial_id] = censor
        self.searcher.stopped_at[trial_id] = point

    # ---- the parallel search's virtual clock (tune_jobs/vclock.py) ---------------------------
    def _on_clock(self, trial_id: str, reports: list[dict], finished: bool = False,
                  error: bool = False) -> str:  # fmt: skip
        """Buffer a search trial's reports on the clock, hand out (and act on) every event no
        live trial can precede, then tell Tune whether this trial is still live: STOP once the
        search has ended it (at an earlier step, maybe: the steps past it are spent, not part
        of its result)."""
        clock, key = self.searcher.clock, self.searcher.clock_key(trial_id)
        if not clock.is_live(key):
            return TrialScheduler.STOP
        for point in reports:
            clock.report(key, trial_id, point)
        if finished or error:
            clock.finish(key, trial_id, error)
        self._advance()
        return TrialScheduler.CONTINUE if clock.is_live(key) else TrialScheduler.STOP

    def _holds(self, trial_id: str, before: float | None) -> bool:
        """Does a live trial of the clock wait at its report (NOOP: Tune's function trainable
        waits inside ``report``) until the clock has handed out its previous report (at virtual
        time ``before``)? Then a trial the search ends at a report held back runs at most one
        report past it (tune_jobs/vclock.py). Not when the clock's workers are not known to fit
        the cluster (:attr:`hold`, ``slots`` 0) or a trial of the clock is waiting to start
        (:attr:`starved`): waiting trials could keep it from ever starting."""
        clock = self.searcher.clock
        return (
            self.hold
            and clock.slots > 0
            and not self.starved
            and before is not None
            and clock.handed_to(self.searcher.clock_key(trial_id)) < before
        )

    def release_held(self, tune_controller) -> None:
        """Let each waiting trial go on once its previous report is handed out (or when none
        may wait now), or stop it where the search ended it (Tune's ``stop_trial``, as for a
        STOP)."""
        if self._releasing or not self.held:
            return
        self._releasing = True
        try:
            clock = self.searcher.clock
            for trial_id, (trial, before) in list(self.held.items()):
                key = self.searcher.clock_key(trial_id)
                if not clock.is_live(key):
                    del self.held[trial_id]
                    tune_controller.stop_trial(trial)
                elif not self._holds(trial_id, before):
                    del self.held[trial_id]
                    resume_training(tune_controller, trial)
        finally:
            self._releasing = False

    def _advance(self) -> None:
        while (event := self.searcher.clock.pop()) is not None:
            _, trial_id, point = event
            self._on_event(trial_id, point)

    def _on_event(self, trial_id: str, point: Any) -> None:
        """One report in virtual-time order (or the trial's end, or its error): the stop rules
        and the withdrawal as for a report that came alone, then the search ends the trial
        where one fired or where it ended."""
        s = self.searcher
        if point in (END, ERROR):  # ended in reality after its last report
            last = self.last_point.get(trial_id)
            self._conclude(trial_id, last, error=point == ERROR or last is None)
            return
        self.last_point[trial_id] = point
        if point.get("status") != Status.RUNNING:  # its own end: reached, spent, diverged
            s.fold(trial_id, point)
            self._conclude(trial_id, point)
            return
        action, censor = TrialScheduler.CONTINUE, None
        if self.enabled:
            ref = SimpleNamespace(trial_id=trial_id)
            action, _, censor = self._judge(ref, s.proposals[trial_id].study, point,
                                            s.best_metric.get(trial_id))  # fmt: skip
        s.fold(trial_id, point)
        if action == TrialScheduler.STOP:
            self._record_stop(trial_id, point, censor)
            self._conclude(trial_id, point)
        elif (action is _PACED or not self.enabled) and s.withdraw_if_obsolete(trial_id):
            self.stopped.add(trial_id)
            self._conclude(trial_id, point)

    def _conclude(self, trial_id: str, last: dict | None, error: bool = False) -> None:
        self.searcher.conclude(trial_id, last, error)
        self._forget(trial_id)

    def _judge(
        self, trial, study: str, point: dict, best: float | None
    ) -> tuple[Any, Any, float | None]:
        """One running report: (STOP, CONTINUE, or _PACED: no ASHA in a paced search; the best
        target metric so far, this report's folded in; for a stop by the bound, the lag or the
        plateau rule the step it is censored at, else None). Records nothing of a stop: the
        caller does."""
        step = point.get("step", 0)
        bound = self.searcher.search.steps_bound(study)
        if step >= bound:
            return TrialScheduler.STOP, best, float(bound)
        value = point.get(self.target_metric)
        if value is None or not math.isfinite(value):
            return TrialScheduler.CONTINUE, best, None
        best = value if best is None else min(best, value) if self.sign < 0 else max(best, value)
        if self.searcher.search.behind(study, step, best):
            return TrialScheduler.STOP, best, float(step)  # slower than the fastest
        value = self._smooth(trial.trial_id, step, value)
        if self._plateaued(trial.trial_id, step, point.get("lr")):
            return TrialScheduler.STOP, best, float(step)  # stalled: will not reach
        if self.searcher.search.paced:
            # A cascade, pipeline or parallel search runs a study's trials one after another, so
            # ASHA would only compare a trial with earlier ones at early milestones, where a
            # larger LR leads and a lower one (lower noise floor) may still win: the bound, the
            # lag and the plateau rule suffice.
            return _PACED, best, None
        bracket = self._bracket(study)
        self.searcher.asha_fed.setdefault(trial.trial_id, []).append((step, self.sign * value))
        return bracket.on_result(trial, step, self.sign * value), best, None

    def _withdraw_if_obsolete(self, trial) -> str:
        """Parallel search: stop a running first trial that the provisional fit has moved away
        from; the searcher withdraws it (no result; its study asks again at once)."""
        if self.searcher.withdraw_if_obsolete(trial.trial_id):
            self.stopped.add(trial.trial_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    # Which trial Tune starts next: the first PENDING trial in the order trials were added,
    # else the first PAUSED one, as FIFOScheduler chooses, but looked for among the live
    # trials only. FIFOScheduler scans every trial of the sweep at every step of Tune's loop,
    # a cost per step that grows with the sweep (profile of a 1,500-trial sweep: 13 s in
    # that scan; BENCHMARKS.md, "Driver memory at 10,000 trials").
    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        self.added[trial.trial_id] = len(self.added)

    def choose_trial_to_run(self, tune_controller):
        live = tune_controller.get_live_trials()
        if self.held or self.pending_since:
            self._watch_starts(tune_controller, live)
        for status in (Trial.PENDING, Trial.PAUSED):
            waiting = [t for t in live if t.status == status]
            if waiting:
                return min(
                    waiting, key=lambda t: (self.added.get(t.trial_id, math.inf), t.trial_id)
                )
        return None

    def _watch_starts(self, tune_controller, live) -> None:
        """Tune calls :meth:`choose_trial_to_run` at every step of its loop: note since when
        each trial on the clock has not been running in Tune (queued for resources, or not yet
        handed to Tune: Tune's pending trials, such as confirmation runs, can fill its
        queue), and let the waiting trials go on once one has waited :data:`HOLD_PENDING_S`,
        and make none wait until it runs."""
        now = time.monotonic()
        running = {self.searcher.clock_key(t.trial_id) for t in live if t.status == Trial.RUNNING}
        waiting = {k for k in self.searcher.clock.unfinished() if k not in running}
        for key in [k for k in self.pending_since if k not in waiting]:
            del self.pending_since[key]
        for key in waiting:
            self.pending_since.setdefault(key, now)
        starved = any(now - t0 > HOLD_PENDING_S for t0 in self.pending_since.values())
        if starved and not self.warned and self.held:
            self.warned = True
            log.warning(
                "a trial of the parallel search has waited %.0f s to start: the trials waiting "
                "for the search's clock go on meanwhile (the cluster runs fewer trials at once "
                "than it did at launch; their extra steps are spent, the answer is the same)",
                HOLD_PENDING_S,
            )
        self.starved = starved
        if starved:
            self.release_held(tune_controller)

    # Tune's per-trial state of finished trials, released (driver memory stays bounded over
    # long sweeps: tune_jobs/ray_internals.py). Tune calls these after the trial's last result.
    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self.trial_ended(trial.trial_id, result)
        self.added.pop(trial.trial_id, None)
        release_finished_trial(tune_controller, trial)
        self.release_held(tune_controller)

    def trial_ended(self, trial_id: str, result: dict | None) -> None:
        """A trial's end as Tune reports it (the part of :meth:`on_trial_complete` that needs no
        Tune state). Tune tells the searcher no result the scheduler stopped a trial at: the
        searcher hears that last packet's reports here, before Tune's state drops them (Tune
        tells the searcher of the completion next; folding is idempotent). On the clock, the
        trial's last reports go onto it, and the search may end the trial later."""
        if self.searcher.clock_key(trial_id) is not None:
            self._on_clock(trial_id, points_of(result) if result else [], finished=True)
        else:
            self.searcher.on_trial_result(trial_id, result)
        self._forget_unless_on_clock(trial_id)

    def on_trial_error(self, tune_controller, trial) -> None:
        # Not called for a trial Tune retries (it restarts, and sends its steps again).
        super().on_trial_error(tune_controller, trial)
        if self.searcher.clock_key(trial.trial_id) is not None:
            self._on_clock(trial.trial_id, [], error=True)
        self.held.pop(trial.trial_id, None)
        drop_cancelled_actor_tasks(tune_controller)
        self.release_held(tune_controller)

    def on_trial_remove(self, tune_controller, trial) -> None:
        super().on_trial_remove(tune_controller, trial)
        self._forget_unless_on_clock(trial.trial_id)
        self.added.pop(trial.trial_id, None)
        self.held.pop(trial.trial_id, None)
        release_finished_trial(tune_controller, trial)
        self.release_held(tune_controller)

    def _forget_unless_on_clock(self, trial_id: str) -> None:
        key = self.searcher.clock_key(trial_id)
        if key is None or not self.searcher.clock.is_live(key):
            self._forget(trial_id)

    def _forget(self, trial_id: str) -> None:
        """Drop a trial's stop-rule state (once the search has ended it)."""
        self.smoothed.pop(trial_id, None)
        self.curves.pop(trial_id, None)
        self.lr_since.pop(trial_id, None)
        self.last_point.pop(trial_id, None)

    def _smooth(self, trial_id: str, step: float, value: float) -> float:
        """The trial's target metric as its stop rule sees it (:class:`trainables.api.StopRule`:
        the bias-corrected EMA over eval points, ``target.smoothing``): ASHA ranks trials on
        it, not on one eval. Near-optimal LRs differ by less than one eval's noise at early
        rungs, so a rank on the raw metric stops good trials by chance (measured on the
        quickstart: trials 2% behind at the rung, within the eval noise, stopped)."""
        last, rule = self.smoothed.get(trial_id, (-math.inf, None))
        if rule is None or step <= last:  # a new trial, or one restarted from its first step
            rule = StopRule(self.target)
            self.curves[trial_id] = ([], [])
        self.smoothed[trial_id] = (step, rule)
        smoothed = rule.update(value, int(step))
        steps, values = self.curves[trial_id]
        steps.append(step)
        values.append(value)  # raw: the plateau rule smooths within its own window
        return smoothed

    def _plateaued(self, trial_id: str, step: float, lr: float | None) -> bool:
        """Has the trial stalled short of the target (``early_stopping.plateau``,
        :func:`tune_jobs.lr_rules.plateaued`: its metric smoothed within each doubling)? Judged
        once the half-way point is past the grace steps and past the last change of the trial's
        LR (the ``lr`` it reports: a warm-up, a batch-size schedule), so the whole window ran at
        one LR."""
        since = self.lr_since.get(trial_id)
        if since is None or since[0] != lr or step < since[1]:  # a new LR, or a restart
            self.lr_since[trial_id] = since = (lr, step)
        if not self.plateau or step < 2 * max(self.grace, since[1]):
            return False
        steps, values = self.curves[trial_id]
        return plateaued(
            steps, values, self.target.value, self.sign < 0, self.plateau, self.target.smoothing
        )

    def _bracket(self, study: str) -> Any:
        bracket = self.brackets.get(study)
        if bracket is None:
            bracket = self.brackets[study] = asha_bracket(self.grace, self.max_steps, self.rf)
        return bracket

    def replay(self, records: list[dict[str, Any]]) -> None:
        """Refill the ASHA brackets with what the journaled trials fed them (a resumed sweep
        then stops its remaining trials exactly as the uninterrupted sweep would have)."""
        for rec in records:
            bracket = self._bracket(rec["proposal"]["study"])
            ref = SimpleNamespace(trial_id=rec["trial_id"])
            for step, value in rec.get("asha", ()):
                bracket.on_result(ref, step, value)
