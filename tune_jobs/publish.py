"""What a sweep's parent run gets beyond the trial records: the metrics snapshot, the report.

Both are written from here (the tune_jobs side); :mod:`analysis.loaders` reads them back, with
the names both sides share in :mod:`analysis.mlflow_layout`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from mlflow.tracking import MlflowClient

from analysis.loaders import (
    Fetch,
    fetch_histories,
    find_parent_run,
    find_trial_runs,
    open_client,
    resolve_tracking_uri,
)
from analysis.mlflow_layout import REPORT_ARTIFACTS, SNAPSHOT_DIR, SNAPSHOT_FILE, SNAPSHOT_TAG


def write_metrics_snapshot(client: MlflowClient, parent_run_id: str, fetch: Fetch = "auto") -> dict:
    """Every logged point of the sweep's trial runs as one artifact on its parent run,
    ``critbatch/metrics.parquet`` (columns as :func:`fetch_histories` returns them, NaN kept),
    then the parent tag ``critbatch.metrics_snapshot`` with a summary, which is returned.

    Read back from the store (the fastest fetch it allows), so it holds exactly what MLflow
    holds. Written when a sweep ends and by ``critbatch sync``; loading uses it only for runs
    with nothing logged since (:func:`fresh_run_ids`), so an old snapshot is never wrong, only
    less useful."""
    parent = client.get_run(parent_run_id)
    runs = find_trial_runs(client, parent)
    history = fetch_histories(client, runs, fetch)
    history = history.astype({"step": "int64", "timestamp": "int64", "value": "float64"})
    with tempfile.TemporaryDirectory(prefix="critbatch-snapshot-") as tmp:
        path = Path(tmp) / SNAPSHOT_FILE
        history.to_parquet(path, index=False, compression="zstd")  # pyarrow: an mlflow dependency
        client.log_artifact(parent_run_id, str(path), SNAPSHOT_DIR)
    summary = {"path": f"{SNAPSHOT_DIR}/{SNAPSHOT_FILE}", "runs": len(runs),
               "points": len(history), "written_ms": int(time.time() * 1000)}  # fmt: skip
    client.set_tag(parent_run_id, SNAPSHOT_TAG, json.dumps(summary))
    return summary


def log_report_artifacts(
    source: str | os.PathLike,
    files: Iterable[str | os.PathLike],
    tracking_uri: str | None = None,
    artifact_path: str = REPORT_ARTIFACTS,
) -> str | None:
    """Log report files on the sweep's parent run when ``source`` is in MLflow; return that
    run's id. A folder or CSV source has no run to log to: nothing is done, None returned."""
    if Path(source).exists():
        return None
    files = [Path(f) for f in files]
    if absent := [str(f) for f in files if not f.exists()]:
        raise FileNotFoundError(f"report files not found: {absent}")
    uri = resolve_tracking_uri(tracking_uri)
    parent = find_parent_run(str(source), uri)
    client = open_client(uri)
    for f in files:
        if f.is_dir():
            client.log_artifacts(parent.info.run_id, str(f), f"{artifact_path}/{f.name}")
        else:
            client.log_artifact(parent.info.run_id, str(f), artifact_path)
    return parent.info.run_id
