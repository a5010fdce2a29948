"""The contract between a trainable and whatever runs it (Ray Tune, a test, a notebook).

A trainable is ``train(config: TrialConfig, report: Report, state: dict | None) -> None``.

- ``config`` says what to train (workload, batch size, learning rate, seed, schedule,
  budget, target, ...). It is plain data; nothing in it is a Ray or Optuna object.
- ``report(metrics, checkpoint=None)`` is called at every eval point. ``metrics`` always
  holds the keys in :data:`REQUIRED_METRICS`; workloads add their eval metrics
  (``eval_loss``, ``eval_accuracy``, ...). ``checkpoint`` is an optional picklable dict
  (torch tensors allowed) from which the trainable can resume; the runner stores it.
- ``state`` is the last checkpoint dict handed to ``report``, when the runner restarts a
  trial (lost worker, killed driver); ``None`` on a fresh start. For a branch
  (:mod:`trainables.branching`) it is a checkpoint of the base run, taken at a step in its
  ``checkpoint_at``: the trial goes on from that state at its own batch size and LR, to its
  ``max_steps`` (counted from the base run's start).

A trainable ends by itself when the target is reached, when the loss diverges, or when the
step budget is spent. It says which in the last report's ``status`` (see :class:`Status`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class InputError(ValueError):
    """Bad input from the user (a job field, an option, a path, a flag, their own code).

    The message names what is wrong and the fix. Every layer raises it (or a subclass); the
    command line alone turns it into ``critbatch: error: ...`` and exit code 2.
    """


class Status(StrEnum):
    """Final status of a trial, as recorded in the last report and in MLflow."""

    RUNNING = "running"
    REACHED = "reached"  # the target was met at step `steps_to_target`
    NOT_REACHED = "not_reached"  # the step budget ran out first
    DIVERGED = "diverged"  # loss became NaN/inf or grew far above its start: a result, not an error
    STOPPED_EARLY = (
        "stopped_early"  # the scheduler stopped it (set by the runner, not the trainable)
    )
    ERRORED = "errored"  # an exception (set by the runner)
    WITHDRAWN = "withdrawn"  # the parallel LR search took it back (set by the runner): no result


FINAL_STATUSES = frozenset(s.value for s in Status if s is not Status.RUNNING)


def final_status(last_status: str | None, errored: bool = False) -> str:
    """The status a finished trial is recorded with, from the ``status`` of its last report.

    A trial that ended while its last report still said ``running`` (or never reported) was
    stopped by the scheduler: ``stopped_early``. An exception makes it ``errored``.
    """
    if errored:
        return Status.ERRORED.value
    if last_status in FINAL_STATUSES:
        return str(last_status)
    return Status.STOPPED_EARLY.value


# Keys every report carries. Units: step = optimizer steps taken so far; examples = step *
# batch_size (with a batch-size schedule: the sum over steps of each step's batch size, and
# the report also carries that step's `batch_size`); epoch = examples / training-set size (float); lr = learning rate used for the
# last step; wall_time = seconds since the trial started (excluding restore time). Optional:
# train_time = seconds spent in optimizer steps only (eval excluded), for time and cost.
REQUIRED_METRICS = (
    "step",
    "examples",
    "epoch",
    "lr",
    "train_loss",
    "train_loss_ema",
    "wall_time",
    "status",
)


@dataclass(frozen=True)
class Target:
    """The goal a trial races to: ``metric`` reaching ``value`` in ``direction``.

    The one definition for the job file (``target:``), the trainable (when to stop) and the
    analysis (where a curve crosses). ``rule`` says how the value was chosen, for the report.
    """

    metric: str = "eval_loss"
    """Metric the trials race to (a metric the workload reports; see `critbatch workloads`)."""
    value: float = 0.3
    """Threshold of the metric."""
    direction: str = "min"
    """`min`: reached when metric <= value; `max`: when metric >= value."""
    rule: str = "fixed goal"
    """How the value was chosen (shown in the report), e.g. `fixed goal`, `sweep target`."""
    smoothing: float = 0.8
    """The stop rule: a trial has reached the target when a bias-corrected EMA of the metric
    over eval points (this beta; 0 = the raw metric) meets the value (:class:`StopRule`), so
    one lucky eval does not stop it and its curve runs a little past the raw crossing;
    `critbatch analyze --ema` with the same beta finds the same crossing."""

    def __post_init__(self) -> None:
        if self.direction not in ("min", "max"):
            raise InputError(
                f"target.direction: {self.direction!r}; use min (loss-like) or max (accuracy-like)"
            )
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise InputError(f"target.value: {self.value!r} is not a number")
        if not math.isfinite(self.value):
            raise InputError(f"target.value: must be a finite number, got {self.value!r}")
        if not 0 <= self.smoothing < 1:
            raise InputError(
                f"target.smoothing: {self.smoothing}; use an EMA beta in [0, 1), e.g. 0.8 "
                "(0 = the raw metric)"
            )

    def describe(self) -> str:
        op = "<=" if self.direction == "min" else ">="
        return f"{self.metric} {op} {self.value:.6g} ({self.rule})"

    def reached(self, x: float) -> bool:
        if x is None or not math.isfinite(x):
            return False
        return x <= self.value if self.direction == "min" else x >= self.value


class StopRule:
    """When a trial has reached its target: its smoothed target metric meets the value.

    The metric is smoothed over eval points by a bias-corrected EMA, m_t = sum_i beta^(t-i)
    x_i / sum_i beta^(t-i) (the same as pandas' ``ewm(alpha=1 - beta, adjust=True)`` that
    ``critbatch analyze --ema BETA`` applies), so a single noisy eval that dips below the target
    does not stop the trial, and the run goes on a little past its raw crossing (the EMA lags).
    Points where the metric is missing or not finite are skipped, as analysis skips them.
    ``reached_at``: the first step at which the smoothed metric met the target.
    """

    def __init__(self, target: Target):
        if not 0 <= target.smoothing < 1:
            raise ValueError(
                f"target.smoothing must be in [0, 1) (an EMA beta per eval point), got "
                f"{target.smoothing}"
            )
        self.target = target
        self.num = 0.0  # sum of beta^(t-i) x_i
        self.den = 0.0  # sum of beta^(t-i)
        self.reached_at: int | None = None

    def update(self, x: float | None, step: int) -> float:
        """Fold in the metric of the eval point at ``step``; return the smoothed value."""
        if x is not None and math.isfinite(x):
            b = self.target.smoothing
            self.num, self.den = b * self.num + x, b * self.den + 1.0
        value = self.num / self.den if self.den else math.nan
        if self.reached_at is None and self.target.reached(value):
            self.reached_at = step
        return value

    def status(
        self, step: int, config: TrialConfig, diverged: bool, examples_spent: bool = False
    ) -> Status:
        """The trial's status after the eval point at ``step``. With ``run_to_max_steps`` (a
        confirmation run) the trial goes on to ``max_steps`` past the target;
        ``examples_spent``: the trial's ``max_examples`` budget is spent (ends it like
        ``max_steps``)."""
        if diverged:
            return Status.DIVERGED
        if self.reached_at is not None and not config.run_to_max_steps:
            return Status.REACHED
        if step >= config.max_steps or examples_spent:
            return Status.NOT_REACHED if self.reached_at is None else Status.REACHED
        return Status.RUNNING

    def state_dict(self) -> dict[str, Any]:
        return {"num": self.num, "den": self.den, "reached_at": self.reached_at}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.num, self.den, self.reached_at = s["num"], s["den"], s.get("reached_at")


@dataclass(frozen=True)
class Schedule:
    """Learning-rate strategy of one trial (see :mod:`trainables.schedules`).

    ``tuned``: constant ``lr`` (searched per batch size), optional linear warm-up.
    ``blr``: the base LR at every batch size. ``lsr``: lr = base_lr * B / base_batch_size
    with a linear warm-up of ``warmup_epochs``. ``srsr``: lr = base_lr * sqrt(B / base_batch_size).
    ``decay_epochs``: epochs at which the LR is divided by ``decay_factor`` (the seed paper's
    step decay); empty for none.

    ``decay`` shapes the LR after the warm-up: ``constant``, ``step`` (``decay_epochs``),
    ``cosine`` (to ``final_lr_fraction`` * peak at the horizon) or ``wsd`` (warmup-stable-decay:
    constant, then linear to ``final_lr_fraction`` * peak over the last ``wsd_decay_fraction``
    of the horizon). The horizon is ``horizon_steps``, or the trial's step budget when 0.
    """

    strategy: str = "tuned"
    base_batch_size: int = 0
    base_lr: float = 0.0
    warmup_epochs: float = 0.0
    warmup_steps: int = 0
    decay_epochs: tuple[float, ...] = ()
    decay_factor: float = 10.0
    decay: str = "constant"
    final_lr_fraction: float = 0.0  # cosine / wsd: LR at the horizon, as a fraction of the peak
    wsd_decay_fraction: float = 0.2  # wsd: fraction of the horizon spent decaying
    horizon_steps: int = 0  # cosine / wsd: steps of the whole schedule; 0 = the step budget


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs; plain data, serialisable with :func:`dataclasses.asdict`."""

    workload: str
    batch_size: int
    lr: float  # peak learning rate actually used (strategies compute it before the trial)
    seed: int = 0
    max_steps: int = 1000  # step budget; trials stop here if the target is not reached
    eval_every: int = 10  # steps between eval points (and reports)
    target: Target = field(default_factory=Target)
    schedule: Schedule = field(default_factory=Schedule)
    optimizer: str = "sgd"  # sgd | nesterov | adam | adamw (trainables.optimizers)
    momentum: float = 0.0  # sgd / nesterov
    weight_decay: float = 0.0  # L2 for sgd / nesterov / adam; decoupled for adamw
    betas: tuple[float, float] = (0.9, 0.999)  # adam / adamw
    eps: float = 1e-8  # adam / adamw
    ema_beta: float = 0.9  # smoothing of train_loss_ema, per report
    divergence_factor: float = 10.0  # diverged when loss > factor * initial loss (or not finite)
    checkpoint_every: int = 0  # eval points between checkpoints; 0 = never
    checkpoint_at: tuple[int, ...] = ()  # steps that also report with a checkpoint (branching)
    data_fraction: float = 1.0  # fraction of the training set used (seed paper: 1.0/0.5/0.25)
    data_root: str = ""  # where on-disk datasets live ("" = $CRITBATCH_DATA or ~/.critbatch/data)
    device: str = "auto"  # "auto" = cuda if available, else cpu
    noise_scale: bool = False  # also log the gradient noise scale estimate (B_simple)
    micro_batch_size: int = 0  # > 0: run larger batches as parts of at most this many examples
    run_to_max_steps: bool = False  # train past the target to max_steps (confirmation runs)
    options: dict[str, Any] = field(default_factory=dict)  # workload-specific knobs
    # A batch-size schedule (trainables.branching.check_batch_size_schedule): (examples,
    # batch_size) pairs; before each step the batch size is that of the last pair whose
    # threshold the examples seen have reached. Empty: batch_size throughout. With one,
    # batch_size must be its first batch size B0, lr the LR at B0, and the LR at batch B is
    # scaled by lr_rule (lr * B / B0, linear; lr * sqrt(B / B0), sqrt). Supervised loop only.
    batch_size_schedule: tuple[tuple[int, int], ...] = ()
    lr_rule: str = "linear"  # linear | sqrt: the LR of a batch-size schedule's later phases
    max_examples: int = 0  # > 0: the trial also ends once it has seen this many examples
    code_dir: str = ""  # user workloads ("module:function"): folder first on the import path

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TrialConfig:
        d = dict(d)
        d["target"] = Target(**d.get("target", {}))
        sched = dict(d.get("schedule", {}))
        sched["decay_epochs"] = tuple(sched.get("decay_epochs", ()))
        d["schedule"] = Schedule(**sched)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        if "batch_size_schedule" in d:
            d["batch_size_schedule"] = tuple((int(e), int(b)) for e, b in d["batch_size_schedule"])
        if "checkpoint_at" in d:
            d["checkpoint_at"] = tuple(int(k) for k in d["checkpoint_at"])
        return TrialConfig(**d)


class Report(Protocol):
    """Called by a trainable at each eval point; see the module docstring."""

    def __call__(
        self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None
    ) -> None: ...
