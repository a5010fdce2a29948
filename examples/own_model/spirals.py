"""Two interleaved spirals told apart by a small MLP: a complete user workload for critbatch.

Nothing here lives in critbatch: the model, the data, the loss and the metrics are this
module's. critbatch finds it through the job file (``workload: "spirals:build"``; this file
sits beside job.yaml), checks ``options:`` against :class:`Options`, and runs ``build`` in its
shared training loop with the optimizer and schedule the job names (AdamW, cosine decay).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainables import Task, TrialConfig


@dataclass(frozen=True)
class Options:
    width: int = 64  # hidden units of each of the two hidden layers
    n_train: int = 4096  # training points (1,024 more are the validation set)
    noise: float = 0.1  # standard deviation of the Gaussian jitter added to each point
    data_seed: int = 0  # seed of the generated data (the trial seed drives init and batch order)
    as_dataset: bool = False  # hand the loop a torch Dataset (read item by item) instead of tensors


OPTIONS = Options  # the options a job may set: an unknown or mistyped one is an error
METRICS = {
    "eval_loss": "min",
    "eval_accuracy": "max",
}  # what evaluate returns, and which way is better
TRAIN_SIZE = Options.n_train  # training examples at the default options (for epoch budgets)


def spirals(n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points on two spirals (one turn each) and their labels (0 or 1)."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 2, (n,), generator=g)
    t = torch.rand(n, generator=g) * 2 * math.pi  # angle along the spiral, radians (one turn)
    r = 0.2 + t / (2 * math.pi)  # radius grows from 0.2 to 1.2
    angle = t + math.pi * label
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
    return x + noise * torch.randn(n, 2, generator=g), label


class PointDataset(torch.utils.data.Dataset):
    """The same points as a map-style Dataset: one (point, label) per index."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def build(config: TrialConfig, device: torch.device) -> Task:
    o = Options(**config.options)  # every default is filled in and every value checked
    x, y = spirals(o.n_train + 1024, o.noise, o.data_seed)
    n = max(1, int(round(o.n_train * config.data_fraction)))
    xva, yva = x[o.n_train :].to(device), y[o.n_train :].to(device)
    model = nn.Sequential(
        nn.Linear(2, o.width),
        nn.GELU(),
        nn.Linear(o.width, o.width),
        nn.GELU(),
        nn.Linear(o.width, 2),
    )

    def loss(m: nn.Module, batch) -> torch.Tensor:
        xb, yb = batch
        return F.cross_entropy(m(xb), yb)  # the batch's mean loss: a scalar

    def evaluate(m: nn.Module) -> dict[str, float]:
        logits = m(xva)
        return {
            "eval_loss": float(F.cross_entropy(logits, yva)),
            "eval_accuracy": float((logits.argmax(1) == yva).float().mean()),
        }

    batches = PointDataset(x[:n], y[:n]) if o.as_dataset else (x[:n], y[:n])
    return Task(model=model, batches=batches, loss=loss, evaluate=evaluate, train_size=n)
