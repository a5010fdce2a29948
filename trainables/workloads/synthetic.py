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

import torch
from torch import nn

from trainables.api import Target, TrialConfig
from trainables.loop import Task, TensorBatches
from trainables.registry import Workload, register


def build(config: TrialConfig, device: torch.device) -> Task:
    o = config.options
    dim, n, noise = int(o.get("dim", 16)), int(o.get("n_train", 4096)), float(o.get("noise", 0.5))
    g = torch.Generator().manual_seed(int(o.get("data_seed", 0)))
    w_true = torch.randn(dim, 1, generator=g)
    scales = torch.linspace(0.5, 1.5, dim)  # anisotropic inputs: a spread of curvatures
    x = torch.randn(n + 1024, dim, generator=g) * scales
    y = x @ w_true + noise * torch.randn(n + 1024, 1, generator=g)
    n_used = max(1, int(round(n * config.data_fraction)))
    xtr, ytr = x[:n_used].to(device), y[:n_used].to(device)
    xva, yva = x[n:].to(device), y[n:].to(device)
    model = nn.Linear(dim, 1)
    sleep = float(o.get("sleep_per_step", 0.0))
    fail_at, marker = int(o.get("fail_at_step", 0)), str(o.get("fail_marker", ""))
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
        defaults={"lr_min": 1e-3, "lr_max": 2.0},
    )
)
