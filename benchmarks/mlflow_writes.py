"""Reports per second the Tune driver sustains with MLflow tracking: the background writer
(:mod:`tune_jobs.mlflow_writer`, the callback only enqueues) against the synchronous flush
it replaced (the callback buffered points and sent them with ``log_batch`` from inside
Tune's event loop every 2 s and at each trial's end), side by side in one run.

Six arms (``MODES``). With one Tune result per report (the behaviour before trials coalesced
reports): Tune alone without MLflow (the ceiling), the synchronous flush, the writer as first
built (each request sent as soon as something was queued) and the writer gathering
``LINGER_S`` between requests. With trials that send their reports through the sweep's own
:class:`tune_jobs.trainable.ReportCoalescer` (a packet per ``REPORT_WINDOW_S``): Tune alone
(``tune-coalesced``) and the writer (``writer-coalesced``). Every arm runs the same real Tune
experiment on one local Ray: ``--trials`` function trials,
``--concurrency`` at a time, each reporting ``--reports`` times as fast as it can (4 metrics
per report, like a fast trial evaluating every few steps), with Tune's JSON logger and an
MLflow child run per trial in a fresh SQLite store. Measured per arm: reports (points, not
Tune results) per second over the whole ``fit`` (and the writer's drain after it, counted in
the wall time) and while ``--concurrency`` trials were in flight at once (:func:`sustained`:
without the Ray workers' start, seconds on 2 cores, that bounds short arms), the Tune results
that carried them, the time the MLflow callback spent inside Tune's loop per report, Tune's "callbacks.on_trial_result took" warnings, and the points
MLflow holds at the end (must be every one).

    uv run --frozen python benchmarks/mlflow_writes.py               # 16 trials x 1000 reports
    uv run --frozen python benchmarks/mlflow_writes.py --trials 4 --reports 100   # smoke test
    # the driver's capacity: 8 trials at once that wait 5 ms per report (GPU-bound trials)
    uv run --frozen python benchmarks/mlflow_writes.py --concurrency 8 --num-cpus 8 --sleep-ms 5
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tune_jobs.sweep  # noqa: E402,F401  (sets Tune's env before ray.tune is imported)


def fast_trial(config):
    from ray import tune

    from tune_jobs.trainable import ReportCoalescer

    pause = config.get("sleep_s", 0.0)
    # "coalesce": reports go through the sweep's own ReportCoalescer (a packet of them per
    # REPORT_WINDOW_S), else one tune.report per report (the behaviour before it)
    report = ReportCoalescer(lambda r, c=None: tune.report(r)) if config["coalesce"] else None
    for step in range(1, config["reports"] + 1):
        if pause:
            time.sleep(pause)  # a GPU-bound trial waits on its device between reports
        m = {"step": step, "train_loss": 1.0 / step, "eval_loss": 2.0 / step,
             "eval_accuracy": 1 - 1.0 / step, "lr": config["lr"]}  # fmt: skip
        if report is None:
            tune.report(m)
        else:
            report(m)
    if report is not None:
        report.flush()


from ray.tune import Callback  # noqa: E402

from analysis.packets import points_of  # noqa: E402
from tune_jobs.mlflow_writer import LINGER_S  # noqa: E402
from tune_jobs.tracking import MlflowCallback, metric_points  # noqa: E402

# Arms: Tune alone (no MLflow: the ceiling), the synchronous flush, the writer sending what
# it has as soon as it has it (as first built), the writer gathering LINGER_S between requests;
# all with one Tune result per report (before tune_jobs.trainable.ReportCoalescer). Then Tune
# alone and the writer with trials that coalesce reports (a packet per REPORT_WINDOW_S).
MODES = ("tune", "sync", "writer-nolinger", "writer", "tune-coalesced", "writer-coalesced")
SPENT = {"s": 0.0}  # seconds the MLflow callback spent in on_trial_result (Tune's loop)
RESULTS: list[tuple[float, str, int]] = []  # each Tune result: (when, trial, its reports)


class ResultCounter(Callback):
    def on_trial_result(self, iteration, trials, trial, result, **info):
        RESULTS.append((time.perf_counter(), trial.trial_id, len(points_of(result))))


def sustained(results: list[tuple[float, str, int]], concurrency: int) -> float | None:
    """Reports/s the driver delivered while ``concurrency`` trials were in flight (between a
    trial's first and last result): the driver's rate with the load it was asked to carry,
    without the trials' start (a Ray worker each: seconds on 2 cores) and the sweep's tail.
    None when that many never were in flight together for 1 s."""
    spans: dict[str, list[float]] = {}
    for t, tid, _ in results:
        spans.setdefault(tid, [t, t])[1] = t
    edges = sorted({t for span in spans.values() for t in span})
    full = [(a, b) for a, b in zip(edges, edges[1:], strict=False)
            if sum(s[0] <= a and b <= s[1] for s in spans.values()) >= concurrency]  # fmt: skip
    seconds = sum(b - a for a, b in full)
    if seconds < 1.0:
        return None
    n = sum(k for t, _, k in results if any(a < t <= b for a, b in full))
    return n / seconds


class SyncFlushCallback(Callback):
    """The replaced behaviour: points buffered per trial, sent from Tune's loop every 2 s."""

    def __init__(self, tracker, every_s: float = 2.0):
        self.tracker, self.every_s = tracker, every_s
        self.pending: dict[str, list] = {}
        self.last = 0.0

    def on_trial_start(self, iteration, trials, trial, **info):
        self.tracker.ensure_child(trial.trial_id, str(trial), self.tracker.params_for(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        t = time.perf_counter()
        self.pending.setdefault(trial.trial_id, []).extend(metric_points(result))
        if time.time() - self.last > self.every_s:
            self.last = time.time()
            self.flush()
        SPENT["s"] += time.perf_counter() - t

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.flush()
        self.tracker.end_run(trial.trial_id, "not_reached", [], {})

    def flush(self):
        for tid, pts in self.pending.items():
            for i in range(0, len(pts), 1000):
                self.tracker.client.log_batch(self.tracker.runs[tid], metrics=pts[i : i + 1000])
        self.pending = {}


class TimedWriterCallback(MlflowCallback):
    def on_trial_result(self, iteration, trials, trial, result, **info):
        t = time.perf_counter()
        super().on_trial_result(iteration, trials, trial, result, **info)
        SPENT["s"] += time.perf_counter() - t


class WarningCounter(logging.Handler):
    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record):
        if "on_trial_result" in record.getMessage():
            self.count += 1
            print(f"  Tune: {record.getMessage()[:120]}", flush=True)  # which step, how long


def arm(mode: str, trials: int, reports: int, concurrency: int, sleep_s: float = 0.0) -> dict:
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from tune_jobs.mlflow_writer import MlflowWriter
    from tune_jobs.tracking import Tracker

    tmp = Path(tempfile.mkdtemp(prefix=f"mlflow-writes-{mode}-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(mode)
    parent = client.create_run(exp).info.run_id
    tracker = Tracker(uri, exp, parent, {"target_metric": "eval_loss"})
    tracker.fresh = True
    writer, callbacks = None, []
    if mode.startswith("writer"):
        linger = 0.0 if mode == "writer-nolinger" else LINGER_S
        writer = MlflowWriter(tracker, tmp / "spill.jsonl", linger_s=linger)
        callbacks = [TimedWriterCallback(writer, tracker, {})]
    elif mode == "sync":
        callbacks = [SyncFlushCallback(tracker)]
    SPENT["s"] = 0.0
    RESULTS.clear()
    warnings = WarningCounter()
    logging.getLogger("ray.tune.utils.util").addHandler(warnings)
    t = time.perf_counter()
    tune.Tuner(
        fast_trial,
        param_space={
            "lr": tune.grid_search([0.1 * (i + 1) for i in range(trials)]),
            "batch_size": 64,
            "reports": reports,
            "sleep_s": sleep_s,
            "coalesce": mode.endswith("-coalesced"),
        },
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
        run_config=tune.RunConfig(
            storage_path=str(tmp / "runs"),
            verbose=0,
            callbacks=[JsonLoggerCallback(), ResultCounter(), *callbacks],
        ),  # fmt: skip
    ).fit()
    fit_s = time.perf_counter() - t
    if writer is not None:
        assert writer.close(timeout_s=600)
    wall = time.perf_counter() - t
    logging.getLogger("ray.tune.utils.util").removeHandler(warnings)
    runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1000)
    points = sum(len(client.get_metric_history(r.info.run_id, "train_loss")) for r in runs)
    n = trials * reports  # reports (points), whatever number of Tune results carried them
    complete = "-" if mode.startswith("tune") else points == n  # no MLflow in Tune's arms
    assert sum(k for _, _, k in RESULTS) == n  # every report reached the driver
    return {"mode": mode, "reports": n, "results": len(RESULTS), "fit_s": fit_s, "wall_s": wall,
            "sustained": sustained(RESULTS, min(concurrency, trials)),
            "reports_per_s": n / wall, "loop_ms_per_report": 1000 * SPENT["s"] / n,
            "tune_warnings": warnings.count, "mlflow_points": points,
            "complete": complete}  # fmt: skip


def loop_only(mode: str, trials: int, reports: int) -> dict:
    """The same two callbacks driven directly, without Ray (``--no-ray``): the driver-side cost
    alone, reports interleaved across trials as Tune delivers them."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from tune_jobs.mlflow_writer import MlflowWriter
    from tune_jobs.tracking import Tracker

    tmp = Path(tempfile.mkdtemp(prefix=f"mlflow-writes-{mode}-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(mode)
    parent = client.create_run(exp).info.run_id
    tracker = Tracker(uri, exp, parent, {"target_metric": "eval_loss"})
    tracker.fresh = True
    writer = None
    if mode.startswith("writer"):
        linger = 0.0 if mode == "writer-nolinger" else LINGER_S
        writer = MlflowWriter(tracker, tmp / "spill.jsonl", linger_s=linger)
    cb = TimedWriterCallback(writer, tracker, {}) if writer else SyncFlushCallback(tracker)
    SPENT["s"] = 0.0
    ts = [SimpleNamespace(trial_id=f"t{i}", config={"lr": 0.1, "batch_size": 64}, last_result={}, error_file=None)
          for i in range(trials)]  # fmt: skip
    t = time.perf_counter()
    for tr in ts:
        cb.on_trial_start(0, ts, tr)
    for step in range(1, reports + 1):
        for tr in ts:
            r = {"step": step, "timestamp": time.time(), "train_loss": 1.0 / step,
                 "eval_loss": 2.0 / step, "eval_accuracy": 1 - 1.0 / step, "lr": 0.1}  # fmt: skip
            cb.on_trial_result(0, ts, tr, r)
    for tr in ts:
        cb.on_trial_complete(0, ts, tr)
    loop_s = time.perf_counter() - t
    if writer is not None:
        assert writer.close(timeout_s=600)
    wall = time.perf_counter() - t
    points = sum(
        len(client.get_metric_history(tracker.runs[tr.trial_id], "train_loss")) for tr in ts
    )
    n = trials * reports
    return {"mode": mode, "reports": n, "wall_s": wall, "reports_per_s": n / loop_s,
            "drained_per_s": n / wall, "loop_ms_per_report": 1000 * SPENT["s"] / n,
            "tune_warnings": "-", "complete": points == n}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--reports", type=int, default=1000, help="reports per trial")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--sleep-ms", type=float, default=0.0,
                    help="each trial sleeps this long before each report (a GPU-bound trial "
                    "waits on its device; its CPU is free for the driver); 0: report as fast "
                    "as it can")  # fmt: skip
    ap.add_argument("--no-ray", action="store_true", help="drive the callbacks directly")
    args = ap.parse_args()
    if args.no_ray:
        rows = [
            loop_only(m, args.trials, args.reports) for m in ("sync", "writer-nolinger", "writer")
        ]
        print(f"# {platform.node()} {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}; "
              f"no Ray; {args.trials} trials x {args.reports} reports, interleaved")  # fmt: skip
        print(
            "| mode | reports | reports/s in the loop | reports/s incl. drain | ms in the loop per report | MLflow complete |"
        )
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['mode']} | {r['reports']} | {r['reports_per_s']:.0f} | {r['drained_per_s']:.0f} | "
                  f"{r['loop_ms_per_report']:.3f} | {r['complete']} |")  # fmt: skip
        return
    import ray

    from tune_jobs.preflight import init_ray

    init_ray(None, args.num_cpus)  # retries a slow start on a loaded host
    arm("writer-coalesced", 2, 20, args.concurrency)  # warm-up: worker start, imports
    sleep_s = args.sleep_ms / 1000
    rows = [arm(m, args.trials, args.reports, args.concurrency, sleep_s) for m in MODES]
    ray.shutdown()
    print(f"# {platform.node()} {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; "
          f"{args.trials} trials x {args.reports} reports, {args.concurrency} at a time, "
          f"{args.sleep_ms:g} ms sleep before each report")  # fmt: skip
    print(
        "| mode | reports | Tune results | fit s | wall s (+ MLflow drain) | reports/s (wall) | reports/s, all trials in flight | ms in Tune's loop per report | Tune warnings | MLflow points complete |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        full = "-" if r["sustained"] is None else f"{r['sustained']:.0f}"
        print(f"| {r['mode']} | {r['reports']} | {r['results']} | {r['fit_s']:.1f} | "
              f"{r['wall_s']:.1f} | {r['reports_per_s']:.0f} | {full} | {r['loop_ms_per_report']:.3f} | "
              f"{r['tune_warnings']} | {r['complete']} |")  # fmt: skip
    by = {r["mode"]: r["reports_per_s"] for r in rows}
    print(f"writer / sync reports/s: {by['writer'] / by['sync']:.2f}x; "
          f"writer / Tune alone: {by['writer'] / by['tune']:.2f}x; "
          f"writer-coalesced / writer: {by['writer-coalesced'] / by['writer']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
