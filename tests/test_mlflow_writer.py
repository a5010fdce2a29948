"""The background MLflow writer against a real `mlflow server` on 127.0.0.1 that stalls
(SIGSTOP: every request hangs until its timeout) and then recovers (SIGCONT): the queue stays
within its bound, the rest goes to the spill file, and once the server answers again MLflow
holds every point exactly once, with each run's status and end. No Ray: the writer alone.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import MlflowServer
from mlflow.tracking import MlflowClient

from tune_jobs.mlflow_writer import MlflowWriter
from tune_jobs.tracking import Tracker, metric_points

TRIALS, REPORTS = 3, 400  # 1,200 reports of 3 points each
BOUND = 50  # queued reports before the writer spills


def _report(step: int) -> dict:
    return {"step": step, "timestamp": 1_700_000_000 + step, "train_loss": 1.0 / step,
            "eval_loss": 2.0 / step, "lr": 0.1}  # fmt: skip


@pytest.mark.slow
def test_writer_spills_while_the_server_stalls_and_loses_nothing(tmp_path: Path) -> None:
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "3"  # a stalled request fails after 3 s
    (tmp_path / "srv").mkdir()
    server = MlflowServer(tmp_path / "srv").start(timeout=300)
    try:
        client = MlflowClient(server.uri)
        exp = client.create_experiment("writer")
        parent = client.create_run(exp, tags={"critbatch.role": "sweep"}).info.run_id
        tracker = Tracker(server.uri, exp, parent, {"target_metric": "eval_loss"})
        tracker.fresh = True
        writer = MlflowWriter(tracker, tmp_path / "spill.jsonl", queue_bound=BOUND)
        for t in range(TRIALS):
            writer.start(f"t{t}", f"trial-{t}", tracker.params_for({"batch_size": 8 << t}))
        time.sleep(3)  # the runs exist before the stall
        os.killpg(server.proc.pid, signal.SIGSTOP)
        try:
            peak = 0
            for step in range(1, REPORTS + 1):
                for t in range(TRIALS):
                    writer.put(("points", f"t{t}", metric_points(_report(step))))
                    peak = max(peak, writer.queue.qsize())
            for t in range(TRIALS):
                writer.put(("end", f"t{t}", "not_reached", [], {}))
            spilled = writer.spilled
            spill_bytes = (tmp_path / "spill.jsonl").stat().st_size
        finally:
            os.killpg(server.proc.pid, signal.SIGCONT)
        assert writer.close(timeout_s=300), "the writer did not drain once the server answered"
        # The bound held: what did not fit went to disk, not to the driver's memory.
        assert peak <= BOUND
        assert spilled >= TRIALS * REPORTS - BOUND and spill_bytes > 0
        assert not (tmp_path / "spill.jsonl").exists(), "the replayed spill is removed"
        runs = client.search_runs([exp], "tags.`critbatch.role` = 'trial'")
        assert sorted(r.data.tags["critbatch.trial_id"] for r in runs) == ["t0", "t1", "t2"]
        for r in runs:
            assert r.info.status == "FINISHED" and r.data.tags["critbatch.status"] == "not_reached"
            assert r.data.params["target_metric"] == "eval_loss"
            for key in ("train_loss", "eval_loss"):
                steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
                assert sorted(steps) == list(range(1, REPORTS + 1)), f"{key}: lost or doubled"
    finally:
        server.stop()
        os.environ.pop("MLFLOW_HTTP_REQUEST_TIMEOUT")


def test_the_writer_gathers_a_stream_of_reports_into_few_requests(tmp_path: Path) -> None:
    """Reports arriving one at a time (as Tune delivers them) go out in a few large
    ``log_batch`` requests, not one request each: on SQLite a request of 8 points cost 7 ms
    against 115 ms for 1,000, so sending each report as it came made the writer slower than
    the synchronous flush it replaced. A real SQLite store; every point arrives once."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("linger")
    parent = client.create_run(exp).info.run_id
    tracker = Tracker(uri, exp, parent, {"target_metric": "eval_loss"})
    tracker.fresh = True
    requests = []
    log_batch = tracker.client.log_batch

    def counted(run_id, metrics=(), **kw):
        requests.append(len(metrics))
        return log_batch(run_id, metrics=metrics, **kw)

    tracker.client.log_batch = counted  # counts the real requests; the store is real
    writer = MlflowWriter(tracker, tmp_path / "spill.jsonl", linger_s=0.5)
    writer.start("t0", "trial-0", tracker.params_for({"batch_size": 8}))
    reports = 300
    for step in range(1, reports + 1):  # ~1.5 s of reports, 5 ms apart
        writer.put(("points", "t0", metric_points(_report(step))))
        time.sleep(0.005)
    writer.put(("end", "t0", "not_reached", [], {}))
    assert writer.close(timeout_s=60)
    point_requests = [n for n in requests if n]
    assert sum(point_requests) == 3 * reports
    assert len(point_requests) <= 8, point_requests  # ~3 lingers' worth, not 300 requests
    (run,) = client.search_runs([exp], "tags.`critbatch.role` = 'trial'")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, reports + 1))


@pytest.mark.slow
def test_the_writes_benchmark_runs(tmp_path: Path) -> None:
    """``benchmarks/mlflow_writes.py --no-ray`` at a toy size: every arm ends with MLflow
    complete (the script broke once, unnoticed, when child runs began to need a batch size)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "mlflow_writes.py"), "--no-ray",
         "--trials", "2", "--reports", "20"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, TMPDIR=str(tmp_path)),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "True" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["sync", "writer-nolinger", "writer"]
