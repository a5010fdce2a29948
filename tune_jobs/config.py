"""Job files: a sweep is data. YAML in, a validated, typed :class:`JobConfig` out.

Every field is documented here once (``critbatch check --help`` points here). Validation
happens before anything is launched: an unknown key, a wrong type or an impossible value
raises :class:`JobError` naming the field (as a dotted path) and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from trainables.api import InputError, Schedule, Target, TrialConfig


class JobError(InputError):
    """A job file (or flag) is invalid. The message names the field and the fix."""


@dataclass(frozen=True)
class StrategyConfig:
    name: str = "tuned"
    """LR strategy: `tuned` (LR searched per batch size), `blr` (base LR everywhere), `lsr`
    (lr = base_lr * B / base_batch_size, linear warm-up), `srsr` (lr = base_lr * sqrt(B / base_batch_size))."""
    base_batch_size: int = 0
    """Batch size at which base_lr was chosen (blr/lsr/srsr)."""
    base_lr: float = 0.0
    """Learning rate at base_batch_size (blr/lsr/srsr)."""
    warmup_epochs: float = 0.0
    """Linear warm-up length in epochs (Goyal et al.; the seed paper's W)."""
    warmup_steps: int = 0
    """Linear warm-up length in steps (overrides warmup_epochs when > 0)."""
    decay_epochs: list[float] = field(default_factory=list)
    """Epochs at which the LR is divided by decay_factor (step decay); empty for none."""
    decay_factor: float = 10.0
    """Divisor applied at each decay epoch."""
    decay: str = "constant"
    """LR after the warm-up: `constant`, `step` (decay_epochs), `cosine` (to final_lr_fraction
    x peak at the horizon) or `wsd` (warmup-stable-decay: peak, then linear to
    final_lr_fraction x peak over the last wsd_decay_fraction of the horizon)."""
    final_lr_fraction: float = 0.0
    """cosine / wsd: LR at the horizon as a fraction of the peak LR."""
    wsd_decay_fraction: float = 0.2
    """wsd: fraction of the horizon spent decaying (0.2: the last 20% of the steps)."""
    horizon_steps: int = 0
    """cosine / wsd: steps of the whole schedule; 0 = each trial's step budget (so
    steps-to-target under cosine depends on the budget; see docs/workloads.md)."""


LINE_SEARCH = "line_search"
"""The project's bracketing line search in log LR (Optuna TPE only as its fallback)."""
LR_ALGORITHMS = (LINE_SEARCH, "random", "grid")
"""The values of ``lr_search.algorithm``."""
CONFIRM_LR_FACTORS = (1.0, 1 / 1.5)
"""The LRs a study's confirmation runs train, as factors of the LR its search chose. Noisy
selection errs high: an LR whose expected loss only just reaches the target, or levels off
just above it, has the widest spread of trial outcomes, so its luckiest trial often wins the
search (on the noisy-truth benchmark the chosen LR at the smallest batch sizes was 1.1-1.7x the
optimum, where 1.5x the optimum never reaches the target in expectation). Steps against LR
are a cliff above the optimum and a gentle slope below it, so the next lower LR is confirmed
too and the faster of the two mean curves counts (docs/analysis.md)."""


@dataclass(frozen=True)
class LRSearchConfig:
    min: float = 1e-3
    """Lower end of the learning-rate search range."""
    max: float = 1.0
    """Upper end of the learning-rate search range."""
    log: bool = True
    """Search the LR on a log scale (almost always right)."""
    trials_per_batch_size: int = 8
    """Trials in each study (one study per batch size and seed); a maximum when
    stop_when_converged is on. With `parallel`, withdrawn trials and failed trials of a
    study's coarse pass (at most two) do not count."""
    seed: int = 0
    """Seed of the samplers (each study gets seed + its index)."""
    algorithm: str = LINE_SEARCH
    """`line_search` (the project's bracketing line search in log LR, started from the
    neighbouring batch sizes' best LRs; Optuna TPE where it has nothing to propose), `random`,
    or `grid` (log grid). Formerly called `tpe`."""
    widen_on_edge: bool = True
    """Widen the range by 4x when a study's best LR sits at its edge and is the outermost LR
    tried there (McCandlish, App. A); a diverged or stalled best at the top, or one that ran
    out of steps at the bottom, widens nothing (`LinePolicy._maybe_widen`)."""
    stop_when_converged: bool = True
    """`line_search` only: a study stops before trials_per_batch_size once its best LR has a
    worse trial on each side and the steps still to gain inside that bracket (estimated from a
    parabola in log LR) are below convergence_tolerance."""
    convergence_tolerance: float = 0.01
    """Relative steps-to-target still to gain below which a bracketed study stops (0.01: 1%)."""
    lag_stop: float = 0.25
    """Stop a running trial that lags its study's fastest trial by more than this fraction of
    its steps (its best metric at step t is worse than the fastest one's at (1 - lag_stop) t),
    checked from half the fastest trial's steps on; 0 turns it off. Needs early_stopping."""
    confirm_seeds: int = 4
    """Confirmation runs per study and confirmed LR once its LR search has finished: the chosen
    LR, and the LR CONFIRM_LR_FACTORS below it, each trained with this many fresh training
    seeds (the same seeds for both). B_crit is estimated from them (the crossing of their mean
    curves, the faster LR's), not from the search's fastest trial, which is biased low (the
    winner's curse; see docs/analysis.md). 0: no confirmation; the estimate then falls back to
    the search's fastest trials and the report says it is biased."""
    cascade: bool = False
    """`line_search` only: run the studies one batch size at a time (per seed) from the
    largest down, each started from its finished larger neighbours' best LRs, one trial in
    flight per study. Far less compute (on the NQM the small, expensive batch sizes then need
    about 3 trials each), but one trial at a time per seed; false: all batch sizes advance
    together in rounds."""
    pipeline: int = 0
    """`line_search` only, not with cascade: every batch size in flight at once, one trial
    per study, each study's k-th trial started once the next larger batch size's study has
    k + pipeline results (or finished), seeded from the larger ones' best LRs so far; the
    same trials whatever the completion order. 0: off (rounds). On the NQM it costs more
    compute than the cascade for no gain in wall time (BENCHMARKS.md); a middle ground for
    batch sizes of similar cost (past B_crit)."""
    parallel: bool = False
    """`line_search` only, not with cascade or pipeline: every batch size in flight at once, one
    trial per study, from the first moment. Each study opens with a coarse pass down from
    the top of the range (its failures probe the stability edge and the noise floor, not the
    optimum, and do not count against trials_per_batch_size), then takes its first LRs from
    a provisional fit of best LR against batch size through the batch sizes finished so far
    (a low placeholder until one predicts it); a running first trial the fit has since moved
    away from is stopped and withdrawn (status `withdrawn`: no result, not counted against
    trials_per_batch_size, its steps still spent). It decides on a virtual clock
    (tune_jobs/vclock.py): a trial's report at step s is heard at its virtual start + s, in
    that order, with as many virtual workers as the sweep runs trials at once
    (`max_concurrent`), so the same job gives the same trials and B_crit however fast each
    trial runs. On the NQM reference at 8 trials 3.80x the oracle's compute in the
    simulation with every batch size in flight, 4.24x with 8 workers (the cascade: 3.15x),
    B_crit within 2%; a real sweep with 8 workers 3.64x (the trials ran 3.68x), B_crit
    -0.2%. On the quickstart's digits at 5 trials per batch size four training seeds of five
    agree within 12% of their median and the fifth is 43-53% above it, with 2 workers or 8
    (rounds: all five within 6%), so it is not the default (BENCHMARKS.md)."""


@dataclass(frozen=True)
class BudgetConfig:
    max_steps: int = 0
    """Step budget per trial (recommended: compare batch sizes at equal steps, Shallue et al.)."""
    epochs: float = 0.0
    """Epoch budget per trial (as the seed paper did); converted to steps per batch size."""


@dataclass(frozen=True)
class ResourcesConfig:
    cpus: float = 1.0
    """CPUs per trial."""
    gpus: float = 0.0
    """GPUs per trial; fractions pack several trials on one GPU (e.g. 0.25)."""
    gpus_from_batch_size: dict[int, float] = field(default_factory=dict)
    """GPUs per trial from a batch size on, e.g. {8192: 1}: trials at B >= 8192 get a whole
    GPU while smaller ones pack `gpus` each (the largest key <= B applies)."""

    def gpus_for(self, batch_size: int) -> float:
        """GPUs one trial at ``batch_size`` asks for."""
        keys = [k for k in self.gpus_from_batch_size if k <= batch_size]
        return self.gpus_from_batch_size[max(keys)] if keys else self.gpus

    def describe_gpus(self) -> str:
        """``0.25 GPU (B >= 8192: 1)``."""
        steps = ", ".join(f"B >= {b}: {g:g}" for b, g in sorted(self.gpus_from_batch_size.items()))
        return f"{self.gpus:g} GPU" + (f" ({steps})" if steps else "")


@dataclass(frozen=True)
class EarlyStoppingConfig:
    enabled: bool = True
    """Stop unpromising trials (ASHA within each batch size, and trials that can no longer
    beat the best steps-to-target of their batch size)."""
    grace_steps: int = 0
    """Steps before ASHA may stop a trial (0 = 5 eval intervals)."""
    reduction_factor: float = 3.0
    """ASHA reduction factor: keep the top 1/factor at each rung."""
    plateau: float = 0.01
    """Stop a trial that has stalled short of the target: over the last doubling of its steps
    its smoothed target metric closed less than this fraction of its distance to the target
    (at its noise floor above the target it will not reach it). Judged over windows that
    start past the grace steps and past the last change of the trial's LR (a warm-up); off
    under an LR that decays later (strategy.decay other than constant, or decay_epochs). The
    trial counts as needing more steps than it ran. 0 turns it off."""


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI: `sqlite:///path.db` (default, in the working directory), `http://host:port`, ..."""
    experiment: str = ""
    """MLflow experiment name (default: the job name)."""


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "sgd"
    """`sgd` (heavy ball), `nesterov` (SGD with Nesterov momentum), `adam` or `adamw`."""
    momentum: float = 0.0
    """Momentum of sgd / nesterov."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """adam / adamw: decay rates of the first and second moment estimates."""
    eps: float = 1e-8
    """adam / adamw: added to the denominator."""
    weight_decay: float = 0.0
    """Weight decay: L2 added to the gradient for sgd / nesterov / adam, decoupled for adamw."""


@dataclass(frozen=True)
class DataConfig:
    fraction: float = 1.0
    """Fraction of the training set used (the seed paper's 100/50/25%)."""
    root: str = ""
    """Dataset root ('' = $CRITBATCH_DATA, else ~/.critbatch/data)."""


@dataclass(frozen=True)
class BranchConfig:
    base_batch_size: int = 0
    """`critbatch branch`: B0, the batch size of the base run (and of the k = 1 branches)."""
    base_lr: float = 0.0
    """`critbatch branch`: lr0, the base run's constant learning rate."""
    branch_at: list[int] = field(default_factory=list)
    """`critbatch branch`: base-run steps to branch at, increasing (0: from the start). Empty:
    the job does not branch."""
    factors: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """`critbatch branch`: batch-size multipliers k, increasing, 1 included; the job's
    batch_sizes are base_batch_size x factors."""
    window_steps: int = 0
    """`critbatch branch`: steps of the k = 1 branch; the branch at k trains window_steps / k
    steps at batch k x base_batch_size (the same examples), so divisible by every factor."""
    tolerance: float = 0.01
    """`critbatch branch`: a branch passes when its target.metric at the end of its window is
    <= (1 + tolerance) x the k = 1 branch's; the local CBS is the largest passing batch size."""
    lr_rule: str = "linear"
    """`critbatch branch`: the branch's LR: `linear` (lr0 x k, for SGD) or `sqrt` (lr0 x sqrt(k),
    for Adam)."""

    @property
    def enabled(self) -> bool:
        return bool(self.branch_at)

    def plan(self):
        """The protocol's :class:`trainables.branching.BranchPlan` of this section."""
        from trainables.branching import BranchPlan

        return BranchPlan(self.base_batch_size, self.base_lr, tuple(self.branch_at),
                          tuple(self.factors), self.window_steps, self.tolerance, self.lr_rule)  # fmt: skip


@dataclass(frozen=True)
class JobConfig:
    name: str
    """Sweep name: the run folder and (by default) the MLflow experiment."""
    workload: str
    """Workload from the registry (`critbatch workloads`)."""
    batch_sizes: list[int]
    """Batch sizes to study (the scientific hyperparameter). A branch job may leave it out: its
    batch sizes are branch.base_batch_size x branch.factors."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Training seeds; one study per (batch size, seed)."""
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    lr_search: LRSearchConfig = field(default_factory=LRSearchConfig)
    target: Target = field(default_factory=Target)
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(max_steps=1000))
    eval_every: int = 10
    """Steps between evaluations and reports."""
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    options: dict[str, Any] = field(default_factory=dict)
    """Workload-specific options, checked against the workload's declared schema
    (`critbatch workloads` lists them)."""
    code_dir: str = ""
    """Folder put first on the import path for a user workload (`module:function`); default:
    the job file's folder."""
    max_concurrent: int = 0
    """Trials running at once (0 = as many as the cluster's resources allow). The parallel LR
    search (`lr_search.parallel`) decides as if this many ran (its virtual clock's workers;
    0: what the cluster holds when the sweep starts): set it on a cluster that grows, so a
    rerun asks the same trials."""
    checkpoint_every: int = 0
    """Eval points between trial checkpoints (0 = never; trials then restart from scratch)."""
    max_failures: int = 1
    """Retries of a trial that raised an exception or lost its worker."""
    storage: str = "critbatch_runs"
    """Folder (or URI) where run folders live; resume reads from here."""
    divergence_factor: float = 10.0
    """A trial diverged when its loss exceeds this multiple of its initial loss (or is NaN/inf)."""
    log_noise_scale: bool = False
    """Also log the gradient noise scale B_simple (McCandlish et al.) at every eval point, from
    two half-batch gradients per step (metrics `noise_scale_bsimple`, `noise_scale_gsq`,
    `noise_scale_trsigma`); the report shows it beside B_crit. Supervised workloads and
    `nqm_sgd` only."""
    branch: BranchConfig = field(default_factory=BranchConfig)
    """The local critical batch size along training (`critbatch branch`; docs/branching.md)."""
    batch_size_schedule: list[list[int]] = field(default_factory=list)
    """`critbatch train`: a batch-size schedule, [examples, batch_size] pairs, e.g.
    [[0, 32], [20000, 64], [60000, 128]]: once the examples seen reach a threshold, train at its
    batch size (thresholds increasing from 0); the LR follows branch.lr_rule relative to the
    first batch size (docs/branching.md). `critbatch branch` writes one (schedule.yaml). Empty:
    none. A job with one may leave batch_sizes out."""
    micro_batch_size: int = 0
    """Gradient accumulation: a batch larger than this runs as near-equal parts of at most this
    many examples whose gradients add up to the full-batch mean gradient, so batch sizes beyond
    a GPU's memory still train (BatchNorm then normalises per part, as on several GPUs).
    0 = one pass. Workloads on the shared supervised loop only."""

    # ---- derived --------------------------------------------------------------------------
    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def tuned(self) -> bool:
        return self.strategy.name == "tuned"

    @property
    def trials_per_study(self) -> int:
        return self.lr_search.trials_per_batch_size if self.tuned else 1

    @property
    def search_trials(self) -> int:
        return len(self.batch_sizes) * len(self.seeds) * self.trials_per_study

    @property
    def confirm_lr_factors(self) -> tuple[float, ...]:
        """The LRs a study's confirmation runs train, as factors of its chosen LR: the chosen
        one and the next lower where an LR search chose (:data:`CONFIRM_LR_FACTORS`), the
        computed LR alone where none did (nothing was selected)."""
        return CONFIRM_LR_FACTORS if self.tuned else (1.0,)

    @property
    def confirm_trials(self) -> int:
        return (
            len(self.batch_sizes) * len(self.seeds) * self.lr_search.confirm_seeds
            * len(self.confirm_lr_factors)
        )  # fmt: skip

    @property
    def total_trials(self) -> int:
        """Search trials (at most) plus confirmation runs."""
        return self.search_trials + self.confirm_trials

    def max_steps_for(self, batch_size: int, train_size: int | None) -> int:
        if self.budget.max_steps > 0:
            return self.budget.max_steps
        if train_size is None:
            raise JobError(
                "budget.epochs needs a workload with a known training-set size; use budget.max_steps"
            )
        n = max(1, int(round(train_size * self.data.fraction)))
        return max(1, math.ceil(self.budget.epochs * n / batch_size))

    def schedule(self) -> Schedule:
        s = self.strategy
        return Schedule(
            strategy=s.name,
            base_batch_size=s.base_batch_size,
            base_lr=s.base_lr,
            warmup_epochs=s.warmup_epochs,
            warmup_steps=s.warmup_steps,
            decay_epochs=tuple(s.decay_epochs),
            decay_factor=s.decay_factor,
            decay=s.decay,
            final_lr_fraction=s.final_lr_fraction,
            wsd_decay_fraction=s.wsd_decay_fraction,
            horizon_steps=s.horizon_steps,
        )

    def trial_config(
        self, batch_size: int, lr: float, seed: int, train_size: int | None
    ) -> TrialConfig:
        return TrialConfig(
            workload=self.workload,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            max_steps=self.max_steps_for(batch_size, train_size),
            eval_every=self.eval_every,
            target=self.target,
            schedule=self.schedule(),
            optimizer=self.optimizer.name,
            momentum=self.optimizer.momentum,
            weight_decay=self.optimizer.weight_decay,
            betas=(float(self.optimizer.betas[0]), float(self.optimizer.betas[-1])),
            eps=self.optimizer.eps,
            divergence_factor=self.divergence_factor,
            checkpoint_every=self.checkpoint_every,
            data_fraction=self.data.fraction,
            data_root=self.data.root,
            noise_scale=self.log_noise_scale,
            micro_batch_size=self.micro_batch_size,
            options=dict(self.options),
            code_dir=self.code_dir,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- parsing -------------------------------------------------------------------------------
