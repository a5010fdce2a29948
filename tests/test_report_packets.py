"""Trials send their reports to Tune in packets (tune_jobs.trainable.ReportCoalescer), and every
reader unpacks them the one way (analysis.packets.points_of): a fast trial sends a packet per
window, a slow one each report at once, a checkpoint or a final status goes at once with what
was gathered; a packed folder reads as the same frame as one report per line; the scheduler
judges a packet report by report and censors where a rule fires; the searcher and MLflow get
every report of a packet.

The coalescer's ``send`` is a plain list; the scheduler, searcher, loader and MLflow points are
the real ones (tests/test_sweep.py runs a real sweep that sends packets and checks that MLflow
holds every report).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from ray.tune.schedulers import TrialScheduler

import analysis.load_ray as load_ray
from analysis.load_ray import load_ray_folder
from analysis.packets import POINTS, points_of
from tune_jobs.job_file import parse_job
from tune_jobs.scheduler import PerBatchSizeScheduler
from tune_jobs.searcher import SweepSearcher
from tune_jobs.tracking import metric_points
from tune_jobs.trainable import REPORT_WINDOW_S, ReportCoalescer


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _metrics(step: int, status: str = "running") -> dict:
    return {"step": step, "train_loss": 1.0 / step, "eval_loss": 2.0 / step, "status": status}


def _coalescer(window_s: float = 0.2):
    sent: list[tuple[dict, dict | None]] = []
    clock = Clock()
    report = ReportCoalescer(lambda r, c=None: sent.append((r, c)), window_s, clock)
    return report, sent, clock


def _steps(result: dict) -> list[int]:
    return [p["step"] for p in points_of(result)]


# ---- the coalescer ---------------------------------------------------------------------------
def test_a_slow_reporter_sends_each_report_at_once_unpacked() -> None:
    report, sent, clock = _coalescer()
    for step in range(1, 6):
        report(_metrics(step))
        assert len(sent) == step and sent[-1] == (_metrics(step), None)  # no list of one
        clock.t += 0.25  # slower than the window
    assert not any(POINTS in r for r, _ in sent)


def test_a_fast_reporter_sends_a_packet_per_window_the_last_report_on_top() -> None:
    report, sent, clock = _coalescer()
    for step in range(1, 101):  # 100 reports, 0.01 s apart: 1 s
        report(_metrics(step))
        clock.t += 0.01
    report.flush()  # the trial's end
    assert sent[0] == (_metrics(1), None)  # the first goes at once
    # then one packet per 0.2 s window (20 reports each), and what was left at the end
    assert [len(_steps(r)) for r, _ in sent] == [1, 20, 20, 20, 20, 19]
    assert [s for r, _ in sent for s in _steps(r)] == list(range(1, 101))  # each once, in order
    for r, _ in sent[1:]:
        last = r[POINTS][-1]
        assert {k: v for k, v in r.items() if k != POINTS} == last  # Tune reads the last report
        assert r[POINTS] == [_metrics(s) for s in _steps(r)]  # each a full metrics dict
    report.flush()
    assert len(sent) == 6  # nothing left: nothing sent


def test_a_checkpoint_goes_at_once_with_what_was_gathered() -> None:
    report, sent, clock = _coalescer()
    report(_metrics(1))
    for step in (2, 3):
        clock.t += 0.01
        report(_metrics(step))
    assert len(sent) == 1
    state = {"w": [1.0]}
    report(_metrics(4), checkpoint=state)
    assert len(sent) == 2
    packet, checkpoint = sent[-1]
    assert checkpoint is state and _steps(packet) == [2, 3, 4] and packet["step"] == 4


def test_a_final_status_goes_at_once_with_what_was_gathered() -> None:
    report, sent, clock = _coalescer()
    report(_metrics(1))
    clock.t += 0.01
    report(_metrics(2))
    report(_metrics(3, "reached") | {"steps_to_target": 3})
    packet, _ = sent[-1]
    assert _steps(packet) == [2, 3] and packet["status"] == "reached"
    assert packet["steps_to_target"] == 3
    # points_of: a key of the last report only (steps_to_target) is not lent to the others
    assert "steps_to_target" not in points_of(packet)[0]


def test_the_default_window_is_the_module_constant() -> None:
    assert ReportCoalescer(print).window_s == REPORT_WINDOW_S > 0


# ---- points_of --------------------------------------------------------------------------------
def test_points_of_a_packet_gives_each_report_with_the_packets_bookkeeping() -> None:
    one = {"step": 5, "eval_loss": 0.5, "trial_id": "t", "timestamp": 9}
    assert points_of(one) == [one]
    a, b = {"step": 1, "eval_loss": 0.9, "x": 1.0}, {"step": 2, "eval_loss": 0.8}
    packet = {**b, POINTS: [a, b], "trial_id": "t", "timestamp": 9, "gpus": 0.0}
    assert points_of(packet) == [
        {"trial_id": "t", "timestamp": 9, "gpus": 0.0, **a},
        {"trial_id": "t", "timestamp": 9, "gpus": 0.0, **b},
    ]


def test_mlflow_gets_every_report_of_a_packet_with_its_own_step() -> None:
    a, b = _metrics(10), _metrics(20)
    packet = {**b, POINTS: [a, b], "timestamp": 7, "trial_id": "t", "training_iteration": 2}
    got = sorted((m.key, m.step, m.value, m.timestamp) for m in metric_points(packet))
    want = sorted(
        (m.key, m.step, m.value, m.timestamp)
        for p in (a, b)
        for m in metric_points({**p, "timestamp": 7})
    )
    assert got == want and len(got) == 4  # train_loss and eval_loss at steps 10 and 20
    assert POINTS not in {m.key for m in metric_points(packet)}


# ---- a packed run folder reads as the unpacked one -------------------------------------------
TUNE = {"time_total_s": 1.0, "done": False, "pid": 7, "node_ip": "127.0.0.1", "date": "d"}


def _folder(root: Path, packed: bool) -> Path:
    trials = {
        "aaaa0001": ({"batch_size": 8, "lr": 0.1, "seed": 0}, 7, "reached"),
        "aaaa0002": ({"batch_size": 32, "lr": 0.2, "seed": 0}, 5, "not_reached"),
    }
    for tid, (cfg, n, final) in trials.items():
        d = root / f"fn_{tid}_0"
        d.mkdir(parents=True)
        reports = []
        for k in range(1, n + 1):
            m = {"step": 10 * k, "examples": 10 * k * cfg["batch_size"], "lr": cfg["lr"],
                 "train_loss": 1.0 / k, "status": final if k == n else "running"}  # fmt: skip
            if k % 2:  # a metric some reports lack
                m["eval_loss"] = 2.0 / k
            reports.append(m)
        reports[-1]["steps_to_target"] = 30 if final == "reached" else None
        groups = [reports[:1], reports[1:4], reports[4:]] if packed else [[r] for r in reports]
        lines = []
        for i, g in enumerate(groups):
            r = dict(g[-1]) | ({POINTS: g} if len(g) > 1 else {})
            dev = {"gpus": 0.0, "cpus": 1.0, "device_name": "CPU: test", "node_id": "n"}
            lines.append(r | dev | TUNE | {"trial_id": tid, "config": cfg,
                                           "training_iteration": i + 1})  # fmt: skip
        (d / "result.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


@pytest.mark.parametrize("reader", ["columns", "trial frames"])
def test_a_packed_folder_reads_as_the_same_frame_as_one_report_per_line(
    tmp_path: Path, reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _folder(tmp_path / "plain" / "sweep", packed=False)
    packed = _folder(tmp_path / "packed" / "sweep", packed=True)
    assert any(POINTS in json.loads(x) for f in packed.rglob("result.json")
               for x in f.read_text().splitlines())  # fmt: skip
    if reader == "trial frames":  # the reader of unusual folders gives the same frame

        def unusual(self, results):
            raise load_ray._Unusual("test")

        monkeypatch.setattr(load_ray._ColumnReader, "read", unusual)
    want, got = load_ray_folder(plain), load_ray_folder(packed)
    assert len(got) == 12 and POINTS not in got.columns
    pd.testing.assert_frame_equal(got, want)
    assert got.attrs == want.attrs


# ---- the scheduler judges a packet report by report ------------------------------------------
def _plateau_scheduler(tmp_path: Path, mode: str = "cascade") -> PerBatchSizeScheduler:
    # the plateau rule alone (a cascade: no ASHA; no lag rule), judged from step 2 * 20 = 40 on
    job = parse_job({
        "name": "pk", "workload": "nqm_sgd", "batch_sizes": [16],
        "options": {"dim": 10, "noise_scale": 1.0, "exponent": 1.0, "s0": 1.0},
        "lr_search": {"min": 1e-3, "max": 2.0, "trials_per_batch_size": 4, "confirm_seeds": 0,
                      mode: True, "lag_stop": 0},
        "target": {"metric": "eval_loss", "value": 0.05}, "budget": {"max_steps": 6000},
        "eval_every": 4, "early_stopping": {"enabled": True, "plateau": 0.01},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'm.db'}"}, "storage": str(tmp_path / "runs"),
    })  # fmt: skip
    return PerBatchSizeScheduler(job, SweepSearcher(job, None, {16: 6000}, None), 6000)


def _flat(step: int) -> dict:
    return {"step": step, "status": "running", "eval_loss": 0.08, "lr": 0.1}  # stuck above 0.05


def test_a_rule_that_fires_mid_packet_censors_at_that_report(tmp_path: Path) -> None:
    trial = SimpleNamespace(trial_id="flat", config={"study": "bs16-seed0", "batch_size": 16,
                                                     "seed": 0})  # fmt: skip
    # one report per result: the plateau rule stops the trial at step 40
    s = _plateau_scheduler(tmp_path)
    step = next(k for k in range(4, 64, 4)
                if s.on_trial_result(None, trial, _flat(k)) == TrialScheduler.STOP)  # fmt: skip
    assert step == 40
    assert s.searcher.censored == {"flat": 40.0}
    # the same reports in packets: the packet holding step 40 stops it, censored at 40, not at
    # the packet's last step (60); the reports after 40 are not judged
    s = _plateau_scheduler(tmp_path)
    first = [_flat(k) for k in range(4, 28, 4)]
    assert s.on_trial_result(None, trial, {**first[-1], POINTS: first}) == TrialScheduler.CONTINUE
    rest = [_flat(k) for k in range(28, 64, 4)]
    assert s.on_trial_result(None, trial, {**rest[-1], POINTS: rest}) == TrialScheduler.STOP
    assert s.searcher.censored == {"flat": 40.0}
    assert s.curves["flat"][0][-1] == 40


def test_a_packet_that_ends_the_trial_still_stops_it_where_a_rule_fired(tmp_path: Path) -> None:
    # the trial spent its budget in the window after the report the plateau rule fires at:
    # judged as if each report had come alone, it is stopped and censored at that report (a
    # slower trial, one report per packet, would have been), so the search's decisions do not
    # depend on how many reports a packet holds
    trial = SimpleNamespace(trial_id="flat", config={"study": "bs16-seed0", "batch_size": 16,
                                                     "seed": 0})  # fmt: skip
    reports = [_flat(k) for k in range(4, 64, 4)]
    reports[-1] = reports[-1] | {"status": "not_reached"}
    alone = _plateau_scheduler(tmp_path / "alone")
    for r in reports:
        if alone.on_trial_result(None, trial, r) == TrialScheduler.STOP:
            break
    packed = _plateau_scheduler(tmp_path / "packed")
    assert packed.on_trial_result(None, trial, {**reports[-1], POINTS: reports}) == (
        TrialScheduler.STOP
    )
    assert packed.searcher.censored == alone.searcher.censored == {"flat": 40.0}
    assert packed.stopped == alone.stopped == {"flat"}


def test_the_parallel_search_stops_a_packet_where_a_rule_fired_as_the_others(
    tmp_path: Path,
) -> None:
    # On its virtual clock the parallel search judges a packet report by report too: a trial
    # that went on to reach the target in the packet holding the report the plateau rule fires
    # at (40) is stopped and censored at 40, as it would be had each report come alone, and its
    # result ends there (what it ran past 40 is spent, not its result)
    reports = [_flat(k) for k in range(4, 60, 4)]
    reports.append({"step": 60, "status": "reached", "eval_loss": 0.04, "steps_to_target": 60})
    s = _plateau_scheduler(tmp_path, mode="parallel")
    trial = SimpleNamespace(trial_id="t", config=s.searcher.suggest("t"))
    packet = {**reports[-1], POINTS: reports}
    assert s.on_trial_result(None, trial, packet) == TrialScheduler.STOP
    assert s.stopped == {"t"} and s.searcher.censored == {"t": 40.0}
    s.trial_ended("t", packet)  # Tune's stop: nothing more for the search
    s.searcher.on_trial_complete("t", packet)
    record = s.searcher.records["t"]
    out = record["outcome"]
    assert out["status"] == "stopped_early" and out["steps_to_target"] is None
    assert out["censored_at"] == 40.0 and out["curve"][-1][0] == 40
    assert record["row"]["steps_run"] == 40 and s.searcher.settled_step("t") == 40
    # the same reports one at a time: the same record
    alone = _plateau_scheduler(tmp_path / "alone", mode="parallel")
    trial = SimpleNamespace(trial_id="t", config=alone.searcher.suggest("t"))
    for r in reports:
        if alone.on_trial_result(None, trial, r) == TrialScheduler.STOP:
            break
    assert alone.searcher.records["t"]["outcome"] == out


def test_the_searcher_folds_in_every_report_of_a_packet(tmp_path: Path) -> None:
    s = _plateau_scheduler(tmp_path)
    reports = [{"step": k, "status": "running", "eval_loss": v}
               for k, v in ((4, 0.9), (8, 0.2), (12, 0.4))]  # fmt: skip
    s.searcher.on_trial_result("t", {**reports[-1], POINTS: reports})
    assert s.searcher.curves["t"] == [(4.0, 0.9), (8.0, 0.2), (12.0, 0.4)]
    assert s.searcher.best_metric["t"] == 0.2  # not the packet's top level (0.4)


def _callback_on_sqlite(tmp_path: Path, records: dict, settled=None) -> tuple:
    """The sweep's MLflow callback and writer on a real SQLite store, a trial "t" started:
    (client, tracker, writer, callback, trial)."""
    from mlflow.tracking import MlflowClient

    from tune_jobs.mlflow_writer import MlflowWriter
    from tune_jobs.tracking import MlflowCallback, Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("packets")
    tracker = Tracker(uri, exp, client.create_run(exp).info.run_id, {})
    tracker.fresh = True
    writer = MlflowWriter(tracker, tmp_path / "spill.jsonl", linger_s=0.1)
    cb = MlflowCallback(writer, tracker, records, settled)
    trial = SimpleNamespace(trial_id="t", config={"batch_size": 8, "lr": 0.1}, last_result=None)
    cb.on_trial_start(0, [], trial)
    return client, tracker, writer, cb, trial


def test_the_mlflow_callback_queues_every_report_of_a_packet_once(tmp_path: Path) -> None:
    """The sweep's callback and writer on a real SQLite store (the sweep's end would also
    fill gaps from result.json, so tests/test_sweep.py cannot tell the callback missed some)."""
    client, tracker, writer, cb, trial = _callback_on_sqlite(tmp_path, {})

    def packet(steps, loss=None):
        points = [_metrics(k) | ({"train_loss": loss} if loss else {}) for k in steps]
        return {**points[-1], POINTS: points, "timestamp": 5, "device_name": "CPU: x"}

    cb.on_trial_result(0, [], trial, _metrics(10) | {"timestamp": 5})
    cb.on_trial_result(0, [], trial, packet([20, 30, 40]))
    # restored from a checkpoint at step 20: 30 and 40 again (MLflow keeps the first report)
    cb.on_trial_result(0, [], trial, packet([30, 40, 50], loss=0.02))
    assert writer.close(timeout_s=60)
    hist = client.get_metric_history(tracker.runs["t"], "train_loss")
    assert sorted((m.step, m.value) for m in hist) == [(k, 1 / k) for k in (10, 20, 30, 40, 50)]


def test_the_mlflow_callback_logs_a_clock_trials_result_as_the_search_ended_it(
    tmp_path: Path,
) -> None:
    """The parallel search's virtual clock settles a trial's reports later than Tune delivers
    them, and may end it at an earlier step: the callback logs a report once settled, logs
    none past the record's end, and ends the run once the record exists (real SQLite store)."""
    records: dict = {}
    settled = {"t": 10.0}
    client, tracker, writer, cb, trial = _callback_on_sqlite(
        tmp_path, records, lambda tid: settled.get(tid, -math.inf)
    )
    points = [_metrics(k) for k in (10, 20, 30, 40)]
    cb.on_trial_result(0, [], trial, {**points[-1], POINTS: points, "timestamp": 5})
    assert [int(p["step"]) for p in cb.waiting["t"]] == [20, 30, 40]  # 10 logged
    settled["t"] = 20.0
    cb.on_step_end(0, [])
    assert [int(p["step"]) for p in cb.waiting["t"]] == [30, 40]
    cb.on_trial_complete(0, [], trial)  # Tune's end, before the search ended it: it waits
    assert "t" in cb.ends
    records["t"] = {"at": 25.0, "status": "stopped_early", "objective": 3.0,
                    "row": {"steps_run": 30, "steps_to_target": None}}  # fmt: skip
    cb.on_step_end(0, [])
    assert not cb.ends and not cb.waiting
    assert writer.close(timeout_s=60)
    run = client.get_run(tracker.runs["t"])
    hist = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in hist) == [10, 20, 30]  # none past the end (30)
    assert run.data.tags["critbatch.status"] == "stopped_early" and run.info.status == "FINISHED"


def test_the_search_hears_a_stopped_trial_as_tune_saw_it_whatever_its_packets(
    tmp_path: Path,
) -> None:
    # a fast trial whose packet runs past the report the plateau rule fires at (step 40) to its
    # own end, reached at 60: the search hears it stopped at 40 with the best metric up to 40,
    # exactly as when each report came alone (measured on the quickstart: hearing the packet's
    # end moved B_crit from 69.2 to 79.6)
    reports = [_flat(k) for k in range(4, 60, 4)]
    reports.append({"step": 60, "status": "reached", "eval_loss": 0.04, "steps_to_target": 60})
    records = []
    for arm in ("alone", "packed"):
        s = _plateau_scheduler(tmp_path / arm)
        cfg = s.searcher.suggest("t")
        trial = SimpleNamespace(trial_id="t", config=cfg)
        packets = [[r] for r in reports] if arm == "alone" else [reports]
        for pts in packets:
            last = pts[-1] if len(pts) == 1 else {**pts[-1], POINTS: pts}
            if s.on_trial_result(None, trial, last) == TrialScheduler.STOP:
                break
            s.searcher.on_trial_result("t", last)  # Tune: a result the scheduler let through
        s.searcher.on_trial_complete("t", last)  # Tune: the last result it took
        records.append(s.searcher.records["t"])
        assert not s.searcher.stopped_at  # released with the trial
    alone, packed = records
    assert packed["outcome"] == alone["outcome"]
    assert packed["status"] == alone["status"] == "stopped_early"
    assert packed["outcome"]["steps_run"] == 40 and packed["outcome"]["censored_at"] == 40
    assert packed["outcome"]["best_metric"] == 0.08  # not the packet's 0.04 after the stop
