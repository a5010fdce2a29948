"""Train: PyTorch training functions for critbatch.

A trainable takes a :class:`~trainables.api.TrialConfig` and a ``report`` callable and
trains one (batch size, learning rate, seed) trial, reporting step, examples seen, losses
and eval metrics as it goes. It knows nothing of Ray, Optuna or MLflow. Workloads (model,
data, loss, metrics) are looked up by name in :mod:`trainables.registry`, or come from the
user's own module (``workload: "my_module:build"``, :mod:`trainables.user_code`).

The names a user's workload module imports are exported here and stay stable::

    from trainables import Task, TensorBatches, TrialConfig, Report

They load on first use, so importing a submodule (``trainables.api``) does not import torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "DatasetBatches": "trainables.batches",
    "InputError": "trainables.api",
    "Report": "trainables.api",
    "Schedule": "trainables.api",
    "Status": "trainables.api",
    "Target": "trainables.api",
    "Task": "trainables.loop",
    "TensorBatches": "trainables.batches",
    "TrialConfig": "trainables.api",
    "parse_options": "trainables.options",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainables' has no attribute {name!r}")
