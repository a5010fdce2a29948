"""The optimizer of a trial, from its plain-data config (``TrialConfig.optimizer`` and friends).

``sgd``: heavy-ball SGD (``momentum``, L2 ``weight_decay``); ``nesterov``: SGD with Nesterov
momentum; ``adam``: Adam (``betas``, ``eps``, L2 ``weight_decay`` added to the gradient);
``adamw``: Adam with decoupled weight decay (Loshchilov & Hutter). The learning rate is set
at every step by the loop from :func:`trainables.schedules.lr_at`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from trainables.api import InputError, TrialConfig

OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw")
ADAPTIVE = ("adam", "adamw")  # per-coordinate step sizes: srsr is their LR-scaling rule


def make_optimizer(
    params: Iterable[torch.nn.Parameter], config: TrialConfig
) -> torch.optim.Optimizer:
    """The torch optimizer ``config`` names, at learning rate ``config.lr``."""
    name = config.optimizer
    if name in ("sgd", "nesterov"):
        if name == "nesterov" and config.momentum <= 0:
            raise InputError("optimizer.momentum: nesterov needs momentum > 0, e.g. 0.9")
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=name == "nesterov",
        )
    if name in ADAPTIVE:
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return cls(
            params,
            lr=config.lr,
            betas=tuple(config.betas),
            eps=config.eps,
            weight_decay=config.weight_decay,
        )
    raise InputError(f"optimizer.name: unknown {name!r}; use one of {', '.join(OPTIMIZERS)}")
