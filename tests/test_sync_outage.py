"""A real `mlflow server` on 127.0.0.1 killed mid-sweep and started again only after the
sweep: the sweep says so and reports itself unsynced (the CLI exits 1), keeps everything in
its run folder, and after `critbatch sync` the analysis of the sweep is the analysis of the
same sweep run while the server stayed up. Real Ray (local), Optuna, MLflow; no mocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import MlflowServer
from mlflow.tracking import MlflowClient
from test_cluster_multinode import synthetic_job, trial_rows
from test_faults import Injector, _rows_or_empty


def _job(tmp_path: Path, name: str, uri: str):
    return synthetic_job(
        tmp_path, name, uri,
        batch_sizes=[8, 32, 128],
        lr_search={"min": 0.1, "max": 0.8, "trials_per_batch_size": 2, "confirm_seeds": 0, "algorithm": "grid"},
        target={"metric": "eval_loss", "value": 0.3, "direction": "min"},
        budget={"max_steps": 60}, eval_every=5,
        options={"sleep_per_step": 0.05},
        tracking={"uri": uri, "experiment": name},
    )  # fmt: skip


def _analyze(parent: str, uri: str, out: Path) -> dict:
    from tune_jobs.cli import main

    assert main(["analyze", parent, "--tracking-uri", uri, "--out", str(out),
                 "--target-metric", "eval_loss", "--target-value", "0.3", "--bootstrap", "50"]) == 0  # fmt: skip
    return json.loads((out / "summary.json").read_text())


def _timed(key: str) -> bool:
    """Keys measured in seconds (and what is computed from them: cost, the recommendation):
    the two sweeps ran at different moments, so their clocks differ; their steps do not."""
    return (
        key == "recommendation"
        or key.endswith("_s")
        or any(w in key for w in ("time", "cost", "hours"))
    )


def _without_trial_ids(d):
    """A summary without the two sweeps' (random) Tune trial ids, and without the wall-clock
    figures (see _timed). The bootstrap draws trials in an order of their values, not of
    their ids, so its intervals (and its failed resamples) must match."""
    if isinstance(d, dict):
        return {k: _without_trial_ids(v) for k, v in d.items() if k != "trial" and not _timed(k)}
    if isinstance(d, list):
        return [_without_trial_ids(v) for v in d]
    return d


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_server_lost_mid_sweep_then_sync_analyzes_like_no_outage(
    tmp_path: Path, ray_local, capsys
) -> None:
    from tune_jobs.cli import main
    from tune_jobs.sweep import run_dir_of, run_sweep

    (tmp_path / "srv").mkdir()
    server = MlflowServer(tmp_path / "srv").start(timeout=300)
    try:
        steady = run_sweep(_job(tmp_path, "steady", server.uri), progress=False)
        assert steady.synced

        job = _job(tmp_path, "outage", server.uri)
        run_dir = run_dir_of(job)
        injector = Injector(
            lambda: sum(len(r) for r in _rows_or_empty(run_dir).values()) >= 3, server.stop
        )
        injector.start()
        lost = run_sweep(job, progress=False)
        injector.join(60)
        assert injector.error is None and injector.done_at is not None
        # The sweep ended without its server: it says so, and keeps everything for `sync`.
        assert not lost.synced
        printed = capsys.readouterr()
        assert f"critbatch sync {run_dir}" in printed.err
        assert "View run" not in printed.out + printed.err  # MLflow's links: not in the progress
        assert (run_dir / "trials.json").exists() and (run_dir / "finished.jsonl").exists()
        assert [t | {"trial_id": 0} for t in lost.trials] == [
            t | {"trial_id": 0} for t in steady.trials
        ]

        server.start(timeout=300)  # same port, same store
        assert main(["sync", str(run_dir)]) == 0
        client = MlflowClient(server.uri)
        parent = client.get_run(lost.parent_run_id)
        assert parent.info.status == "FINISHED"
        kids = client.search_runs(
            [lost.experiment_id], f"tags.`mlflow.parentRunId` = '{lost.parent_run_id}'"
        )
        ref = client.search_runs(
            [steady.experiment_id], f"tags.`mlflow.parentRunId` = '{steady.parent_run_id}'"
        )
        assert len(kids) == len(ref) == len(trial_rows(run_dir)) == job.total_trials
        for k in kids:  # params, status, objective and end, as a sweep that kept its server
            assert k.info.status == "FINISHED"
            assert set(k.data.params) == set(ref[0].data.params)
            assert {"objective", "eval_loss", "train_loss"} <= set(k.data.metrics)
            assert k.data.tags["critbatch.status"] in ("reached", "not_reached", "diverged")
        got = _analyze(lost.parent_run_id, server.uri, tmp_path / "report-outage")
        want = _analyze(steady.parent_run_id, server.uri, tmp_path / "report-steady")
        assert _without_trial_ids(got) == _without_trial_ids(want)
    finally:
        server.stop()
