"""The sweep's metrics snapshot: written at a sweep's end and by sync, used by `load` only for
trial runs it provably holds whole, on a real `mlflow server`, real SQLite and a real sweep."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from conftest import MlflowServer, free_port
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.loaders import (
    fetch_histories,
    find_parent_run,
    find_trial_runs,
    fresh_run_ids,
    load,
    read_metrics_snapshot,
)
from analysis.mlflow_layout import SNAPSHOT_TAG
from benchmarks.load_mlflow import log_sweep
from tune_jobs.publish import write_metrics_snapshot

KEY = ["run_id", "key", "step", "timestamp"]


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(KEY).reset_index(drop=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real `mlflow server` for this module (its start costs minutes on 2 busy cores)."""
    srv = MlflowServer(tmp_path_factory.mktemp("snapshot-server")).start(timeout=300)
    yield srv
    srv.stop()


def _all_paths_equal(name: str, uri: str) -> pd.DataFrame:
    """load() (snapshot where fresh) == bulk fetch (snapshot ignored) == the naive loop."""
    naive = load(name, uri, fetch="per-metric", snapshot=False)
    pd.testing.assert_frame_equal(load(name, uri, snapshot=False), naive, check_exact=True)
    pd.testing.assert_frame_equal(load(name, uri), naive, check_exact=True)
    return naive


@pytest.mark.slow
def test_snapshot_is_exact_and_stale_runs_are_refetched(server):
    client = MlflowClient(server.uri)
    parent_id = log_sweep(client, "snap", trials=12, points=30, workers=2)
    summary = write_metrics_snapshot(client, parent_id)
    parent = find_parent_run("snap", server.uri)
    runs = find_trial_runs(client, parent)
    assert json.loads(parent.data.tags[SNAPSHOT_TAG]) == summary
    assert [a.path for a in client.list_artifacts(parent_id, "critbatch")] == [summary["path"]]

    # The artifact holds exactly the store's points, NaN included, and every run is fresh.
    snap = read_metrics_snapshot(client, parent)
    naive_points = _sorted(fetch_histories(client, runs, "per-metric"))
    assert (summary["runs"], summary["points"]) == (12, len(naive_points))
    assert snap["value"].isna().sum() == 4  # the last train_loss of the 4 diverged trials
    pd.testing.assert_frame_equal(_sorted(snap), naive_points, check_exact=True, check_dtype=False)
    assert fresh_run_ids(runs, snap) == {r.info.run_id for r in runs}
    before = _all_paths_equal("snap", server.uri)

    # Points of fresh runs come from the snapshot, not the server: a value changed in the
    # artifact below the latest step (which the freshness check cannot see) shows in load().
    tampered = snap.copy()
    first = tampered.index[(tampered["key"] == "eval_loss") & (tampered["step"] == 10)][0]
    tampered.loc[first, "value"] = -1.0
    path = server.root / "tampered" / "metrics.parquet"
    path.parent.mkdir()
    tampered.to_parquet(path, index=False)
    client.log_artifact(parent_id, str(path), "tampered")
    client.set_tag(
        parent_id, SNAPSHOT_TAG, json.dumps(summary | {"path": "tampered/metrics.parquet"})
    )
    assert (load("snap", server.uri)["eval_loss"] == -1.0).sum() == 1
    client.set_tag(parent_id, SNAPSHOT_TAG, json.dumps(summary))

    # Logged after the snapshot: a point past the end of one run; a resumed report at another
    # run's last step (same step, later timestamp); a new trial run. Each is fetched again.
    grown, replayed = runs[0].info.run_id, runs[1].info.run_id
    client.log_batch(grown, metrics=[Metric("train_loss", 0.5, 10**13, 10_000)])
    last = max(client.get_metric_history(replayed, "eval_loss"), key=lambda m: m.step)
    client.log_batch(replayed, metrics=[Metric("eval_loss", 0.25, last.timestamp + 1, last.step)])
    exp = parent.info.experiment_id
    tags = {"mlflow.parentRunId": parent_id, "critbatch.role": "trial", "critbatch.trial_id": "new"}
    new = client.create_run(exp, tags=tags | {"critbatch.status": "running"}).info.run_id
    params = {"batch_size": 8, "lr": 0.1, "seed": 0}
    client.log_batch(new, [Metric("train_loss", math.nan, 1, 10)],
                     [Param(k, str(v)) for k, v in params.items()])  # fmt: skip
    runs = find_trial_runs(client, parent)
    runs_by_id = {r.info.run_id: r for r in runs}
    stale = set(runs_by_id) - fresh_run_ids(runs, snap)
    assert stale == {grown, replayed, new}
    after = _all_paths_equal("snap", server.uri)
    assert len(after) == len(before) + 2  # step 10,000 of `grown`, the new trial's step 10
    trial = runs_by_id[replayed].data.tags["critbatch.trial_id"]
    at = after.loc[(after["trial"] == trial) & (after["step"] == last.step), "eval_loss"]
    assert at.tolist() == [0.25]  # the replayed point is the later one, as on the naive path

    # Rewritten (as `critbatch sync` does), the snapshot covers every run again.
    write_metrics_snapshot(client, parent_id)
    parent = find_parent_run("snap", server.uri)
    snap = read_metrics_snapshot(client, parent)
    assert fresh_run_ids(runs, snap) == {r.info.run_id for r in runs}
    pd.testing.assert_frame_equal(load("snap", server.uri), after, check_exact=True)


def test_unreadable_snapshot_warns_and_fetches_everything(sqlite_uri):
    client = MlflowClient(sqlite_uri)
    parent_id = log_sweep(client, "broken", trials=4, points=5, workers=1)
    expected = load("broken", sqlite_uri, snapshot=False)
    client.set_tag(parent_id, SNAPSHOT_TAG, json.dumps({"path": "critbatch/absent.parquet"}))
    with pytest.warns(UserWarning, match=f"sweep {parent_id}: metrics snapshot unreadable"):
        got = load("broken", sqlite_uri)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


@pytest.mark.slow
def test_analyze_no_snapshot_never_reads_it(sqlite_uri, tmp_path):
    import warnings

    from tune_jobs.cli import main

    client = MlflowClient(sqlite_uri)
    parent_id = log_sweep(client, "nosnap", trials=8, points=5, workers=1)
    client.set_tag(parent_id, SNAPSHOT_TAG, json.dumps({"path": "critbatch/absent.parquet"}))
    args = ["analyze", "nosnap", "--tracking-uri", sqlite_uri, "--no-log-artifacts",
            "--target-metric", "eval_loss", "--target-value", "0.3"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*metrics snapshot unreadable.*")
        assert main([*args, "--out", str(tmp_path / "a"), "--no-snapshot"]) == 0
    with pytest.warns(UserWarning, match="metrics snapshot unreadable"):
        assert main([*args, "--out", str(tmp_path / "b")]) == 0


def test_snapshot_write_never_fails_the_sweep(monkeypatch, tmp_path, capsys):
    from tune_jobs.sweep import write_snapshot

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    dead = MlflowClient(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert write_snapshot(dead, "0" * 32, tmp_path) is None
    err = capsys.readouterr().err
    assert "could not write the MLflow metrics snapshot" in err
    assert f"critbatch sync {tmp_path}" in err


@pytest.mark.slow
def test_a_sweep_ends_with_its_snapshot_and_sync_rewrites_it(ray_local, tmp_path):
    from test_sweep import synthetic_job

    from tune_jobs.job_file import parse_job
    from tune_jobs.sweep import run_sweep, sync_sweep

    job = parse_job(synthetic_job(tmp_path, "snap-sweep", batch_sizes=[8, 64],
                                  lr_search={"min": 0.01, "max": 1.0, "trials_per_batch_size": 2, "confirm_seeds": 0}))  # fmt: skip
    res = run_sweep(job, progress=False)
    uri = job.tracking.uri
    client = MlflowClient(uri)
    parent = find_parent_run(res.parent_run_id, uri)
    runs = find_trial_runs(client, parent)
    summary = json.loads(parent.data.tags[SNAPSHOT_TAG])
    assert summary["runs"] == len(runs) == 4
    assert summary["points"] == len(fetch_histories(client, runs)) > 0
    assert fresh_run_ids(runs, read_metrics_snapshot(client, parent)) == {
        r.info.run_id for r in runs
    }
    expected = load(res.parent_run_id, uri, snapshot=False)
    pd.testing.assert_frame_equal(load(res.parent_run_id, uri), expected, check_exact=True)

    counts = sync_sweep(res.run_dir)
    assert counts == {"runs_created": 0, "points_sent": 0, "snapshot_points": summary["points"]}
    rewritten = json.loads(client.get_run(res.parent_run_id).data.tags[SNAPSHOT_TAG])
    assert rewritten["written_ms"] >= summary["written_ms"]
    pd.testing.assert_frame_equal(load(res.parent_run_id, uri), expected, check_exact=True)


def test_snapshot_written_in_chunks_holds_every_point(sqlite_uri, monkeypatch):
    """The snapshot is fetched and written a few runs at a time (a 10,000-trial sweep's points
    at once cost the driver ~0.9 GiB); in several row groups it holds exactly the points one
    fetch of every run gives."""
    import pyarrow.parquet as pq

    import tune_jobs.publish as publish

    monkeypatch.setattr(publish, "SNAPSHOT_CHUNK", 3)
    client = MlflowClient(sqlite_uri)
    parent_id = log_sweep(client, "chunks", trials=7, points=20, workers=1)
    summary = write_metrics_snapshot(client, parent_id)
    parent = find_parent_run("chunks", sqlite_uri)
    runs = find_trial_runs(client, parent)
    whole = _sorted(fetch_histories(client, runs, "per-metric"))
    assert summary["points"] == len(whole)
    snap = read_metrics_snapshot(client, parent)
    pd.testing.assert_frame_equal(_sorted(snap), whole, check_exact=True, check_dtype=False)
    local = client.download_artifacts(parent_id, summary["path"])
    assert pq.ParquetFile(local).num_row_groups == 3  # 3 + 3 + 1 runs
