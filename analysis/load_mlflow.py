"""Read a sweep from MLflow into the tidy frame: find its parent (sweep) run and child
(trial) runs, fetch their metric histories, take what it can from the metrics snapshot.

MLflow histories are fetched in bulk: one SQL query per 500 runs for SQL stores, the server's
``get-history-bulk`` endpoint (100 runs per request, on a thread pool) for ``http(s)://``
servers, and one ``get_metric_history`` call per run and metric only as the fallback
(``fetch="per-metric"``). A finished sweep's parent run also carries a metrics snapshot
(``critbatch/metrics.parquet``, written by :func:`tune_jobs.publish.write_metrics_snapshot` when the sweep ends):
one download replaces the fetch for every trial whose latest metrics, as ``search_runs``
returns them, show nothing was logged after it. ``docs/loading.md`` has the details and the
measured speed.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis.frame import PHASE_COLUMN
from analysis.load_tidy import SweepNotFoundError, tidy_frame, with_devices
from analysis.mlflow_layout import (
    DEVICE_COUNTS,
    DEVICE_NAME,
    PARENT_TAG,
    ROLE_SWEEP,
    ROLE_TAG,
    ROLE_TRIAL,
    SNAPSHOT_COLUMNS,
    SNAPSHOT_TAG,
    STATUS_TAG,
    STEP_LR,
    TRIAL_ID_TAG,
)
from trainables.api import final_status

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
BULK_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
BULK_MAX_RUNS, BULK_MAX_POINTS = 100, 25_000  # limits of the server's bulk endpoint
Fetch = Literal["auto", "sql", "rest-bulk", "per-metric"]
HISTORY_COLUMNS = list(SNAPSHOT_COLUMNS)


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The argument, else $MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db`` in the cwd."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def open_client(tracking_uri: str | None = None) -> MlflowClient:
    """A client on the resolved tracking URI; a SQLite file that does not exist is an error
    (MLflow would silently create an empty store there)."""
    from analysis.tracking_uri import (
        TrackingUriError,
        bound_mlflow_http_timeouts,
        check_uri_form,
        probe_http_server,
    )

    uri = resolve_tracking_uri(tracking_uri)
    try:  # seconds, not MLflow's minutes of retries, for a server that is not there
        check_uri_form(uri, "--tracking-uri")
        if uri.startswith(("http://", "https://")):
            bound_mlflow_http_timeouts()
            probe_http_server(uri, field="--tracking-uri")
    except TrackingUriError as e:
        raise SweepNotFoundError(str(e)) from None
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise SweepNotFoundError(
            f"no MLflow store at {uri} (relative to {Path.cwd()}). Pass the store that holds the "
            "sweep (tracking_uri= / --tracking-uri / $MLFLOW_TRACKING_URI, e.g. the job's "
            "tracking.uri), or the run folder (critbatch_runs/<name>)."
        )
    return MlflowClient(uri)


def find_parent_run(source: str, tracking_uri: str | None = None) -> Run:
    """The sweep's parent run (tag ``critbatch.role=sweep``): ``source`` is its run id or the
    experiment name (the latest sweep in it when there are several)."""
    client = open_client(tracking_uri)
    uri = resolve_tracking_uri(tracking_uri)
    if RUN_ID.match(source):
        try:
            run = client.get_run(source)
        except MlflowException:
            run = None
        if run is not None:
            if run.data.tags.get(ROLE_TAG) == ROLE_TRIAL and PARENT_TAG in run.data.tags:
                return client.get_run(run.data.tags[PARENT_TAG])
            return run
    experiment = client.get_experiment_by_name(source)
    if experiment is None:
        names = [e.name for e in client.search_experiments(max_results=20)]
        raise SweepNotFoundError(
            f"no MLflow experiment or run {source!r} at tracking URI {uri}. Experiments there: "
            f"{names}. Pass the experiment name (the job's tracking.experiment) or the parent run "
            "id, and the store that holds it (tracking_uri= / --tracking-uri / "
            "$MLFLOW_TRACKING_URI), or the run folder."
        )
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = '{ROLE_SWEEP}'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    if not parents:
        raise SweepNotFoundError(
            f"experiment {source!r} at {uri} has no sweep run (tag {ROLE_TAG}=sweep): was it "
            "written by critbatch? Pass a parent run id or a run folder instead."
        )
    if len(parents) > 1:
        others = ", ".join(p.info.run_id for p in parents[1:])
        warnings.warn(
            f"experiment {source!r} holds {len(parents)} sweeps; loading the latest, "
            f"{parents[0].info.run_id}. Pass a parent run id to pick another ({others}).",
            stacklevel=2,
        )
    return parents[0]


def find_sweeps(source: str, tracking_uri: str | None = None) -> list[Run]:
    """The sweeps ``source`` names, for ``critbatch compare``: a parent (or trial) run id: that
    sweep; an experiment name: every sweep in it, oldest first; else a sweep name (the job's
    ``name``, the parent run's name), searched in every experiment, the latest if repeated."""
    client = open_client(tracking_uri)
    uri = resolve_tracking_uri(tracking_uri)
    experiment = None if RUN_ID.match(source) else client.get_experiment_by_name(source)
    if experiment is None:
        sweep = _find_sweep_by_name(client, source)
        return [sweep] if sweep else [find_parent_run(source, uri)]  # its error names the fixes
    sweeps = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'sweep'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    if not sweeps:
        find_parent_run(source, uri)  # raises: no sweep run in the experiment
    return list(sweeps)


def _find_sweep_by_name(client: MlflowClient, name: str) -> Run | None:
    if RUN_ID.match(name) or "'" in name:
        return None
    ids = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    runs = client.search_runs(
        ids,
        filter_string=f"tags.`{ROLE_TAG}` = 'sweep' and attributes.run_name = '{name}'",
        order_by=["attributes.start_time DESC"],
        max_results=10,
    ) if ids else []  # fmt: skip
    if len(runs) > 1:
        warnings.warn(
            f"{len(runs)} sweeps are named {name!r}; using the latest, {runs[0].info.run_id} "
            "(pass a parent run id to pick another)",
            stacklevel=3,
        )
    return runs[0] if runs else None


def find_trial_runs(client: MlflowClient, parent: Run) -> list[Run]:
    """The child (trial) runs of a sweep's parent run, every page of them."""
    return [run for page in trial_run_pages(client, parent) for run in page]


def trial_run_pages(client: MlflowClient, parent: Run, size: int = 1000) -> Iterator[list[Run]]:
    """:func:`find_trial_runs` a page (``size`` runs) at a time, none kept once the next is
    asked for: a 10,000-trial sweep's ``Run`` objects cost ~205 MiB held at once."""
    token = ""
    while token is not None:
        page = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=size,
            page_token=token or None,
        )
        token = page.token or None
        yield page
        del page


def load_mlflow(
    source: str, tracking_uri: str | None = None, *, fetch: Fetch = "auto", snapshot: bool = True
) -> pd.DataFrame:
    """The tidy frame of the sweep ``source`` (experiment name or parent run id) in MLflow."""
    uri = resolve_tracking_uri(tracking_uri)
    parent = find_parent_run(source, uri)
    client = open_client(uri)
    runs = find_trial_runs(client, parent)
    if not runs:
        raise SweepNotFoundError(
            f"sweep run {parent.info.run_id} ({source!r} at {uri}) has no trial runs yet"
        )
    history = fetch_sweep_histories(client, parent, runs, fetch, snapshot=snapshot)
    names = (r.data.params.get(DEVICE_NAME) for r in runs)
    df = with_devices(tidy_frame(_mlflow_frame(runs, history)), names)
    df.attrs["sweep_name"] = parent.info.run_name or parent.info.run_id  # the job's name
    target = _params_target(parent.data.params)
    if target is not None:
        df.attrs["target"] = target  # what `critbatch analyze` measures against by default
    return df


def _params_target(params: dict) -> dict | None:
    """The job's target as the sweep's parent run records it (params target_*)."""
    try:
        return {"metric": params["target_metric"], "value": float(params["target_value"]),
                "direction": params.get("target_direction", "min")}  # fmt: skip
    except (KeyError, ValueError):
        return None


def fetch_sweep_histories(
    client: MlflowClient,
    parent: Run,
    runs: Sequence[Run],
    fetch: Fetch = "auto",
    *,
    snapshot: bool = True,
) -> pd.DataFrame:
    """:func:`fetch_histories` of a sweep's trial ``runs``, taking the points of every run that
    is fresh in the parent's metrics snapshot (:func:`fresh_run_ids`) from it and fetching only
    the others. Without a snapshot, or with ``snapshot=False``, every history is fetched."""
    snap = read_metrics_snapshot(client, parent) if snapshot else None
    if snap is None:
        return fetch_histories(client, runs, fetch)
    fresh = fresh_run_ids(runs, snap)
    stale = [r for r in runs if r.info.run_id not in fresh and r.data.metrics]
    parts = [snap[snap["run_id"].isin(fresh)]]
    if stale:
        parts.append(fetch_histories(client, stale, fetch))
    return pd.concat(parts, ignore_index=True)


def tracking_store(client: MlflowClient) -> Any:
    """The store behind a client (SqlAlchemyStore, RestStore, ...), to pick the fastest fetch.

    MLflow has no public accessor; this private attribute is pinned by
    tests/test_ray_internals.py::test_mlflow_store_accessor against MLFLOW_VERSION."""
    return client._tracking_client.store


MLFLOW_VERSION = "3.17.2"  # the version tracking_store was checked against


def fetch_histories(
    client: MlflowClient, runs: Sequence[Run], fetch: Fetch = "auto"
) -> pd.DataFrame:
    """Every logged point of every metric of ``runs``: columns run_id, key, step, timestamp,
    value (NaN where a NaN was logged, as ``get_metric_history`` returns it)."""
    return fetch_points(client, {r.info.run_id: sorted(r.data.metrics) for r in runs}, fetch)


def fetch_points(
    client: MlflowClient, wanted: dict[str, list[str]], fetch: Fetch = "auto"
) -> pd.DataFrame:
    """:func:`fetch_histories` of runs given as run id -> its metric keys (no ``Run`` objects
    held: a 10,000-trial sweep's cost ~205 MiB)."""
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = tracking_store(client)
    if fetch == "auto":
        fetch = (
            "sql" if isinstance(store, SqlAlchemyStore)
            else "rest-bulk" if isinstance(store, RestStore)
            else "per-metric"
        )  # fmt: skip
    if fetch == "sql":
        rows = _fetch_sql(store, list(wanted))
    elif fetch == "rest-bulk":
        rows = _fetch_rest_bulk(client, store, wanted)
    elif fetch == "per-metric":
        rows = _fetch_per_metric(client, wanted)
    else:
        raise ValueError(f"fetch={fetch!r}; use auto, sql, rest-bulk or per-metric")
    return pd.DataFrame.from_records(rows, columns=HISTORY_COLUMNS)


def _fetch_sql(store, run_ids: list[str]) -> list[tuple]:
    from mlflow.store.tracking.dbmodels.models import SqlMetric
    from sqlalchemy import select

    m = SqlMetric
    rows: list[tuple] = []
    with store.ManagedSessionMaker() as session:
        for i in range(0, len(run_ids), 500):  # stay far below any DB's bound-parameter limit
            q = select(m.run_uuid, m.key, m.step, m.timestamp, m.value, m.is_nan).where(
                m.run_uuid.in_(run_ids[i : i + 500])
            )
            rows += [
                (r, k, s, t, math.nan if nan else v) for r, k, s, t, v, nan in session.execute(q)
            ]
    return rows


def _fetch_rest_bulk(client: MlflowClient, store, wanted: dict[str, list[str]]) -> list[tuple]:
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    creds = store.get_host_creds()

    def one_request(run_ids: list[str], key: str) -> list[dict]:
        params = {"run_id": run_ids, "metric_key": key, "max_results": BULK_MAX_POINTS}
        resp = http_request(creds, BULK_ENDPOINT, "GET", params=params)
        return verify_rest_response(resp, BULK_ENDPOINT).json().get("metrics", [])

    def one_key(key: str, run_ids: list[str]) -> list[tuple]:
        rows, pending = [], sorted(run_ids)
        while pending:
            chunk = pending[:BULK_MAX_RUNS]
            got = one_request(chunk, key)
            if len(got) < BULK_MAX_POINTS:
                pending = pending[len(chunk) :]
            else:  # cut off at the limit: the server sorts by run id, so runs before the last
                last = got[-1]["run_id"]  # one are whole; fetch from the last one on again
                got = [m for m in got if m["run_id"] != last]
                pending = pending[chunk.index(last) :]
                if not got:  # one run alone has more points than a bulk request returns
                    rows += _fetch_per_metric(client, {last: [key]})
                    pending = pending[1:]
            rows += [(m["run_id"], key, m["step"], m["timestamp"], m["value"]) for m in got]
        return rows

    by_key: dict[str, list[str]] = {}
    for run_id, keys in wanted.items():
        for key in keys:
            by_key.setdefault(key, []).append(run_id)
    with ThreadPoolExecutor(4) as pool:  # the server overlaps SQL and JSON of 4 requests
        parts = pool.map(lambda kv: one_key(*kv), by_key.items())
        return [row for part in parts for row in part]


def _fetch_per_metric(client: MlflowClient, wanted: dict[str, list[str]]) -> list[tuple]:
    """The reference path: one ``get_metric_history`` per run and metric."""
    return [
        (run_id, m.key, m.step, m.timestamp, m.value)
        for run_id, keys in wanted.items()
        for key in keys
        for m in client.get_metric_history(run_id, key)
    ]


# ---------------------------------------------------------------- metrics snapshot
def read_metrics_snapshot(client: MlflowClient, parent: Run) -> pd.DataFrame | None:
    """The parent run's metrics snapshot, or None when it has none (no tag) or it cannot be
    read (a warning says why; loading then fetches every history)."""
    tag = parent.data.tags.get(SNAPSHOT_TAG)
    if not tag:
        return None
    try:
        path = json.loads(tag)["path"]
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file
        with tempfile.TemporaryDirectory(prefix="critbatch-snapshot-") as tmp:
            local = client.download_artifacts(parent.info.run_id, path, tmp)
            snap = pd.read_parquet(local, columns=HISTORY_COLUMNS)
    except Exception as e:  # a missing or damaged artifact, an unreadable artifact store
        warnings.warn(
            f"sweep {parent.info.run_id}: metrics snapshot unreadable ({type(e).__name__}: "
            f"{e}); fetching every history instead",
            stacklevel=3,
        )
        return None
    return snap


def fresh_run_ids(runs: Sequence[Run], snapshot: pd.DataFrame) -> set[str]:
    """Runs whose points in ``snapshot`` are all they have: for every metric of the run, its
    latest point as the store returns it with the run (``search_runs``: step, timestamp,
    value) is the snapshot's last point of that metric, and the snapshot has no metric the run
    lacks. A run that logged anything since (a running or resumed sweep) fails the check; so
    does a run the snapshot does not hold. Runs without metrics need no fetch and are left out.

    Not caught: a point logged after the snapshot at a step below the metric's latest one.
    critbatch does that only in ``reconcile`` (filling a gap left by a killed driver), which
    runs before the snapshot of the same sweep end or ``critbatch sync`` is written."""
    # The latest metric objects (with step and timestamp) ride on every Run from search_runs;
    # RunData exposes only their values publicly.
    latest = pd.DataFrame.from_records(
        [(r.info.run_id, m.key, m.step, m.timestamp, m.value)
         for r in runs for m in r.data._metric_objs],
        columns=HISTORY_COLUMNS,
    )  # fmt: skip
    snap = snapshot[snapshot["run_id"].isin(set(latest["run_id"]))]
    # MLflow's latest point is the greatest (step, timestamp, value).
    last = snap.sort_values(["run_id", "key", "step", "timestamp", "value"], na_position="first")
    last = last.drop_duplicates(["run_id", "key"], keep="last")
    both = latest.merge(last, on=["run_id", "key"], how="outer", suffixes=("", "_snap"))
    same = (
        (both["step"] == both["step_snap"])
        & (both["timestamp"] == both["timestamp_snap"])
        & (
            (both["value"] == both["value_snap"])
            | (both["value"].isna() & both["value_snap"].isna())
        )
    )
    return set(latest["run_id"]) - set(both.loc[~same, "run_id"])


def _mlflow_frame(runs: Sequence[Run], history: pd.DataFrame) -> pd.DataFrame:
    # A point logged twice at one step (a resumed trial) keeps its latest value.
    history = history.sort_values(["run_id", "key", "step", "timestamp"], kind="stable")
    history = history.drop_duplicates(["run_id", "key", "step"], keep="last")
    wide = history.pivot(index=["run_id", "step"], columns="key", values="value")
    wide = wide.rename(columns={"lr": STEP_LR}).reset_index()
    wide.columns.name = None
    meta = pd.DataFrame([_trial_meta(r) for r in runs])
    return meta.merge(wide, on="run_id", how="left").drop(columns=["run_id"])


def _trial_meta(run: Run) -> dict:
    p, t = run.data.params, run.data.tags
    missing = [k for k in ("batch_size", "lr") if k not in p]
    if missing:
        raise ValueError(
            f"trial run {run.info.run_id} lacks params {missing}; not a critbatch trial"
        )
    live = run.info.status == "RUNNING"
    status = t.get(STATUS_TAG) or (
        "running" if live else final_status(None, errored=run.info.status == "FAILED")
    )
    return {
        "run_id": run.info.run_id,
        "trial": t.get(TRIAL_ID_TAG, run.info.run_id),
        "batch_size": int(p["batch_size"]),
        "lr": float(p["lr"]),
        "strategy": p.get("strategy", "tuned"),
        "seed": int(p.get("seed", 0)),
        "status": status,
        **{k: float(p[k]) for k in DEVICE_COUNTS if k in p},
        **({PHASE_COLUMN: p["phase"]} if "phase" in p else {}),  # optional column
    }
