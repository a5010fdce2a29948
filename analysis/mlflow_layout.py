"""How a sweep is laid out in MLflow: the one definition its writer and its readers share.

The writer is :mod:`tune_jobs.tracking` (and :mod:`tune_jobs.publish` for what a sweep's end
adds); the reader is :mod:`analysis.loaders`. docs/architecture.md describes the layout in
words. Changing a name here changes it for both sides at once.
"""

from __future__ import annotations

from analysis.packets import POINTS

# ---- tags
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests a trial run under its sweep's run
ROLE_TAG = "critbatch.role"  # ROLE_SWEEP on the parent run, ROLE_TRIAL on each child
ROLE_SWEEP, ROLE_TRIAL = "sweep", "trial"
ROLE_BRANCH = "branch"  # the parent run of `critbatch branch` (children: base run, branches)
ROLE_TRAIN = "train"  # the parent run of `critbatch train` (children: one run per seed)
TRIAL_ID_TAG = "critbatch.trial_id"  # the Tune trial id: makes replay and resume idempotent
STATUS_TAG = "critbatch.status"  # trainables.api.Status: the trial's final status
ERROR_TAG = "critbatch.error"  # the tail of an errored trial's traceback
RUN_DIR_TAG = "critbatch.run_dir"  # the sweep's run folder (parent run)
GIT_COMMIT_TAG = "critbatch.git_commit"  # the code the sweep ran (parent run)
VERSION_TAG_PREFIX = "critbatch.version."  # + package name: versions of torch, ray, ... (parent)

# ---- params of a trial run (with the job's own params: target_*, eval_every, ...)
TRIAL_PARAMS = ("batch_size", "lr", "seed", "strategy", "workload", "study", "study_trial",
                "max_steps", "phase", "branch_at", "factor")  # fmt: skip
# `branch_at`, `factor`: a branch of `critbatch branch` (tune_jobs/branch.py); absent elsewhere
# `phase` of a trial: "search" (absent in sweeps before confirmation runs) or "confirm" (a run of
# the chosen LR with a fresh seed, tune_jobs/confirm.py); read into the frame's `phase` column.
# What a trial ran on (reported by tune_jobs.trainable): constant per trial, so params, not
# metrics. The counts come back as frame columns (analysis.cost), the name as df.attrs.
DEVICE_COUNTS = ("gpus", "cpus")  # GPUs (fractions when packed) and CPUs Ray gave the trial
DEVICE_NAME = "device_name"  # e.g. "NVIDIA H100 80GB HBM3" or "CPU: AMD EPYC"
DEVICE_PARAMS = (*DEVICE_COUNTS, DEVICE_NAME)

# ---- metrics: every numeric key of a report is a metric keyed by its `step`, except these
NON_METRICS = frozenset({"status", "steps_to_target", "step"})
# The per-step `lr` metric is read back as this column: `lr` is the trial's (peak) learning rate.
STEP_LR = "lr_at_step"

# Tune's own keys in a result (and in result.json): bookkeeping, never a metric.
TUNE_KEYS = frozenset({
    "config", "trial_id", "date", "timestamp", "time_this_iter_s", "time_total_s", "pid",
    "hostname", "node_ip", "time_since_restore", "iterations_since_restore", "done",
    "training_iteration", "checkpoint_dir_name", "should_checkpoint", "experiment_tag",
    "episodes_total", "timesteps_total", "timesteps_since_restore", "experiment_id",
    POINTS,  # critbatch's own: a packet's list of reports (analysis.packets), read as rows
})  # fmt: skip
TUNE_KEY_PREFIXES = ("config/", "time_", "iterations_", "node_")


def is_tune_key(key: str) -> bool:
    """Whether a result key is Tune's bookkeeping rather than a metric of the trial."""
    return key in TUNE_KEYS or key.startswith(TUNE_KEY_PREFIXES)


# ---- the metrics snapshot on the parent run (docs/loading.md): every point of every trial run,
# one artifact, and the tag that says it is complete (JSON {"path", "runs", "points",
# "written_ms"}), set after the upload.
SNAPSHOT_DIR, SNAPSHOT_FILE = "critbatch", "metrics.parquet"
SNAPSHOT_TAG = "critbatch.metrics_snapshot"
SNAPSHOT_COLUMNS = ("run_id", "key", "step", "timestamp", "value")

# ---- the sweep's result on its parent run (tune_jobs.publish.log_sweep_numbers): metrics
# named in analysis.compare.parent_run_metrics, and the run's description (MLflow's own tag,
# markdown shown at the top of the run page): the recommendation, the verdict, the headline.
NOTE_TAG = "mlflow.note.content"

# ---- a comparison (`critbatch compare`): a run of its own in the first sweep's experiment
ROLE_COMPARISON = "comparison"  # its ROLE_TAG
COMPARED_TAG = "critbatch.compared"  # the parent run ids compared, comma-separated
COMPARE_ARTIFACTS = "compare"  # compare.html, compare.csv, figures/

# ---- the report of `critbatch analyze`, logged on the parent run under this artifact path
REPORT_ARTIFACTS = "report"
