"""`synthetic`: noisy linear regression on generated Gaussian data, for tests.

Milliseconds per trial; it reaches a low loss at moderate learning rates and diverges (the
loss grows without bound) above about 2 / lambda_max of the input covariance, so tests can
provoke a real divergence. Options: ``dim`` (16), ``n_train`` (4096), ``noise`` (0.5),
``data_seed`` (0), ``sleep_per_step`` (seconds, 0: lets fault tests stretch a trial),
``fail_at_step`` (0 = never: raise RuntimeError at that optimizer step of an attempt, counted
from the attempt's start) with ``fail_marker`` (a file path: only the first attempt of any trial
that creates it raises, so exactly one trial fails once and its retry succeeds; without a
marker every attempt raises).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from trainables.api import Target, TrialConfig
from trainables.loop import Task, TensorBatches
from trainables.options import parse_options
from trainables.registry import Workload, register


@dataclass(frozen=True)
class SyntheticOptions:
    dim: int = 16  # input dimension
    n_train: int = 4096  # training examples (1,024 more are the validation set)
    noise: float = 0.5  # standard deviation of the label noise
    data_seed: int = 0  # seed of the generated data (not the trial seed)
    sleep_per_step: float = 0.0  # seconds slept per loss call: stretches a trial for fault tests
    fail_at_step: int = 0  # raise RuntimeError at this step of an attempt (0 = never)
    fail_marker: str = ""  # a file path: only the attempt that creates it fails


def build(config: TrialConfig, device: torch.device) -> Task:
    o = parse_options(SyntheticOptions, config.options, "synthetic")
    dim, n, noise = o.dim, o.n_train, o.noise
    g = torch.Generator().manual_seed(o.data_seed)
    w_true = torch.randn(dim, 1, generator=g)
    scales = torch.linspace(0.5, 1.5, dim)  # anisotropic inputs: a spread of curvatures
    x = torch.randn(n + 1024, dim, generator=g) * scales
    y = x @ w_true + noise * torch.randn(n + 1024, 1, generator=g)
    n_used = max(1, int(round(n * config.data_fraction)))
    xtr, ytr = x[:n_used].to(device), y[:n_used].to(device)
    xva, yva = x[n:].to(device), y[n:].to(device)
    model = nn.Linear(dim, 1)
    sleep = o.sleep_per_step
    fail_at, marker = o.fail_at_step, o.fail_marker
    steps = 0

    def loss(m: nn.Module, batch) -> torch.Tensor:
        nonlocal steps
        steps += 1
        if steps == fail_at and _claim(marker):
            raise RuntimeError(f"synthetic: fail_at_step={fail_at} (an injected fault)")
        if sleep:
            time.sleep(sleep)
        xb, yb = batch
        return 0.5 * ((m(xb) - yb) ** 2).mean()

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"eval_loss": float(0.5 * ((m(xva) - yva) ** 2).mean())}

    return Task(
        model, TensorBatches((xtr, ytr), config.batch_size, config.seed), loss, evaluate, n_used
    )


def _claim(marker: str) -> bool:
    """True for the one caller that creates ``marker`` (atomic across processes); True always
    without a marker."""
    if not marker:
        return True
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


register(
    Workload(
        name="synthetic",
        description="noisy linear regression on Gaussian data (tests; diverges at large LR)",
        metrics={"eval_loss": "min"},
        default_target=Target("eval_loss", 0.2, "min"),
        train_size=4096,
        build=build,
        options=SyntheticOptions,
    )
)
