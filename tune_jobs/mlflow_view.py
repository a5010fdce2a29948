"""How an experiment critbatch writes opens in the MLflow UI: on its runs, sweeps comparable.

Two experiment tags, both read by the MLflow UI itself:

- ``mlflow.experimentKind = custom_model_development``: MLflow 3 opens an experiment without
  it on the GenAI traces overview; with it, on the runs table (the value the UI sets itself
  when a user picks "model training"). MLflow 3.17 lets a global GenAI / Model training switch
  override it, so the links critbatch prints also say ``workflowType=machine_learning``.
- ``mlflow.sharedViewState.<key>``: a saved view of the runs table (what the UI's "Share"
  writes): the columns a sweep comparison needs (each sweep's b_crit with its interval, CBS,
  S_min, the recommended batch size, device-hours; each trial's batch size, LR and steps to
  target), so nobody configures columns by hand. The link ``?viewStateShareKey=<key>`` opens
  it.
"""

from __future__ import annotations

import hashlib
import json

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
# Columns of the runs table, in the UI's own key format.
SWEEP_COLUMNS = [
    "params.`strategy`", "metrics.`b_crit`", "metrics.`b_crit_ci_low`", "metrics.`b_crit_ci_high`",
    "metrics.`cbs`", "metrics.`s_min`", "metrics.`recommended_batch_size`",
    "metrics.`device_hours`", "metrics.`trials`", "params.`batch_size`", "params.`lr`",
    "metrics.`steps_to_target`",
]  # fmt: skip
_VIEW = {
    "searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False,
    "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [],
    "modelVersionFilter": "All Runs", "selectedColumns": SWEEP_COLUMNS,
}  # fmt: skip
VIEW_VALUE = json.dumps(_VIEW, separators=(",", ":"))
VIEW_KEY = "critbatch" + hashlib.sha256(VIEW_VALUE.encode()).hexdigest()[:16]


def experiment_tags() -> dict[str, str]:
    """The tags every experiment critbatch writes carries (set when missing)."""
    return {EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1], SHARED_VIEW_PREFIX + VIEW_KEY: VIEW_VALUE}


def runs_url(ui: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI at ``ui`` (e.g. http://127.0.0.1:5000),
    with the sweep columns."""
    return (
        f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={VIEW_KEY}"
    )
