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

from trainables.api import InputError, Report, TrialConfig
from trainables.workload import Workload

_REGISTRY: dict[str, Workload] = {}
_loaded = False

# Modules that define workloads. Each calls `register(...)` at import time.
WORKLOAD_MODULES = (
    "trainables.workloads.digits",
    "trainables.workloads.synthetic",
    "trainables.workloads.nqm",
    "trainables.workloads.vision",
    "trainables.workloads.language",
    "trainables.workloads.segmentation",
)


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
    workload = get_workload(config.workload, config.code_dir)
    if config.batch_size_schedule and workload.build is None:
        raise InputError(
            f"batch_size_schedule: {workload.name} trains with its own loop, which keeps one "
            "batch size; a schedule needs a workload on the shared supervised loop (with "
            "`build`), e.g. digits_mlp"
        )
    workload.run(config, report, state)
