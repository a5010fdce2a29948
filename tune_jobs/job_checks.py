"""The value checks of a job: what a field's type cannot say (ranges, cross-field rules, the
workload's metrics and abilities). :func:`tune_jobs.config.parse_job` runs them after the types
are checked, so a bad job fails before anything is launched, with a :class:`JobError` naming
the field (as a dotted path) and the fix.
"""

from __future__ import annotations

import difflib
import math
from typing import TYPE_CHECKING, Any

from trainables.api import InputError

if TYPE_CHECKING:  # annotations only: config.py imports this module
    from tune_jobs.config import JobConfig, ResourcesConfig


class JobError(InputError):
    """A job file (or flag) is invalid. The message names the field and the fix."""


def check_values(job: JobConfig) -> None:
    """Every value check that the types alone do not make: ranges, names the registry must
    know, and fields a workload refuses; raises :class:`JobError` naming the field and the fix."""
    from trainables.registry import get_workload, workloads

    if not job.name or not all(c.isalnum() or c in "-_." for c in job.name):
        raise JobError(
            f"name: {job.name!r} must be non-empty letters, digits, '-', '_' or '.'; it names a folder"
        )
    try:
        known = {job.workload: get_workload(job.workload)}
    except KeyError:
        known = workloads()
    if job.workload not in known:
        close = difflib.get_close_matches(job.workload, list(known), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise JobError(
            f"workload: unknown workload {job.workload!r}; {hint}known: {', '.join(known)} (`critbatch workloads`)"
        )
    if not job.batch_sizes:
        raise JobError(
            "batch_sizes: the list is empty; give at least one positive batch size, e.g. [8, 16, 32]"
        )
    for i, b in enumerate(job.batch_sizes):
        if b <= 0:
            raise JobError(
                f"batch_sizes[{i}]: {b} is not positive; batch sizes are counts of examples >= 1"
            )
    if len(set(job.batch_sizes)) != len(job.batch_sizes):
        raise JobError("batch_sizes: contains duplicates; list each batch size once")
    if not job.seeds or len(set(job.seeds)) != len(job.seeds):
        raise JobError("seeds: give a non-empty list of distinct integer seeds, e.g. [0]")
    s = job.strategy
    if s.name not in ("tuned", "blr", "lsr", "srsr"):
        raise JobError(f"strategy.name: unknown strategy {s.name!r}; use tuned, blr, lsr or srsr")
    if s.name != "tuned" and (s.base_lr <= 0 or s.base_batch_size <= 0):
        raise JobError(
            f"strategy: {s.name} needs base_lr > 0 and base_batch_size > 0 (the LR chosen at a small base batch size)"
        )
    if s.warmup_epochs < 0 or s.warmup_steps < 0:
        raise JobError("strategy.warmup_epochs: must be >= 0")
    r = job.lr_search
    if not (r.min > 0 and r.max > 0 and math.isfinite(r.min) and math.isfinite(r.max)):
        raise JobError(
            f"lr_search: min ({r.min}) and max ({r.max}) must be positive finite learning rates"
        )
    if r.min >= r.max:
        raise JobError(f"lr_search: min ({r.min}) must be below max ({r.max}); swap them")
    if r.trials_per_batch_size < 1:
        raise JobError("lr_search.trials_per_batch_size: must be >= 1")
    if r.algorithm not in ("tpe", "random", "grid"):
        raise JobError(f"lr_search.algorithm: unknown {r.algorithm!r}; use tpe, random or grid")
    if not (0 < r.convergence_tolerance < 1):
        raise JobError(
            f"lr_search.convergence_tolerance: {r.convergence_tolerance}; use a fraction in (0, 1), e.g. 0.01"
        )
    if isinstance(r.pipeline, bool) or not isinstance(r.pipeline, int) or r.pipeline < 0:
        raise JobError(
            f"lr_search.pipeline: {r.pipeline!r}; use an integer >= 0, e.g. 2 (0 turns it off)"
        )
    if r.pipeline and r.cascade:
        raise JobError("lr_search.pipeline and lr_search.cascade: choose one (set pipeline: 0)")
    if not (0 <= r.lag_stop < 1):
        raise JobError(
            f"lr_search.lag_stop: {r.lag_stop}; use a fraction in [0, 1), e.g. 0.25 (0 turns it off)"
        )
    t = job.target  # direction and a finite value are checked by trainables.api.Target
    metrics = known[job.workload].all_metrics()
    if t.metric not in metrics:
        raise JobError(
            f"target.metric: {job.workload} does not report {t.metric!r}; it reports: {', '.join(metrics)}"
        )
    if metrics[t.metric] != t.direction:
        raise JobError(
            f"target.direction: {t.metric} improves towards {metrics[t.metric]}, not {t.direction}; set direction: {metrics[t.metric]}"
        )
    b = job.budget
    if (b.max_steps > 0) == (b.epochs > 0):
        raise JobError(
            "budget: give exactly one of max_steps (recommended) or epochs, as a positive number"
        )
    if b.max_steps < 0 or b.epochs < 0:
        raise JobError("budget: max_steps and epochs must be positive")
    if job.eval_every < 1:
        raise JobError("eval_every: must be >= 1 step")
    _check_resources(job.resources)
    if not 0 < job.data.fraction <= 1:
        raise JobError(
            f"data.fraction: {job.data.fraction} must be in (0, 1], e.g. 0.5 for half the training set"
        )
    if job.early_stopping.reduction_factor <= 1:
        raise JobError(
            "early_stopping.reduction_factor: must be > 1 (3 keeps the top third at each rung)"
        )
    if job.max_concurrent < 0 or job.checkpoint_every < 0 or job.max_failures < 0:
        raise JobError("max_concurrent, checkpoint_every and max_failures must be >= 0")
    if job.divergence_factor <= 1:
        raise JobError(
            "divergence_factor: must be > 1 (10 = diverged when the loss is 10x its start)"
        )
    _check_noise_scale(job, known[job.workload])
    _check_micro_batch(job, known[job.workload])
    uri = job.tracking.uri
    if not (
        uri.startswith(("sqlite:///", "http://", "https://", "databricks", "postgresql", "mysql"))
    ):
        raise JobError(
            f"tracking.uri: {uri!r} is not a tracking URI MLflow 3 accepts here; use sqlite:///mlflow.db or http://127.0.0.1:5000"
        )


# Workloads with their own training loop (``Workload.train``) that log B_simple; workloads
# built on the shared supervised loop (``Workload.build``) all do (trainables/loop.py).
NOISE_SCALE_OWN_LOOPS = {"nqm_sgd"}


def _check_micro_batch(job: JobConfig, workload: Any) -> None:
    if job.micro_batch_size < 0:
        raise JobError("micro_batch_size: must be >= 0 (0 = every batch in one pass)")
    if job.micro_batch_size and (workload.train is not None or workload.whole_batches):
        why = workload.whole_batches or "it runs its own training loop, not the shared one"
        raise JobError(
            f"micro_batch_size: workload {job.workload} cannot split its batches ({why}); "
            "set micro_batch_size: 0"
        )


def _check_noise_scale(job: JobConfig, workload: Any) -> None:
    if not job.log_noise_scale:
        return
    why = workload.whole_batches
    if not why:
        if workload.train is None or job.workload in NOISE_SCALE_OWN_LOOPS:
            return
        why = (
            "it follows the exact expected loss and samples no gradients; use nqm_sgd"
            if job.workload == "nqm_exact"
            else "its training loop has no B_simple estimator"
        )
    raise JobError(
        f"log_noise_scale: workload {job.workload} cannot log the gradient noise scale ({why}); "
        "set log_noise_scale: false"
    )


def _check_resources(r: ResourcesConfig) -> None:
    if r.cpus <= 0:
        raise JobError("resources.cpus: must be > 0 (CPUs per trial, e.g. 1)")
    asks = [("resources.gpus", r.gpus)]
    for b, g in r.gpus_from_batch_size.items():
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise JobError(
                f"resources.gpus_from_batch_size: key {b!r} is not a batch size; the keys are "
                "positive integers, e.g. {8192: 1}"
            )
        asks.append((f"resources.gpus_from_batch_size.{b}", g))
    for name, g in asks:
        if isinstance(g, bool) or not isinstance(g, int | float) or g < 0:
            raise JobError(f"{name}: {g!r} must be a number >= 0 (fractions allowed, e.g. 0.25)")
        if g > 1 and g != int(g):
            raise JobError(f"{name}: above 1, ask for a whole number of GPUs")
