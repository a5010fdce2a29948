"""`nqm_exact` and `nqm_sgd`: the noisy quadratic model as trainables (docs/science.md §6).

Both train L(theta) = 1/2 sum_i h_i theta_i^2 with h_i = i^-exponent and gradient noise of
variance c_i / B, c_i = noise_scale * h_i, from E theta_i^2 = s0. Options: ``dim`` (10000),
``exponent`` (1.0), ``noise_scale`` (1.0), ``s0`` (1.0); ``nqm_exact`` also ``max_reports``
and ``seconds_per_step`` (0: off; else each report waits as long as its steps would take, so
a sweep's reports arrive in the time order real training would give them).

- ``nqm_exact`` follows the exact expected loss (:mod:`trainables.nqm_truth`): milliseconds
  per trial at any step count. ``train_loss`` = ``eval_loss`` = the expected loss E L(theta_k).
  Target and divergence are found at the exact step (not only at eval points), so a reached
  trial's ``steps_to_target`` is the exact first step below the target (for momentum: see
  :meth:`MomentumPath.first_step`), and its last report is at that step. Eval points are the
  multiples of ``eval_every``; beyond ``max_reports`` (100) of them, about that many spaced
  geometrically (a runner stopping trials at reports then overshoots by a bounded fraction).
  Linear LR warm-up is followed step by step, then the closed form takes over; step decay is
  not supported (constant LR after warm-up).
- ``nqm_sgd`` samples the same SGD (heavy-ball momentum as in ``torch.optim.SGD``), float64,
  seeded, and reports the loss L(theta_k) of its iterate at eval points (the target is checked
  there, as in the supervised loop); its mean over seeds is the exact curve. Each step draws
  the two halves of the batch separately (b = B // 2), so with ``noise_scale=True`` it logs
  the B_simple estimate of :mod:`trainables.noise_scale` (EMA over steps, ``noise_ema``
  0.99), next to the same EMA of the closed forms at the iterates: ``noise_scale_trsigma_true``
  (sum c_i), ``noise_scale_gsq_true`` (sum h_i^2 theta_i^2), ``noise_scale_bsimple_true``.

Epochs: the NQM has no data set; an epoch is a nominal ``EPOCH_EXAMPLES`` = 10^6 examples
(``train_size`` of both workloads), so epoch-based budgets and warm-ups have a fixed meaning.
Targets: any loss metric (``eval_loss``, ``train_loss``, ``train_loss_ema``) is taken as the
expected loss for ``nqm_exact``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainables import schedules
from trainables.api import Report, Status, StopRule, Target, TrialConfig
from trainables.noise_scale import NoiseScaleEMA, two_batch_estimates
from trainables.nqm_truth import NQM, MomentumPath, SGDPath, momentum_matrix
from trainables.options import parse_options
from trainables.registry import Workload, register

EPOCH_EXAMPLES = 10**6


@dataclass(frozen=True)
class NQMOptions:
    dim: int = 10_000  # dimensions of the quadratic (Zhang et al. 2019 use 10^4)
    exponent: float = 1.0  # curvatures h_i = i^-exponent
    noise_scale: float = 1.0  # gradient noise covariance c_i = noise_scale * h_i
    s0: float = 1.0  # initial E[theta_i^2]
    max_reports: int = 100  # most eval points; beyond, they are spaced geometrically
    noise_ema: float = 0.99  # nqm_sgd with log_noise_scale: EMA of the B_simple estimates
    seconds_per_step: float = 0.0  # nqm_exact: paced as if each step took this long (0: off)

    def __post_init__(self) -> None:
        if not self.seconds_per_step >= 0:
            raise ValueError(
                f"seconds_per_step: {self.seconds_per_step!r}; use 0 (off) or a pace > 0, e.g. 1e-5"
            )


def options(config: TrialConfig) -> NQMOptions:
    return parse_options(NQMOptions, config.options, config.workload)


def problem(config: TrialConfig) -> NQM:
    o = options(config)
    return NQM(dim=o.dim, exponent=o.exponent, noise_scale=o.noise_scale, s0=o.s0)


def _check(config: TrialConfig) -> None:
    if config.schedule.decay_epochs:
        raise ValueError(
            "nqm workloads: step decay (decay_epochs) is not supported; use a constant LR"
        )
    if config.schedule.decay not in ("constant", "step"):
        raise ValueError(
            f"nqm workloads: decay {config.schedule.decay!r} is not modelled; use a constant LR"
        )
    if config.optimizer not in ("sgd",):
        raise ValueError(
            f"nqm workloads: optimizer {config.optimizer!r} is not modelled; use sgd (with momentum)"
        )
    if config.target.direction != "min":
        raise ValueError("nqm workloads: the target is a loss; use direction 'min'")


def _eval_points(config: TrialConfig, end: int, start: int) -> list[int]:
    """Eval points in (start, end): every multiple of eval_every if there are fewer than
    max_reports, else about max_reports of them spaced geometrically (each a multiple of
    eval_every): a runner that stops trials at reports overshoots by a bounded fraction."""
    max_reports = max(options(config).max_reports, 2)
    e = config.eval_every
    n = (end - 1) // e
    if n < max_reports:
        idx = np.arange(1, n + 1)
    else:
        idx = np.unique(np.round(np.geomspace(1, n, max_reports - 1)).astype(np.int64))
    return [int(i) * e for i in idx if start < int(i) * e < end]


def train_exact(config: TrialConfig, report: Report, state: dict | None = None) -> None:
    _check(config)
    t0 = time.perf_counter()
    nqm = problem(config)
    B, beta = config.batch_size, config.momentum
    steps_per_epoch = EPOCH_EXAMPLES / B
    warm = min(schedules.warmup_steps(config.schedule, steps_per_epoch), config.max_steps)
    loss0 = nqm.initial_loss()
    limit = config.divergence_factor * loss0
    target = config.target.value

    # Start: s0, or the moments a checkpoint holds (a base run's branch point): a branch goes on
    # from them at its own batch size and LR. Checkpoints without moments are recomputed from
    # the start (reports up to their step are skipped).
    done = int(state["step"]) if state else 0
    x = np.zeros((3, nqm.dim))
    x[0] = nqm.s0
    start = 0
    if state is not None and "x" in state:
        x, start = np.array(state["x"], dtype=np.float64), done
    # Warm-up: the LR changes every step, so follow the 3-state recurrence step by step.
    warm_x = {start: x}
    end, status = None, Status.RUNNING
    for k in range(start, warm):
        lr = schedules.lr_at(k, config.lr, config.schedule, steps_per_epoch)
        m, n = momentum_matrix(nqm, B, lr, beta)
        with np.errstate(over="ignore", invalid="ignore"):
            x = (m * x[None]).sum(1) + n
        warm_x[k + 1] = x
        loss = 0.5 * float(nqm.h @ x[0])
        if not math.isfinite(loss) or loss > limit:
            end, status = k + 1, Status.DIVERGED
        elif loss < target:
            end, status = k + 1, Status.REACHED
        if end is not None:
            break

    origin = max(warm, start)  # the closed form's step 0
    path: SGDPath | MomentumPath
    if beta == 0.0:
        path = SGDPath(nqm, B, config.lr, s_init=x[0])
    else:
        path = MomentumPath(nqm, B, config.lr, beta, x_init=x)
    if end is None:
        horizon = max(config.max_steps - origin, 0)
        k_t = path.first_step(below=target, k_max=horizon)
        k_d = path.first_step(above=limit, k_max=horizon)
        end, status = config.max_steps, Status.NOT_REACHED
        if k_d is not None and (k_t is None or k_d <= k_t):
            end, status = origin + k_d, Status.DIVERGED
        elif k_t is not None:
            end, status = origin + k_t, Status.REACHED

    def moments_at(k: int) -> np.ndarray:
        """The 3-state moments (E theta^2, E v^2, E theta v) at step k (for a checkpoint)."""
        if k <= origin:
            return warm_x[k]
        if isinstance(path, MomentumPath):
            return path.jump(path.x_init, k - origin)
        out = np.zeros((3, nqm.dim))
        out[0] = path.moments(float(k - origin))  # plain SGD: v is the last gradient, no memory
        return out

    def losses_at(ks: list[int]) -> list[float]:
        late = [k - origin for k in ks if k > origin]
        tail = [float(v) for v in path.losses(late)] if late else []
        return [0.5 * float(nqm.h @ warm_x[k][0]) for k in ks if k <= origin] + tail

    branch_points = {k for k in config.checkpoint_at if done < k <= end}
    ks = sorted(set(_eval_points(config, end, done)) | branch_points | {end})
    ema = state["ema"] if state else None
    # Paced (seconds_per_step): each report waits as long as its steps would have taken, so
    # reports arrive in the time order of real training and a runner's stops act when they
    # would (an unpaced trial has run to its end before its first report is read).
    pace, paced_to = options(config).seconds_per_step, done
    for i, (k, loss) in enumerate(zip(ks, losses_at(ks), strict=True)):
        if pace > 0:
            time.sleep(pace * max(0, k - paced_to))
            paced_to = k
        ema = loss if ema is None else config.ema_beta * ema + (1 - config.ema_beta) * loss
        last = i == len(ks) - 1
        metrics: dict[str, Any] = {
            "step": k,
            "examples": k * B,
            "epoch": k * B / EPOCH_EXAMPLES,
            "lr": schedules.lr_at(k - 1, config.lr, config.schedule, steps_per_epoch),
            "train_loss": loss,
            "train_loss_ema": ema,
            "eval_loss": loss,
            "wall_time": time.perf_counter() - t0,
            "status": str(status if last else Status.RUNNING),
        }
        if last and status == Status.REACHED:
            metrics["steps_to_target"] = k
        ckpt = None
        if k in branch_points and not (last and status == Status.DIVERGED):
            ckpt = {"step": k, "ema": ema, "x": moments_at(k)}
        elif not last and config.checkpoint_every and (i + 1) % config.checkpoint_every == 0:
            ckpt = {"step": k, "ema": ema}  # the path is recomputed in milliseconds
        report(metrics, ckpt)


def train_sgd(config: TrialConfig, report: Report, state: dict | None = None) -> None:
    _check(config)
    t0 = time.perf_counter()
    nqm = problem(config)
    B, beta = config.batch_size, config.momentum
    device = torch.device(
        "cuda" if config.device == "auto" and torch.cuda.is_available() else
        ("cpu" if config.device == "auto" else config.device)
    )  # fmt: skip
    h = torch.as_tensor(nqm.h, device=device)
    std = torch.as_tensor(np.sqrt(nqm.c), device=device)  # per-example noise std
    b1, b2 = B // 2, B - B // 2
    gen = torch.Generator(device=device).manual_seed(config.seed)
    theta = torch.full_like(h, math.sqrt(nqm.s0))  # E theta_i^2 = s0 exactly, as in the recurrence
    v = torch.zeros_like(h)
    noise_beta = options(config).noise_ema
    noise = NoiseScaleEMA(noise_beta) if config.noise_scale else None
    truth = NoiseScaleEMA(noise_beta)  # the same average of the closed forms, for comparison
    trsigma = float(nqm.c.sum())
    step, ema = 0, None
    stop_rule = StopRule(config.target)
    if state is not None:
        theta, v = state["theta"].to(device), state["v"].to(device)
        gen.set_state(state["gen"])
        step, ema = state["step"], state["ema"]
        if "stop_rule" in state:
            stop_rule.load_state_dict(state["stop_rule"])
        if noise is not None:
            noise.load_state_dict(state["noise"])
            truth.load_state_dict(state["noise_true"])
    steps_per_epoch = EPOCH_EXAMPLES / B
    loss0 = nqm.initial_loss()
    evals = 0
    while step < config.max_steps:
        lr = schedules.lr_at(step, config.lr, config.schedule, steps_per_epoch)
        grad = h * theta
        if b1 == 0:  # B = 1: one draw of variance c
            g = grad + std * torch.randn(h.shape, generator=gen, device=device, dtype=h.dtype)
        else:  # the two halves' mean gradients; their weighted mean has noise variance c / B
            g1 = grad + std / math.sqrt(b1) * torch.randn(
                h.shape, generator=gen, device=device, dtype=h.dtype
            )
            g2 = grad + std / math.sqrt(b2) * torch.randn(
                h.shape, generator=gen, device=device, dtype=h.dtype
            )
            g = (b1 * g1 + b2 * g2) / B
            if noise is not None:
                sq_big = g.square().sum()
                e1 = two_batch_estimates(g1.square().sum(), sq_big, b1, B)
                e2 = two_batch_estimates(g2.square().sum(), sq_big, b2, B)
                noise.update((e1[0] + e2[0]) / 2, (e1[1] + e2[1]) / 2)
                truth.update(grad.square().sum(), trsigma)
        v = beta * v + g if beta else g
        theta = theta - lr * v
        step += 1
        branch_point = step in config.checkpoint_at  # a base run's branch point: report there
        if step % config.eval_every and step < config.max_steps and not branch_point:
            continue
        loss = 0.5 * float(h @ theta.square())
        ema = loss if ema is None else config.ema_beta * ema + (1 - config.ema_beta) * loss
        metrics: dict[str, Any] = {
            "step": step,
            "examples": step * B,
            "epoch": step * B / EPOCH_EXAMPLES,
            "lr": lr,
            "train_loss": loss,
            "train_loss_ema": ema,
            "eval_loss": loss,
            "wall_time": time.perf_counter() - t0,
        }
        if noise is not None:
            metrics.update(noise.metrics())
            metrics.update({f"{k}_true": v for k, v in truth.metrics().items()})
        diverged = not math.isfinite(loss) or loss > config.divergence_factor * loss0
        stop_rule.update(None if diverged else metrics.get(config.target.metric), step)
        status = stop_rule.status(step, config, diverged)
        if status == Status.REACHED:
            metrics["steps_to_target"] = stop_rule.reached_at
        metrics["status"] = str(status)
        evals += 1
        ckpt = None
        if (branch_point and status != Status.DIVERGED) or (
            status == Status.RUNNING
            and config.checkpoint_every
            and evals % config.checkpoint_every == 0
        ):
            ckpt = {
                "theta": theta.cpu(),
                "v": v.cpu(),
                "gen": gen.get_state(),
                "step": step,
                "ema": ema,
                "stop_rule": stop_rule.state_dict(),
            }
            if noise is not None:
                ckpt["noise"], ckpt["noise_true"] = noise.state_dict(), truth.state_dict()
        report(metrics, ckpt)
        if status != Status.RUNNING:
            return


register(
    Workload(
        name="nqm_exact",
        description="noisy quadratic model, exact expected loss (ms per trial; known answer)",
        metrics={"eval_loss": "min"},
        default_target=Target("eval_loss", 0.01, "min"),
        train_size=EPOCH_EXAMPLES,
        train=train_exact,
        options=NQMOptions,
    )
)
register(
    Workload(
        name="nqm_sgd",
        description="noisy quadratic model, sampled SGD (seeded; mean over seeds = nqm_exact)",
        metrics={"eval_loss": "min"},
        default_target=Target("eval_loss", 0.01, "min"),
        train_size=EPOCH_EXAMPLES,
        train=train_sgd,
        options=NQMOptions,
    )
)
