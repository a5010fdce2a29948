"""A built job's checks for what a field's type cannot say: ranges, cross-field rules, the
workload's metrics and abilities, the resources asked for. :func:`check_values` raises a
:class:`~tune_jobs.config.JobError` naming the field (as a dotted path) and the fix; the job
file reader (:mod:`tune_jobs.job_file`) calls it on every job it builds.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from tune_jobs.config import (
    LR_ALGORITHMS,
    JobConfig,
    JobError,
    ResourcesConfig,
)


def check_values(job: JobConfig) -> None:
    """Every value check that the types alone do not make: ranges, names the registry must
    know, and fields a workload refuses; raises :class:`JobError` naming the field and the fix."""
    from trainables.registry import get_workload, workloads

    if (
        not job.name
        or len(job.name) > MAX_NAME_LENGTH
        or job.name.startswith(".")  # ".", ".." and hidden folders
        or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in job.name)
    ):
        raise JobError(
            f"name: {job.name!r} must be 1-{MAX_NAME_LENGTH} letters, digits, '-', '_' or '.', "
            "not starting with '.'; it names a folder (the sweep's, under storage)"
        )
    from trainables.api import InputError

    try:
        known = {job.workload: get_workload(job.workload, job.code_dir)}
    except KeyError:
        known = workloads()
    except InputError as e:  # a user workload that does not import or has the wrong shape
        raise JobError(str(e)) from None
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
    _check_batch_sizes_fit(job, known[job.workload])
    if len(set(job.batch_sizes)) != len(job.batch_sizes):
        raise JobError("batch_sizes: contains duplicates; list each batch size once")
    if not job.seeds or len(set(job.seeds)) != len(job.seeds):
        raise JobError("seeds: give a non-empty list of distinct integer seeds, e.g. [0]")
    try:
        known[job.workload].check_options(job.options)
    except InputError as e:
        raise JobError(str(e)) from None
    _check_optimizer(job)
    s = job.strategy
    if s.name not in ("tuned", "blr", "lsr", "srsr"):
        raise JobError(f"strategy.name: unknown strategy {s.name!r}; use tuned, blr, lsr or srsr")
    if s.name != "tuned" and (s.base_lr <= 0 or s.base_batch_size <= 0):
        raise JobError(
            f"strategy: {s.name} needs base_lr > 0 and base_batch_size > 0 (the LR chosen at a small base batch size)"
        )
    if s.warmup_epochs < 0 or s.warmup_steps < 0:
        raise JobError("strategy.warmup_epochs: must be >= 0")
    _check_decay(job)
    r = job.lr_search
    if not (r.min > 0 and r.max > 0 and math.isfinite(r.min) and math.isfinite(r.max)):
        raise JobError(
            f"lr_search: min ({r.min}) and max ({r.max}) must be positive finite learning rates"
        )
    if r.min >= r.max:
        raise JobError(f"lr_search: min ({r.min}) must be below max ({r.max}); swap them")
    if r.trials_per_batch_size < 1:
        raise JobError("lr_search.trials_per_batch_size: must be >= 1")
    if r.algorithm == "tpe":  # the old name
        raise JobError(
            "lr_search.algorithm: 'tpe' was renamed 'line_search' (the project's bracketing line "
            "search); write algorithm: line_search"
        )
    if r.algorithm not in LR_ALGORITHMS:
        raise JobError(
            f"lr_search.algorithm: unknown {r.algorithm!r}; use line_search, random or grid"
        )
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
    if r.parallel and (r.cascade or r.pipeline):
        raise JobError(
            "lr_search.parallel and lr_search."
            + ("cascade" if r.cascade else "pipeline")
            + ": choose one (parallel runs every batch size at once; set parallel: false)"
        )
    if not (0 <= r.lag_stop < 1):
        raise JobError(
            f"lr_search.lag_stop: {r.lag_stop}; use a fraction in [0, 1), e.g. 0.25 (0 turns it off)"
        )
    if r.confirm_seeds < 0:
        raise JobError(f"lr_search.confirm_seeds: {r.confirm_seeds}; use 0 (off) or more, e.g. 4")
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
    lo, hi = metric_range(t.metric)
    if not lo <= t.value <= hi:
        raise JobError(
            f"target.value: {t.value:g} is outside the range of {t.metric} ([{lo:g}, {hi:g}]); "
            "no trial could reach it, so the whole budget would be spent"
            + ("; accuracies are fractions, e.g. 0.95" if hi == 1 and t.value <= 100 else "")
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
    if not 0 <= job.early_stopping.plateau < 1:
        raise JobError(
            f"early_stopping.plateau: {job.early_stopping.plateau} must be in [0, 1) (0.01: stop "
            "a trial that closed less than 1% of its distance to the target while its steps "
            "doubled; 0 turns the rule off)"
        )
    if job.max_concurrent < 0 or job.checkpoint_every < 0 or job.max_failures < 0:
        raise JobError("max_concurrent, checkpoint_every and max_failures must be >= 0")
    if job.divergence_factor <= 1:
        raise JobError(
            "divergence_factor: must be > 1 (10 = diverged when the loss is 10x its start)"
        )
    _check_noise_scale(job, known[job.workload])
    _check_micro_batch(job, known[job.workload])
    if job.batch_size_schedule and known[job.workload].build is None:
        raise JobError(
            f"batch_size_schedule: {job.workload} trains with its own loop, which keeps one batch "
            "size; a schedule needs a workload on the shared supervised loop, e.g. digits_mlp"
        )
    if job.branch.enabled and job.target.direction != "min":
        raise JobError(
            f"target.metric: critbatch branch compares a loss at the end of each branch, not "
            f"{t.metric} ({t.direction}); set target.metric to a loss, e.g. train_loss_ema"
        )
    from analysis.tracking_uri import TrackingUriError, check_uri_form

    try:
        check_uri_form(job.tracking.uri)
    except TrackingUriError as e:
        raise JobError(str(e)) from None


MAX_NAME_LENGTH = 100  # characters; the name is a folder and an MLflow experiment

# The values a metric can take, by name: a target outside them can never be reached.
_METRIC_RANGES = (
    ("accuracy", (0.0, 1.0)),
    ("miou", (0.0, 1.0)),
    ("perplexity", (1.0, math.inf)),
    ("loss", (0.0, math.inf)),
)


def metric_range(metric: str) -> tuple[float, float]:
    """[low, high] of a metric, from its name (accuracies are fractions, losses >= 0);
    (-inf, inf) for a metric whose name says nothing."""
    for part, bounds in _METRIC_RANGES:
        if part in metric:
            return bounds
    return (-math.inf, math.inf)


def _check_batch_sizes_fit(job: JobConfig, workload: Any) -> None:
    """A batch larger than the whole training set repeats examples within one step, and
    its index and data buffers grow with B (a 2^40 batch grew a worker past 3 GB before it
    was killed): refuse it. Compared with the full set, not the data.fraction subset, so the
    seed paper's data-fraction runs keep their batch sizes. Workloads with their own loop
    (the noisy quadratic model) sample no examples; B is only a noise level there."""
    if workload.train is not None or not workload.train_size:
        return
    for i, b in enumerate(job.batch_sizes):
        if b > workload.train_size:
            raise JobError(
                f"batch_sizes[{i}]: {b} is larger than the whole training set of "
                f"{job.workload} ({workload.train_size} examples); drop it or use batch sizes "
                f"<= {workload.train_size}"
            )


def _check_optimizer(job: JobConfig) -> None:
    from trainables.optimizers import ADAPTIVE, OPTIMIZERS

    o = job.optimizer
    if o.name not in OPTIMIZERS:
        close = difflib.get_close_matches(o.name, OPTIMIZERS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise JobError(
            f"optimizer.name: unknown {o.name!r}; {hint}use one of {', '.join(OPTIMIZERS)}"
        )
    if not 0 <= o.momentum < 1:
        raise JobError(f"optimizer.momentum: {o.momentum}; use a value in [0, 1), e.g. 0.9")
    if o.name in ADAPTIVE and o.momentum:
        raise JobError(f"optimizer.momentum: {o.name} has no momentum field; its first moment is "
                       "betas[0] (e.g. betas: [0.9, 0.999]); remove momentum")  # fmt: skip
    if o.name == "nesterov" and o.momentum <= 0:
        raise JobError("optimizer.momentum: nesterov needs momentum > 0, e.g. momentum: 0.9")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise JobError(f"optimizer.betas: {o.betas}; give two values in [0, 1), e.g. [0.9, 0.999]")
    if o.name not in ADAPTIVE and list(o.betas) != [0.9, 0.999]:
        raise JobError(f"optimizer.betas: {o.name} has no betas; remove them or use adam / adamw")
    if not o.eps > 0:
        raise JobError(f"optimizer.eps: {o.eps}; must be > 0, e.g. 1e-8")
    if o.weight_decay < 0:
        raise JobError(f"optimizer.weight_decay: {o.weight_decay}; must be >= 0")


def _check_decay(job: JobConfig) -> None:
    from trainables.schedules import DECAYS

    s = job.strategy
    if s.decay not in DECAYS:
        raise JobError(f"strategy.decay: unknown {s.decay!r}; use one of {', '.join(DECAYS)}")
    if s.decay == "step" and not s.decay_epochs:
        raise JobError("strategy.decay_epochs: decay step needs the epochs to divide the LR at, "
                       "e.g. decay_epochs: [100, 150]")  # fmt: skip
    if s.decay in ("cosine", "wsd") and s.decay_epochs:
        raise JobError(f"strategy.decay_epochs: step decay cannot combine with decay {s.decay}; "
                       "remove decay_epochs")  # fmt: skip
    if not 0 <= s.final_lr_fraction <= 1:
        raise JobError(
            f"strategy.final_lr_fraction: {s.final_lr_fraction}; use a fraction in [0, 1]"
        )
    if not 0 < s.wsd_decay_fraction <= 1:
        raise JobError(
            f"strategy.wsd_decay_fraction: {s.wsd_decay_fraction}; use a fraction in (0, 1], e.g. 0.2"
        )
    if s.horizon_steps < 0:
        raise JobError("strategy.horizon_steps: must be >= 0 (0 = each trial's step budget)")
    if job.workload.startswith("nqm") and (
        s.decay not in ("constant", "step") or job.optimizer.name != "sgd"
    ):
        raise JobError("strategy.decay / optimizer.name: the noisy quadratic model is exact for SGD "
                       "at a constant LR; use decay: constant and optimizer: {name: sgd}")  # fmt: skip


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
        if isinstance(g, bool) or not isinstance(g, int | float) or not math.isfinite(g) or g < 0:
            raise JobError(f"{name}: {g!r} must be a number >= 0 (fractions allowed, e.g. 0.25)")
        if g > 1 and g != int(g):
            raise JobError(f"{name}: above 1, ask for a whole number of GPUs")
