"""`critbatch branch`: the local critical batch size along training, on Ray Tune (Merrill et al. 2025).

The protocol is :mod:`trainables.branching`'s (the job's ``branch:`` section is its
:class:`~trainables.branching.BranchPlan`); the local CBS, its interval over seeds and the
schedule are :mod:`analysis.branch`'s. Here they run:

1. the base run, one Tune trial per seed at batch B0 and LR lr0, to the last branch point,
   reporting with a checkpoint at every branch point (``TrialConfig.checkpoint_at``);
2. the branches, one Tune trial per (seed, branch point, factor), in parallel: each starts
   from the base run's checkpoint at its branch point (``branch_from``; from scratch at 0),
   trains window / k steps at batch k B0 and the plan's LR, with no target to stop it;
3. the loss each branch compares is the job's ``target.metric`` at its last report.

Run folder ``<storage>/<name>/``: ``job.yaml``, ``sweep.json`` (with ``"branch": true``),
``base/`` and ``branches/`` (Tune's folders: one per trial with ``params.json`` and
``result.json``), ``branch.json`` (the branch results, the local CBS and the schedule).
MLflow: a parent run tagged ``critbatch.role=branch`` (the job's params; metrics
``local_cbs``, ``local_cbs_ci_low``, ``local_cbs_ci_high`` keyed by the branch point as their
step, and ``steps_saved_fraction``; artifact ``branch.json``), with one child run for each
base run and branch, written by the sweep's own tracking code (``tune_jobs/tracking.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.branch import batch_size_schedule, local_cbs, steps_saved
from analysis.mlflow_layout import ROLE_BRANCH
from trainables.branching import BranchPlan
from tune_jobs.config import JobConfig, JobError
from tune_jobs.placement import trial_resources
from tune_jobs.sweep import started_sweep
from tune_jobs.sweep_params import child_params

NEVER = -1e300  # the branches' target value: no loss reaches it, so each trains its whole window
BRANCH_FILE = "branch.json"
SCHEDULE_FILE = "schedule.yaml"  # the schedule, for `critbatch train --batch-size-schedule`


def write_schedule(path: Path, job: JobConfig, plan: BranchPlan, schedule) -> None:
    """The batch-size schedule as YAML that `critbatch train --batch-size-schedule` (and a job's
    ``batch_size_schedule:``) reads, with where it came from in comments."""
    pairs = ", ".join(f"[{e}, {b}]" for e, b in schedule)
    path.write_text(
        f"# critbatch branch {job.name}: the batch size follows the local critical batch size\n"
        f"# (B0 {plan.base_batch_size}, lr0 {plan.base_lr:g}, lr_rule {plan.lr_rule}, "
        f"tolerance {plan.tolerance:g}, {job.target.metric}).\n"
        "# [examples, batch_size]: from that many examples seen on, train at that batch size.\n"
        f"batch_size_schedule: [{pairs}]\n"
    )


@dataclass
class BranchResult:
    run_dir: Path
    parent_run_id: str
    branches: pd.DataFrame  # analysis.branch's frame: branch_at, factor, batch_size, seed, loss
    cbs: pd.DataFrame  # analysis.branch.local_cbs: one row per branch point
    schedule: list[tuple[int, int]]  # (examples, batch_size)
    saved: dict[str, float]  # analysis.branch.steps_saved over the base run and one window
    wall_time_s: float
    synced: bool

    def to_json(self, plan: BranchPlan) -> dict[str, Any]:
        """The exact keys of ``critbatch nqm --branch-at --json`` where they mean the same."""
        sizes = [plan.batch_size(k) for k in plan.factors]
        return {
            "base_batch_size": plan.base_batch_size, "base_lr": plan.base_lr,
            "window_steps": plan.window_steps, "tolerance": plan.tolerance,
            "lr_rule": plan.lr_rule, "branch_at": self.cbs["branch_at"].tolist(),
            "examples_at": [int(t) * plan.base_batch_size for t in self.cbs["branch_at"]],
            "factors": list(plan.factors), "batch_sizes": sizes,
            "lrs": [plan.lr(k) for k in plan.factors],
            "branch_steps": [plan.steps(k) for k in plan.factors],
            "losses": [[r["mean_loss"].get(b, math.nan) for b in sizes] for r in _rows(self.cbs)],
            "passes": [[r["passes"].get(b, False) for b in sizes] for r in _rows(self.cbs)],
            "local_cbs": [_int_or_none(v) for v in self.cbs["local_cbs"]],
            "ci_low": [_int_or_none(v) for v in self.cbs["ci_low"]],
            "ci_high": [_int_or_none(v) for v in self.cbs["ci_high"]],
            "seeds": self.cbs["seeds"].tolist(),
            "schedule": [list(p) for p in self.schedule],
            "steps_saved": self.saved,
            "run_dir": str(self.run_dir), "parent_run_id": self.parent_run_id,
        }  # fmt: skip


def _rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    return df.to_dict("records")


def _int_or_none(v: float) -> int | None:
    return None if v is None or not math.isfinite(v) else int(v)


def branch_trial_configs(
    plan: BranchPlan, seeds: list[int], checkpoints: dict[tuple[int, int], str]
) -> list[dict[str, Any]]:
    """One Tune config per (seed, branch point, factor) whose start exists: the base run's
    checkpoint folder at that point (``checkpoints[(seed, t)]``), or none at t = 0."""
    out = []
    for seed in seeds:
        for t in plan.branch_at:
            src = "" if t == 0 else checkpoints.get((seed, t))
            if src is None:  # the base run did not get there (diverged): no branches
                continue
            for k in plan.factors:
                out.append({"batch_size": plan.batch_size(k), "lr": plan.lr(k), "seed": seed,
                            "max_steps": t + plan.steps(k), "branch_at": t, "factor": k,
                            "branch_from": src})  # fmt: skip
    return out


def run_branch(
    job: JobConfig,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    job_yaml: str | None = None,
    n_boot: int = 1000,
) -> BranchResult:
    """Run a validated branch job to the end (module docstring); raises :class:`JobError` on
    bad input before anything is written."""
    if not job.branch.enabled:
        raise JobError("branch.branch_at: this job does not branch; give branch_at, e.g. [0, 100]")
    if "://" in job.storage:
        raise JobError(f"storage: {job.storage!r}; critbatch branch needs a folder every worker "
                       "can read (the branches load the base run's checkpoints from it): give "
                       "a local or shared filesystem path")  # fmt: skip
    plan = job.branch.plan()
    t0 = time.time()
    with started_sweep(job, address=address, num_cpus=num_cpus, job_yaml=job_yaml,
                       role=ROLE_BRANCH, meta={"branch": True}) as (run_dir, meta):  # fmt: skip
        return _run(job, plan, run_dir, meta, n_boot, t0)


def _run(job: JobConfig, plan: BranchPlan, run_dir: Path, meta: dict, n_boot: int, t0: float):
    from tune_jobs.mlflow_writer import SPILL_FILE, MlflowWriter
    from tune_jobs.tracking import Tracker

    tracker = Tracker(meta["tracking_uri"], meta["experiment_id"], meta["parent_run_id"],
                      child_params(job))  # fmt: skip
    tracker.fresh = True
    writer = MlflowWriter(tracker, run_dir / SPILL_FILE)
    from trainables.registry import get_workload

    train_size = get_workload(job.workload, job.code_dir).train_size
    config = job.trial_config(plan.base_batch_size, plan.base_lr, job.seeds[0], train_size)
    target = dataclasses.replace(job.target, value=NEVER)  # a branch trains its whole window
    base = dataclasses.asdict(dataclasses.replace(config, target=target))
    tune_run = functools.partial(tune_trials, job, run_dir, base, writer, tracker)

    checkpoints: dict[tuple[int, int], str] = {}
    points = [t for t in plan.branch_at if t > 0]
    if points:
        base_configs = [{"batch_size": plan.base_batch_size, "lr": plan.base_lr, "seed": s,
                         "max_steps": max(points), "checkpoint_at": points} for s in job.seeds]  # fmt: skip
        for result in tune_run("base", base_configs):
            seed = int(result.config["seed"])
            for ckpt, metrics in result.best_checkpoints or []:
                checkpoints[(seed, int(metrics["step"]))] = ckpt.path
    configs = branch_trial_configs(plan, job.seeds, checkpoints)
    rows = []
    for result in tune_run("branches", configs):
        c, m = result.config, result.metrics or {}
        loss = m.get(job.target.metric, math.nan)
        if result.error is not None or m.get("status") == "diverged" or loss is None:
            loss = math.inf  # a branch that failed to train fails the comparison
        rows.append({"branch_at": int(c["branch_at"]), "factor": int(c["factor"]),
                     "batch_size": int(c["batch_size"]), "seed": int(c["seed"]),
                     "loss": float(loss)})  # fmt: skip
    synced = writer.close()
    branches = pd.DataFrame(rows).sort_values(["branch_at", "seed", "factor"], ignore_index=True)
    cbs = local_cbs(branches, plan.tolerance, n_boot=n_boot)
    schedule = batch_size_schedule(cbs, plan.base_batch_size, list(plan.factors))
    total = (max(plan.branch_at) + plan.window_steps) * plan.base_batch_size
    saved = steps_saved(schedule, total, plan.base_batch_size)
    result = BranchResult(run_dir, meta["parent_run_id"], branches, cbs, schedule, saved,
                          time.time() - t0, synced)  # fmt: skip
    out = result.to_json(plan) | {"branches": branches.to_dict("records")}
    (run_dir / BRANCH_FILE).write_text(json.dumps(out, indent=1, default=str))
    write_schedule(run_dir / SCHEDULE_FILE, job, plan, schedule)
    result.synced = synced and _finish_parent(tracker, result, out)
    return result


def tune_trials(job: JobConfig, run_dir: Path, base: dict, writer, tracker, name: str,
          configs: list[dict[str, Any]]) -> list:  # fmt: skip
    """Run ``configs`` as Tune trials (as many at once as the resources allow) in
    ``run_dir/name``, tracked like a sweep's trials; their results in order."""
    if not configs:
        return []
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from tune_jobs.tracking import MlflowCallback, RunFolderJsonLogger
    from tune_jobs.trainable import run_tune_trial

    trainable = tune.with_resources(
        tune.with_parameters(run_tune_trial, base=base, cpus=job.resources.cpus),
        functools.partial(trial_resources, job.resources)
        if job.resources.gpus_from_batch_size
        else {"cpu": job.resources.cpus, "gpu": job.resources.gpus},
    )
    run_config = tune.RunConfig(
        name=name,
        storage_path=str(run_dir),
        callbacks=[RunFolderJsonLogger(), MlflowCallback(writer, tracker, {})],
        failure_config=tune.FailureConfig(max_failures=job.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # every branch point's
        verbose=0,
    )
    # Values shared by every config are constants of the search space (lists only there: Tune
    # reads a list in a point as one value per element); the others come as one point per trial.
    keys = {k for c in configs for k in c}
    fixed = {
        k: configs[0][k] for k in keys if all(k in c and c[k] == configs[0][k] for c in configs)
    }
    points = [{k: v for k, v in c.items() if k not in fixed} for c in configs]
    tuner = tune.Tuner(
        trainable,
        param_space=fixed | dict.fromkeys(keys - set(fixed)),
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(points_to_evaluate=points),
            num_samples=len(configs),
            max_concurrent_trials=job.max_concurrent or None,
            reuse_actors=True,
        ),
        run_config=run_config,
    )
    grid = tuner.fit()
    return [grid[i] for i in range(len(grid))]


def _finish_parent(tracker, result: BranchResult, out: dict[str, Any]) -> bool:
    """The local CBS per branch point (metric steps = branch points), the steps saved, the
    results as ``branch.json``, then the parent run's end; False when MLflow refused."""
    import sys

    from mlflow.entities import Metric

    from tune_jobs.tracking import end_run

    now = int(time.time() * 1000)
    metrics = [Metric("steps_saved_fraction", float(result.saved["saved_fraction"]), now, 0)]
    for row in _rows(result.cbs):
        for key, col in (("local_cbs", "local_cbs"), ("local_cbs_ci_low", "ci_low"),
                         ("local_cbs_ci_high", "ci_high")):  # fmt: skip
            if math.isfinite(row[col]):
                metrics.append(Metric(key, float(row[col]), now, int(row["branch_at"])))
    try:
        tracker.client.log_batch(tracker.parent_run_id, metrics=metrics)
        tracker.client.log_text(tracker.parent_run_id, json.dumps(out, indent=1, default=str),
                                BRANCH_FILE)  # fmt: skip
        end_run(tracker.client, tracker.parent_run_id, "FINISHED")
        return True
    except Exception as e:  # the results are in the run folder (branch.json)
        print(f"critbatch: could not finish the MLflow parent run ({e})", file=sys.stderr)
        return False
