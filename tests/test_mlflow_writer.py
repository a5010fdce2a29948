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
