"""Read a sweep into the tidy frame: the front door of the loaders, the modules of
``analysis/`` that read MLflow (:mod:`analysis.load_mlflow`), Ray run folders
(:mod:`analysis.load_ray`) and steps CSVs (:mod:`analysis.load_csv`).

They only read; what critbatch writes to MLflow is written from ``tune_jobs/`` (the names of
both sides in :mod:`analysis.mlflow_layout`).

``load(source)`` returns one row per (trial, step) with the columns documented in
``analysis/frame.py``: ``trial, batch_size, lr, strategy, seed, step, examples, status``,
then one float column per logged metric. ``source`` is an MLflow experiment name, a parent
(sweep) run id, or a Ray Tune run folder. Two names clash with trial columns and are renamed:
the per-step ``lr`` metric (the LR the schedule used at that step) becomes ``lr_at_step``
(``lr`` is the trial's peak LR), and the per-report ``status`` is replaced by the final one.

MLflow histories are fetched in bulk, and a finished sweep's metrics snapshot replaces the
fetch where it is fresh (:mod:`analysis.load_mlflow`; ``docs/loading.md`` has the details and
the measured speed).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from analysis.load_csv import load_steps_csv
from analysis.load_mlflow import (
    DEFAULT_TRACKING_URI,
    MLFLOW_VERSION,
    Fetch,
    fetch_histories,
    fetch_points,
    fetch_sweep_histories,
    find_parent_run,
    find_sweeps,
    find_trial_runs,
    fresh_run_ids,
    load_mlflow,
    open_client,
    read_metrics_snapshot,
    resolve_tracking_uri,
    tracking_store,
    trial_run_pages,
)
from analysis.load_ray import load_ray_folder
from analysis.load_tidy import SweepNotFoundError

__all__ = [
    "DEFAULT_TRACKING_URI",
    "MLFLOW_VERSION",
    "Fetch",
    "SweepNotFoundError",
    "fetch_histories",
    "fetch_points",
    "fetch_sweep_histories",
    "find_parent_run",
    "find_sweeps",
    "find_trial_runs",
    "fresh_run_ids",
    "load",
    "load_mlflow",
    "load_ray_folder",
    "load_steps_csv",
    "open_client",
    "read_metrics_snapshot",
    "resolve_tracking_uri",
    "tracking_store",
    "trial_run_pages",
]


def load(
    source: str | os.PathLike,
    tracking_uri: str | None = None,
    *,
    fetch: Fetch = "auto",
    snapshot: bool = True,
) -> pd.DataFrame:
    """The tidy frame of a sweep; see the module docstring for ``source``. ``fetch``: how
    MLflow histories are fetched (:func:`analysis.load_mlflow.fetch_histories`).
    ``snapshot=False`` ignores the sweep's metrics snapshot and fetches every history."""
    path = Path(source)
    if path.is_dir():
        return load_ray_folder(path)
    if path.is_file():
        raise SweepNotFoundError(
            f"{path} is a file, not a run folder. A `batch_size,steps` CSV loads with "
            "load_steps_csv(); a sweep loads from its run folder (e.g. critbatch_runs/<name>)."
        )
    return load_mlflow(str(source), tracking_uri, fetch=fetch, snapshot=snapshot)
