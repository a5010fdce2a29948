"""The workload registry: name -> :class:`Workload`.

A workload is a model, its data, its loss and its eval metrics behind one small interface.
Supervised workloads give a ``build`` that returns a :class:`trainables.loop.Task` and run in
the shared loop (:func:`trainables.loop.train_supervised`); others (the exact noisy quadratic
model) give their own ``train`` function. Modules register their workloads on import; the
registry imports them lazily, so ``critbatch workloads`` does not import torchvision models
it does not need.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainables.api import Report, Target, TrialConfig

# Modules that define workloads. Each calls `register(...)` at import time.
WORKLOAD_MODULES = (
    "trainables.workloads.digits",
    "trainables.workloads.synthetic",
    "trainables.workloads.nqm",
    "trainables.workloads.vision",
    "trainables.workloads.language",
    "trainables.workloads.segmentation",
)


@dataclass(frozen=True)
class Workload:
    """One entry of the registry.

    ``metrics`` maps every metric the workload reports (beyond the required ones) to its
    direction ("min" or "max"); a job's target must name one of these or ``train_loss`` /
    ``train_loss_ema``. ``train_size`` is the number of training examples at data_fraction 1
    (used to turn epochs into steps before a trial starts); ``None`` if it depends on data
    on disk. ``build(config, device) -> Task`` for supervised workloads, or
    ``train(config, report, state)`` for workloads with their own loop.
    """

    name: str
    description: str
    metrics: dict[str, str]
    default_target: Target
    train_size: int | None = None
    build: Callable[..., Any] | None = None
    train: Callable[[TrialConfig, Report, dict | None], None] | None = None
    dataset: str | None = None  # on-disk dataset it reads (for `critbatch data`), if any
    cpu_friendly: bool = True  # small enough to run on a laptop CPU
    defaults: dict[str, Any] = field(default_factory=dict)  # suggested job settings
    # Why a batch cannot be cut into parts (micro-batches, B_simple's two half batches);
    # "" when it can. Job fields that would cut it are refused with this reason.
    whole_batches: str = ""
    # Declared options: a dataclass with defaults and docs (trainables.options); None = none.
    options: type | None = None

    def all_metrics(self) -> dict[str, str]:
        return {"train_loss": "min", "train_loss_ema": "min", **self.metrics}

    def check_options(self, options: dict[str, Any]) -> Any:
        """The options checked against the declared schema; raises InputError naming a bad one."""
        from trainables.options import parse_options

        return parse_options(self.options, options, self.name)

    def run(self, config: TrialConfig, report: Report, state: dict | None = None) -> None:
        self.check_options(config.options)
        if self.train is not None:
            self.train(config, report, state)
            return
        from trainables.loop import train_supervised

        train_supervised(self, config, report, state)


_REGISTRY: dict[str, Workload] = {}
_loaded = False


def register(workload: Workload) -> Workload:
    if workload.build is None and workload.train is None:
        raise ValueError(f"workload {workload.name!r} needs `build` or `train`")
    _REGISTRY[workload.name] = workload
    return workload


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in WORKLOAD_MODULES:
        importlib.import_module(mod)
    _loaded = True


def _load_until(name: str) -> None:
    """Import workload modules in order (cheap ones first) until ``name`` is registered, so a
    digits trial never pays for importing torchvision's models."""
    for mod in WORKLOAD_MODULES:
        if name in _REGISTRY:
            return
        importlib.import_module(mod)


def get_workload(name: str, code_dir: str = "") -> Workload:
    """The workload ``name``: a built-in, or ``module:function`` from the user's code (found
    with ``code_dir`` first on the import path; :mod:`trainables.user_code`)."""
    if ":" in name:
        from trainables.user_code import load_user_workload

        return load_user_workload(name, code_dir)
    if name not in _REGISTRY:
        _load_until(name)
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown workload {name!r}; known workloads: {known}")
    return _REGISTRY[name]


def workloads() -> dict[str, Workload]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def run_trial(config: TrialConfig, report: Report, state: dict | None = None) -> None:
    """Run one trial of ``config.workload``: the single entry point runners call."""
    get_workload(config.workload, config.code_dir).run(config, report, state)
