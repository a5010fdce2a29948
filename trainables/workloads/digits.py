"""`digits_mlp` and `digits_cnn`: scikit-learn's bundled 8x8 handwritten digits.

1,797 real images, no download. The train/validation split is fixed by ``split_seed``
(option, default 0), not by the trial seed, so every trial of a sweep is judged on the same
validation set; the trial seed drives initialisation and batch order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.api import Target, TrialConfig
from trainables.loop import Task, TensorBatches
from trainables.options import parse_options
from trainables.registry import Workload, register

VAL_FRACTION = 0.2
N_TOTAL = 1797
N_TRAIN = N_TOTAL - int(round(N_TOTAL * VAL_FRACTION))


@dataclass(frozen=True)
class MLPOptions:
    width: int = 128  # units of each of the two hidden layers
    split_seed: int = 0  # seed of the fixed train/validation split (not the trial seed)


@dataclass(frozen=True)
class CNNOptions:
    channels: int = 16  # channels of the first convolution (the second has twice as many)
    split_seed: int = 0  # seed of the fixed train/validation split (not the trial seed)


@functools.lru_cache(maxsize=4)
def _digits(split_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data.astype(np.float32) / 16.0 - 0.5) / 0.5  # pixels 0..16 -> [-1, 1]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(split_seed).permutation(len(y))
    n_val = int(round(len(y) * VAL_FRACTION))
    val, train = perm[:n_val], perm[n_val:]
    return x[train], y[train], x[val], y[val]


def _classifier_task(
    model: nn.Module, config: TrialConfig, device: torch.device, image: bool, split_seed: int
) -> Task:
    xtr, ytr, xva, yva = _digits(split_seed)
    n = max(1, int(round(len(ytr) * config.data_fraction)))
    shape = (-1, 1, 8, 8) if image else (-1, 64)
    xtr_t = torch.from_numpy(xtr[:n]).reshape(shape).to(device)
    ytr_t = torch.from_numpy(ytr[:n]).to(device)
    xva_t = torch.from_numpy(xva).reshape(shape).to(device)
    yva_t = torch.from_numpy(yva).to(device)

    def loss(m: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(m(x), y)

    def evaluate(m: nn.Module) -> dict[str, float]:
        logits = m(xva_t)
        acc = float((logits.argmax(1) == yva_t).float().mean())
        return {
            "eval_loss": float(F.cross_entropy(logits, yva_t)),
            "eval_accuracy": acc,
            "eval_error": 1 - acc,
        }

    return Task(
        model, TensorBatches((xtr_t, ytr_t), config.batch_size, config.seed), loss, evaluate, n
    )


def build_mlp(config: TrialConfig, device: torch.device) -> Task:
    o = parse_options(MLPOptions, config.options, "digits_mlp")
    width = o.width
    model = nn.Sequential(
        nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )
    return _classifier_task(model, config, device, False, o.split_seed)


def build_cnn(config: TrialConfig, device: torch.device) -> Task:
    o = parse_options(CNNOptions, config.options, "digits_cnn")
    c = o.channels
    model = nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Flatten(), nn.Linear(2 * c * 16, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip
    return _classifier_task(model, config, device, True, o.split_seed)


METRICS = {"eval_loss": "min", "eval_accuracy": "max", "eval_error": "min"}

register(
    Workload(
        name="digits_mlp",
        description="2-hidden-layer MLP on scikit-learn's 8x8 digits (1,438 train / 359 val images)",
        metrics=METRICS,
        default_target=Target("eval_accuracy", 0.95, "max"),
        train_size=N_TRAIN,
        build=build_mlp,
        options=MLPOptions,
    )
)
register(
    Workload(
        name="digits_cnn",
        description="small 2-conv CNN on scikit-learn's 8x8 digits (1,438 train / 359 val images)",
        metrics=METRICS,
        default_target=Target("eval_accuracy", 0.95, "max"),
        train_size=N_TRAIN,
        build=build_cnn,
        options=CNNOptions,
    )
)
