"""What a sweep's parent run gets beyond the trial records: the metrics snapshot, the report,
the sweep's result (metrics and description); and the run a comparison of sweeps is logged to.

Both are written from here (the tune_jobs side); :mod:`analysis.loaders` reads them back, with
the names both sides share in :mod:`analysis.mlflow_layout`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from analysis.loaders import (
    Fetch,
    fetch_points,
    find_parent_run,
    open_client,
    resolve_tracking_uri,
    trial_run_pages,
)
from analysis.mlflow_layout import (
    COMPARE_ARTIFACTS,
    COMPARED_TAG,
    NOTE_TAG,
    REPORT_ARTIFACTS,
    ROLE_COMPARISON,
    ROLE_TAG,
    SNAPSHOT_COLUMNS,
    SNAPSHOT_DIR,
    SNAPSHOT_FILE,
    SNAPSHOT_TAG,
)

SNAPSHOT_CHUNK = 500  # trial runs fetched and written at a time (write_metrics_snapshot)
SNAPSHOT_PAGE = 250  # trial runs listed at a time: a page of 1,000 Run objects peaks ~65 MiB
SNAPSHOT_TYPES = dict(zip(SNAPSHOT_COLUMNS, ("string", "string", "int64", "int64", "float64"),
                          strict=True))  # fmt: skip


def write_metrics_snapshot(client: MlflowClient, parent_run_id: str, fetch: Fetch = "auto") -> dict:
    """Every logged point of the sweep's trial runs as one artifact on its parent run,
    ``critbatch/metrics.parquet`` (columns as :func:`fetch_histories` returns them, NaN kept),
    then the parent tag ``critbatch.metrics_snapshot`` with a summary, which is returned.

    Read back from the store (the fastest fetch it allows), so it holds exactly what MLflow
    holds. Written when a sweep ends and by ``critbatch sync``; loading uses it only for runs
    with nothing logged since (:func:`fresh_run_ids`), so an old snapshot is never wrong, only
    less useful."""
    import pyarrow as pa  # an mlflow dependency
    import pyarrow.parquet as pq

    parent = client.get_run(parent_run_id)
    wanted = []  # a page of Run objects at a time: ~205 MiB at 10,000 trials held at once
    for page in trial_run_pages(client, parent, SNAPSHOT_PAGE):
        wanted += [(r.info.run_id, sorted(r.data.metrics)) for r in page]
        del page
    points = 0
    with tempfile.TemporaryDirectory(prefix="critbatch-snapshot-") as tmp:
        path = Path(tmp) / SNAPSHOT_FILE
        # SNAPSHOT_CHUNK runs at a time, one row group each: a 10,000-trial sweep's 1.4M points
        # fetched at once cost the driver ~0.9 GiB at the sweep's end.
        schema = pa.schema([(c, pa.type_for_alias(t)) for c, t in SNAPSHOT_TYPES.items()])
        numeric = {c: t for c, t in SNAPSHOT_TYPES.items() if t != "string"}
        with pq.ParquetWriter(path, schema, compression="zstd") as out:
            for i in range(0, max(len(wanted), 1), SNAPSHOT_CHUNK):
                part = fetch_points(client, dict(wanted[i : i + SNAPSHOT_CHUNK]), fetch)
                part = part.astype(numeric)
                out.write_table(pa.Table.from_pandas(part, schema, preserve_index=False))
                points += len(part)
        client.log_artifact(parent_run_id, str(path), SNAPSHOT_DIR)
    summary = {"path": f"{SNAPSHOT_DIR}/{SNAPSHOT_FILE}", "runs": len(wanted),
               "points": points, "written_ms": int(time.time() * 1000)}  # fmt: skip
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


def log_sweep_numbers(
    client: MlflowClient, parent_run_id: str, metrics: dict[str, float], description: str
) -> None:
    """The sweep's result on its parent run: metrics (b_crit, cbs, ...: the runs table shows
    them side by side across sweeps) and the description (markdown: recommendation, verdict)."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    client.log_batch(
        parent_run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
        tags=[RunTag(NOTE_TAG, description)],
    )


def log_comparison(
    sweeps: Sequence[Run],
    files: Iterable[str | os.PathLike],
    labels: Sequence[str],
    tracking_uri: str | None = None,
) -> str:
    """A run of its own in the first sweep's experiment (``critbatch.role=comparison``)
    holding the comparison page, table and figures under ``compare/``; returns its id."""
    client = open_client(tracking_uri)
    tags = {ROLE_TAG: ROLE_COMPARISON, COMPARED_TAG: ",".join(s.info.run_id for s in sweeps),
            NOTE_TAG: f"Comparison of {', '.join(labels)}: see {COMPARE_ARTIFACTS}/compare.html"}  # fmt: skip
    run = client.create_run(sweeps[0].info.experiment_id, tags=tags,
                            run_name=("compare: " + " vs ".join(labels))[:250])  # fmt: skip
    for f in map(Path, files):
        where = (
            COMPARE_ARTIFACTS if f.suffix in (".html", ".csv") else f"{COMPARE_ARTIFACTS}/figures"
        )
        client.log_artifact(run.info.run_id, str(f), where)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
