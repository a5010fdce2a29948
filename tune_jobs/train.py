"""`critbatch train`: one run per seed of a job, with a batch-size schedule, on Ray Tune.

The schedule is the job's ``batch_size_schedule`` (``(examples, batch_size)`` pairs; the one
`critbatch branch` writes to ``schedule.yaml``, or one written by hand): the supervised loop
(:func:`trainables.loop.train_supervised`) switches batch size as the examples seen pass each
threshold. The LR is given at the schedule's first batch size B0 and scaled at batch B by the
rule (:func:`trainables.branching.scaled_lr`: lr * B / B0, linear; lr * sqrt(B / B0), sqrt).
For a branch job both come from its ``branch:`` section: the LR at B0 is ``base_lr`` scaled
by the rule from ``base_batch_size`` to B0 (so ``[[0, 512]]`` trains at the LR the branches
would use at 512), the rule is ``lr_rule``; any other job names them (``lr``, ``lr_rule``).

Each run trains to its example budget (``max_examples``), past the target (whose first
crossing is reported as ``steps_to_target`` and ``examples_to_target``), so runs with
different schedules compare at the same examples. The trials run and are tracked as a
branch run's are (:func:`tune_jobs.branch.tune_trials`): run folder ``<storage>/<name>/``
with ``job.yaml``, ``sweep.json`` (``"train": true``), Tune's ``train/`` folder and
``train.json`` (each seed's last report); MLflow: a parent run tagged ``critbatch.role=train``
with one child run per seed, written by the sweep's tracking code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.mlflow_layout import ROLE_TRAIN
from trainables.branching import LR_RULES, scaled_lr
from tune_jobs.config import JobConfig, JobError
from tune_jobs.job_file import checked_schedule
from tune_jobs.sweep import started_sweep
from tune_jobs.sweep_params import child_params

TRAIN_FILE = "train.json"
FINAL_KEYS = ("step", "examples", "batch_size", "lr", "train_loss", "train_loss_ema", "status",
              "steps_to_target", "examples_to_target", "wall_time", "train_time")  # fmt: skip


@dataclass
class TrainResult:
    run_dir: Path
    parent_run_id: str
    schedule: list[tuple[int, int]]
    lr: float  # at the schedule's first batch size
    lr_rule: str
    max_examples: int
    runs: list[dict[str, Any]]  # per seed: its last report's FINAL_KEYS, eval_* metrics, seed
    wall_time_s: float
    synced: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "schedule": [list(p) for p in self.schedule], "lr": self.lr,
            "lr_rule": self.lr_rule, "max_examples": self.max_examples, "runs": self.runs,
            "wall_time_s": self.wall_time_s, "run_dir": str(self.run_dir),
            "parent_run_id": self.parent_run_id,
        }  # fmt: skip


def train_lr(job: JobConfig, lr: float | None, lr_rule: str | None) -> tuple[float, str]:
    """The LR at the schedule's first batch size and the rule (module docstring); raises
    :class:`JobError` naming what is missing."""
    schedule = checked_schedule(job.batch_size_schedule, "batch_size_schedule")
    b0 = schedule[0][1]
    rule = lr_rule or (job.branch.lr_rule if job.branch.enabled else "linear")
    if rule not in LR_RULES:
        raise JobError(f"lr_rule: {rule!r}; use linear (lr x B / B0, SGD) or sqrt (Adam)")
    if lr is None:
        if not job.branch.enabled:
            raise JobError("lr: the job has no branch section to take base_lr from; give the LR "
                           "at the schedule's first batch size, e.g. --lr 0.1")  # fmt: skip
        lr = scaled_lr(job.branch.base_lr, b0 / job.branch.base_batch_size, rule)
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise JobError(f"lr: {lr!r}; give a learning rate > 0, e.g. --lr 0.1")
    return float(lr), rule


def default_max_examples(job: JobConfig) -> int:
    """A branch job's examples of its base run and one window (what ``steps_saved`` counts);
    0 for any other job (its step budget ends the run)."""
    if not job.branch.enabled:
        return 0
    p = job.branch.plan()
    return (max(p.branch_at) + p.window_steps) * p.base_batch_size


def run_train(
    job: JobConfig,
    *,
    lr: float | None = None,
    lr_rule: str | None = None,
    max_examples: int | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
) -> TrainResult:
    """Train ``job`` with its ``batch_size_schedule``, one run per seed (module docstring);
    raises :class:`JobError` on bad input before anything is written."""
    if not job.batch_size_schedule:
        raise JobError("batch_size_schedule: the job has none; add batch_size_schedule: "
                       "[[0, 32], [20000, 64]] or pass --batch-size-schedule FILE")  # fmt: skip
    if "://" in job.storage:
        raise JobError(f"storage: {job.storage!r}; critbatch train writes a local run folder: "
                       "give a filesystem path")  # fmt: skip
    lr, rule = train_lr(job, lr, lr_rule)
    budget = default_max_examples(job) if max_examples is None else max_examples
    if budget < 0:
        raise JobError(
            f"max_examples: {budget}; give a number of examples >= 0 (0: the step budget)"
        )
    t0 = time.time()
    with started_sweep(job, address=address, num_cpus=num_cpus, job_yaml=None,
                       role=ROLE_TRAIN, meta={"train": True}) as (run_dir, meta):  # fmt: skip
        return _run(job, run_dir, meta, lr, rule, budget, t0)


def _run(job: JobConfig, run_dir: Path, meta: dict, lr: float, rule: str, budget: int,
         t0: float) -> TrainResult:  # fmt: skip
    from trainables.registry import get_workload
    from tune_jobs.branch import tune_trials
    from tune_jobs.mlflow_writer import SPILL_FILE, MlflowWriter
    from tune_jobs.tracking import Tracker, end_run

    schedule = checked_schedule(job.batch_size_schedule, "batch_size_schedule")
    b0 = schedule[0][1]
    tracker = Tracker(meta["tracking_uri"], meta["experiment_id"], meta["parent_run_id"],
                      child_params(job))  # fmt: skip
    tracker.fresh = True
    writer = MlflowWriter(tracker, run_dir / SPILL_FILE)
    train_size = get_workload(job.workload, job.code_dir).train_size
    config = job.trial_config(b0, lr, job.seeds[0], train_size)
    # An example budget ends the run; the step bound then never binds (every step sees >= 1).
    max_steps = budget + 1 if budget else config.max_steps
    config = dataclasses.replace(config, batch_size_schedule=schedule, lr_rule=rule,
                                 max_examples=budget)  # fmt: skip
    configs = [{"batch_size": b0, "lr": lr, "seed": s, "max_steps": max_steps,
                "run_to_max_steps": True} for s in job.seeds]  # fmt: skip
    results = tune_trials(job, run_dir, dataclasses.asdict(config), writer, tracker, "train",
                          configs)  # fmt: skip
    runs = []
    for r in results:
        m = r.metrics or {}
        row = {k: m.get(k) for k in (*FINAL_KEYS, job.target.metric)}
        row |= {k: v for k, v in m.items() if k.startswith("eval_")}  # the workload's metrics
        row["seed"] = int(r.config["seed"])
        if r.error is not None:
            row["status"] = "errored"
        runs.append(row)
    synced = writer.close()
    result = TrainResult(run_dir, meta["parent_run_id"], list(schedule), lr, rule, budget,
                         sorted(runs, key=lambda x: x["seed"]), time.time() - t0, synced)  # fmt: skip
    out = result.to_json()
    (run_dir / TRAIN_FILE).write_text(json.dumps(out, indent=1, default=str))
    try:
        tracker.client.log_text(tracker.parent_run_id, json.dumps(out, indent=1, default=str),
                                TRAIN_FILE)  # fmt: skip
        end_run(tracker.client, tracker.parent_run_id, "FINISHED")
    except Exception as e:  # the results are in the run folder (train.json)
        import sys

        print(f"critbatch: could not finish the MLflow parent run ({e})", file=sys.stderr)
        result.synced = False
    return result
