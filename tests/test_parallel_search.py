"""The parallel LR search (``lr_search.parallel``) through the sweep's searcher and scheduler,
in-process (no Ray): reports of real ``nqm_exact`` trials arrive in time order, as Tune would
deliver them with a worker per study; the scheduler stops and the searcher withdraws the first
trials the provisional fit moved away from. A driver killed after any number of events, then
replayed from its journal, holds exactly the search the live driver held, and the resumed
sweep runs every proposal once.

The sweep through real Ray is ``tests/test_nqm_end_to_end.py::test_parallel_sweep_*``.
"""

from __future__ import annotations

import heapq
import math
import random
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from ray.tune.schedulers import TrialScheduler

from trainables.api import Status, Target, TrialConfig
from trainables.workloads.nqm import train_exact
from tune_jobs.job_file import JobError, parse_job
from tune_jobs.journal import ASK, EVENT, WITHDRAW, journal_path, read_events, read_records
from tune_jobs.lr_rules import COARSE_TRIALS
from tune_jobs.scheduler import PerBatchSizeScheduler
from tune_jobs.searcher import SweepSearcher

OPTIONS = {"dim": 1000, "exponent": 1.0, "noise_scale": 1.0, "s0": 1.0, "max_reports": 40}
BATCH_SIZES = [16, 64, 256, 1024, 4096]
MAX_STEPS = 400_000


def _data(tmp_path: Path, **lr_search) -> dict:
    return {
        "name": "parallel", "workload": "nqm_exact", "batch_sizes": BATCH_SIZES,
        "lr_search": {"min": 0.01, "max": 2.0, "trials_per_batch_size": 6, "confirm_seeds": 0,
                      "algorithm": "line_search", "parallel": True, **lr_search},
        "target": {"metric": "eval_loss", "value": 0.02, "direction": "min"},
        "budget": {"max_steps": MAX_STEPS}, "eval_every": 500, "options": OPTIONS,
        "tracking": {"uri": f"sqlite:///{tmp_path / 'm.db'}"}, "storage": str(tmp_path / "runs"),
    }  # fmt: skip


_REPORTS: dict[tuple[int, float], list[dict]] = {}


def _reports(cfg: dict) -> list[dict]:
    """Every report of the nqm_exact trial ``cfg`` run to its end (cached: they do not depend
    on when the trial runs)."""
    key = (cfg["batch_size"], cfg["lr"])
    if key not in _REPORTS:
        out: list[dict] = []
        tc = TrialConfig(workload="nqm_exact", batch_size=cfg["batch_size"], lr=cfg["lr"],
                         max_steps=MAX_STEPS, eval_every=500, target=Target("eval_loss", 0.02),
                         options=OPTIONS)  # fmt: skip
        train_exact(tc, lambda m, checkpoint=None: out.append(dict(m)))
        _REPORTS[key] = out
    return _REPORTS[key]


class Driver:
    """What Tune does with the searcher and scheduler, in simulated real time (a worker for
    every trial asked): suggest whenever it may, deliver each report to the scheduler then (if
    not stopped) the searcher, and end a trial at its last report or when the scheduler stops
    it (the scheduler's ``trial_ended``, then the searcher's ``on_trial_complete``, as Tune's
    ``stop_trial``). A trial the scheduler answers NOOP waits at that report (a function
    trainable waits inside ``report``) until the scheduler lets it go on
    (``_schedule_trial_train``) or stops it (``stop_trial``): the driver is the controller the
    scheduler is handed. ``speed(trial config)``: the real time a step of that trial takes (1:
    a step is one time unit at every batch size)."""

    def __init__(self, searcher: SweepSearcher, scheduler: PerBatchSizeScheduler, prefix: str,
                 speed=lambda cfg: 1.0):  # fmt: skip
        self.searcher, self.scheduler, self.prefix, self.speed = searcher, scheduler, prefix, speed
        self.queue: list[tuple] = []
        self.trials: dict[str, tuple[dict, list[dict], float, float]] = {}
        self.n = 0
        self.now = 0.0
        self.events = 0  # reports and completions delivered
        self.steps = 0  # steps the trials ran in reality (up to where each was stopped)
        self.ended: list[str] = []  # trial ids in the order they ended in reality
        self.waiting: dict[str, tuple[int, int]] = {}  # held trials: (order, report index)
        self.holds = 0  # NOOPs answered
        self.ran: dict[str, tuple[int, list]] = {}  # trial id -> (step it ended at, its steps)

    def fill(self, now: float) -> None:
        while True:
            tid = f"{self.prefix}{self.n}"
            cfg = self.searcher.suggest(tid)
            if not isinstance(cfg, dict):
                return
            self.n += 1
            reports = _reports(cfg)
            pace = self.speed(cfg)
            self.trials[tid] = (cfg, reports, now, pace)
            heapq.heappush(self.queue, (now + pace * reports[0]["step"], self.n, tid, 0))

    # the part of Tune's controller the scheduler calls
    def _schedule_trial_train(self, trial) -> None:
        order, k = self.waiting.pop(trial.trial_id)
        _, reports, _, pace = self.trials[trial.trial_id]
        step = pace * (reports[k + 1]["step"] - reports[k]["step"])
        heapq.heappush(self.queue, (self.now + step, order, trial.trial_id, k + 1))

    def stop_trial(self, trial) -> None:
        _, k = self.waiting.pop(trial.trial_id)
        self._end(trial.trial_id, self.trials[trial.trial_id][1][k])

    def _end(self, tid: str, result: dict) -> None:
        self.steps += int(result["step"])
        self.ran[tid] = (int(result["step"]), [r["step"] for r in self.trials[tid][1]])
        self.ended.append(tid)
        self.scheduler.trial_ended(tid, result)
        self.searcher.on_trial_complete(tid, result)
        del self.trials[tid]
        self.scheduler.release_held(self)
        self.fill(self.now)

    def run(self, stop_after: int | None = None) -> None:
        self.fill(0.0)
        while self.queue:
            now, order, tid, k = heapq.heappop(self.queue)
            self.now = now
            cfg, reports, start, pace = self.trials[tid]
            result = reports[k]
            self.events += 1
            if result["status"] == Status.RUNNING and k + 1 < len(reports):
                trial = SimpleNamespace(trial_id=tid, config=cfg)
                action = self.scheduler.on_trial_result(self, trial, result)
                if action != TrialScheduler.STOP:
                    self.searcher.on_trial_result(tid, result)
                    if action == TrialScheduler.NOOP:
                        self.holds += 1
                        self.waiting[tid] = (order, k)
                    else:
                        nxt = reports[k + 1]["step"]
                        heapq.heappush(self.queue, (now + pace * (nxt - result["step"]), order,
                                                    tid, k + 1))  # fmt: skip
                    self.fill(now)  # Tune asks the searcher at every step of its loop
                    if self.events == stop_after:
                        return
                    continue
            self._end(tid, result)
            if self.events == stop_after:
                return
        assert not self.waiting or stop_after, f"held forever: {self.waiting}"


def _pair(
    tmp_path: Path, name: str, slots: int = 0, **lr_search
) -> tuple[SweepSearcher, PerBatchSizeScheduler]:
    job = parse_job(_data(tmp_path, **lr_search))
    d = tmp_path / name
    d.mkdir()
    searcher = SweepSearcher(job, None, dict.fromkeys(BATCH_SIZES, 10**6), journal_path(d), slots)
    return searcher, PerBatchSizeScheduler(job, searcher, MAX_STEPS)


def _optuna(searcher: SweepSearcher) -> dict:
    return {
        name: [(t.number, t.state, t.params, t.value) for t in study.get_trials(deepcopy=False)]
        for name, study in searcher.search.studies.items()
    }


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> tuple[Path, SweepSearcher, int]:
    tmp = tmp_path_factory.mktemp("whole")
    searcher, scheduler = _pair(tmp, "w")
    driver = Driver(searcher, scheduler, "t")
    driver.run()
    return tmp / "w", searcher, driver.events


def test_every_batch_size_starts_at_once_and_obsolete_trials_are_withdrawn(whole) -> None:
    run_dir, searcher, _ = whole
    events = read_events(journal_path(run_dir))
    asks = [e for e in events if e.get(EVENT) == ASK]
    # every study asked its first trial before any trial finished
    first_done = next(i for i, e in enumerate(events) if EVENT not in e)
    assert {e["study"] for e in events[:first_done] if e.get(EVENT) == ASK} == set(
        searcher.search.studies
    )
    withdrawn = [e for e in events if e.get(EVENT) == WITHDRAW]
    assert withdrawn, "this problem withdraws placeholders: the path must be exercised"
    records = read_records(journal_path(run_dir))
    status = {r["trial_id"]: r["status"] for r in records}
    assert all(status[e["trial_id"]] == Status.WITHDRAWN for e in withdrawn)
    # every ask ends once: a result or a withdrawal; withdrawn ones do not count
    assert len(asks) == len(records) == len({(e["study"], e["number"]) for e in asks})
    counted = [r for r in records if r["status"] != Status.WITHDRAWN]
    for name in searcher.search.studies:
        # failed coarse-pass trials do not count either (at most COARSE_TRIALS of them)
        st = searcher.search.states[name]
        coarse_failed = [
            r
            for r in counted
            if r["proposal"]["study"] == name
            and r["proposal"]["number"] in st.coarse
            and r["status"] != Status.REACHED
        ]
        assert st.free == len(coarse_failed) <= COARSE_TRIALS
        assert sum(r["proposal"]["study"] == name for r in counted) <= 6 + st.free
    # every batch size reached the target; the withdrawn ones were not told to Optuna as results
    assert set(searcher.search.stop_bound) == set(searcher.search.studies)
    fails = sum(
        t.state == optuna.trial.TrialState.FAIL
        for s in searcher.search.studies.values()
        for t in s.get_trials(deepcopy=False)
    )
    assert fails == len(withdrawn)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_search_is_the_same_whatever_speed_each_trial_runs_at(
    tmp_path: Path, whole, seed: int
) -> None:
    # Each trial's step takes its own real time, 0.2x to 5x (drawn per trial): reports reach
    # the scheduler in another order, and trials end in another order than on the clock; the
    # search must ask, stop, withdraw and journal exactly the same trials, in the same order.
    run_dir, searcher, _ = whole
    rng = random.Random(seed)
    fast, f_sched = _pair(tmp_path, "s")
    driver = Driver(fast, f_sched, "t", speed=lambda cfg: rng.uniform(0.2, 5.0))
    driver.run()
    assert read_events(journal_path(tmp_path / "s")) == read_events(journal_path(run_dir))
    assert fast.search.state() == searcher.search.state()
    on_clock = [r["trial_id"] for r in read_records(journal_path(run_dir))]
    assert driver.ended != on_clock, "the real order must differ, or this shows nothing"
    assert sorted(driver.ended) == sorted(on_clock)


def test_with_fewer_workers_than_studies_the_search_is_the_same_whatever_the_speeds(
    tmp_path: Path,
) -> None:
    # 2 virtual workers for 5 studies: a trial asked while both are busy starts on the clock
    # when the search ends one; the driver here lends every trial a worker at once, so most
    # run before their virtual start (their reports held until then)
    runs = []
    rng = random.Random(7)
    for name, speed in (("one", lambda cfg: 1.0), ("any", lambda cfg: rng.uniform(0.2, 5.0))):
        searcher, scheduler = _pair(tmp_path, name, slots=2)
        driver = Driver(searcher, scheduler, "t", speed=speed)
        driver.run()
        runs.append(read_events(journal_path(tmp_path / name)))
        assert set(searcher.search.stop_bound) == set(searcher.search.studies)
        # a trial runs on past a report the clock holds back, and waits at the next while that
        # one is held: one the search ended at a report ran at most one report past it
        # (withdrawn trials have no result to end at)
        ends = {r["trial_id"]: r["outcome"]["steps_run"]
                for r in read_records(journal_path(tmp_path / name)) if r.get("outcome")}  # fmt: skip
        assert driver.holds > 0, "no trial waited: the wait is not exercised"
        past = {t: driver.ran[t][1].index(driver.ran[t][0]) - driver.ran[t][1].index(ends[t])
                for t in ends}  # fmt: skip
        assert max(past.values()) == 1 and min(past.values()) == 0, past
    assert runs[0] == runs[1]
    unlimited = _pair(tmp_path, "all")
    Driver(*unlimited, "t").run()
    assert runs[0] != read_events(journal_path(tmp_path / "all")), "slots must matter here"
    # a resumed driver rebuilds the clock's workers as they were
    total = sum(1 for _ in runs[0])
    killed, k_sched = _pair(tmp_path, "k2", slots=2)
    Driver(killed, k_sched, "t").run(stop_after=total // 2)
    resumed, _ = _pair(tmp_path, "r2", slots=2)
    resumed.journal = journal_path(tmp_path / "k2")
    resumed.replay(read_events(journal_path(tmp_path / "k2")))
    assert {k: (t.start, t.order) for k, t in resumed.clock.live.items()} == {
        k: (t.start, t.order) for k, t in killed.clock.live.items()
    }
    assert sum(t.start is not None for t in killed.clock.live.values()) <= 2


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95])
def test_a_killed_driver_replays_to_the_same_search(tmp_path: Path, whole, fraction) -> None:
    _, _, total = whole
    killed, k_sched = _pair(tmp_path, "k")
    driver = Driver(killed, k_sched, "t")
    driver.run(stop_after=max(1, int(fraction * total)))
    events = read_events(journal_path(tmp_path / "k"))

    resumed, r_sched = _pair(tmp_path, "r")
    resumed.journal = journal_path(tmp_path / "k")  # the resumed driver appends to the same
    resumed.replay(events)
    r_sched.replay([e for e in events if EVENT not in e])
    # the same search: every study's counters, results, fits' bases, and Optuna's trials
    assert resumed.search.state() == killed.search.state()
    assert _optuna(resumed) == _optuna(killed)
    # owed first: exactly the trials asked and not ended when the driver died (running, or
    # asked on the virtual clock and not started yet; withdrawn ones are not), each where it
    # started on the clock
    concluded = {r["trial_id"] for r in read_records(journal_path(tmp_path / "k"))}
    running = {(p.study, p.number) for tid, p in killed.proposals.items() if tid in driver.trials
               and tid not in killed.withdrawn and tid not in concluded}  # fmt: skip
    live = set(killed.clock.live)
    assert running <= live
    assert {(p.study, p.number) for p in resumed.requeue} == live
    assert {k: (t.start, t.order) for k, t in resumed.clock.live.items()} == {
        k: (t.start, t.order) for k, t in killed.clock.live.items()
    }

    # the resumed driver finishes the sweep; every proposal ends exactly once (a result or a
    # withdrawal, under the trial id that ran it last), none told twice
    Driver(resumed, r_sched, "r").run()
    after = read_events(journal_path(tmp_path / "k"))
    asks = [(e["study"], e["number"]) for e in after if e.get(EVENT) == ASK]
    assert len(asks) == len(set(asks))
    withdrawn = [(e["study"], e["number"]) for e in after if e.get(EVENT) == WITHDRAW]
    told = [(r["proposal"]["study"], r["proposal"]["number"]) for r in after
            if EVENT not in r and r["status"] != Status.WITHDRAWN]  # fmt: skip
    assert len(told) == len(set(told)), "a trial told twice"
    assert sorted(told + withdrawn) == sorted(asks)
    assert resumed.search.remaining() == 0 and not resumed.requeue
    assert set(resumed.search.stop_bound) == set(resumed.search.studies)


def test_a_journal_that_does_not_match_the_search_is_refused(tmp_path: Path, whole) -> None:
    run_dir, _, _ = whole
    events = read_events(journal_path(run_dir))
    i = next(i for i, e in enumerate(events) if e.get(EVENT) == ASK and i > 8)
    events[i] = {**events[i], "lr": events[i]["lr"] * 1.5}
    searcher, _ = _pair(tmp_path, "x")
    with pytest.raises(RuntimeError, match="does not match"):
        searcher.replay(events)


def test_parallel_is_its_own_mode(tmp_path: Path) -> None:
    for other, fix in (({"cascade": True}, "lr_search.parallel and lr_search.cascade"),
                       ({"pipeline": 2}, "lr_search.parallel and lr_search.pipeline")):  # fmt: skip
        with pytest.raises(JobError, match=fix):
            parse_job(_data(tmp_path, **other))
    assert math.isfinite(parse_job(_data(tmp_path)).lr_search.min)
