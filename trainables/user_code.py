"""Workloads from the user's own code: ``workload: "my_module:build"`` in a job file.

``module:function`` names a function in a module found with ``code_dir`` (the job file's
folder) first on the import path, then the usual path. By its signature it is either

- ``build(config, device) -> Task``: runs in the shared loop (trainables.loop) with all it
  gives: checkpoints, micro-batches, B_simple, the on-device data path; or
- ``train(config, report, state)``: the user's own loop, under the contract of
  :mod:`trainables.api`.

The module may declare, at its top level, ``OPTIONS`` (a dataclass: the options its job may
set, with defaults; ``config.options`` then arrives with every default filled in),
``METRICS`` (metric name -> "min" or "max"; default ``{"eval_loss": "min"}``) and
``TRAIN_SIZE`` (training examples, for epoch budgets and warm-ups in epochs).

:func:`probe` imports the module and builds one tiny batch; ``python -m trainables.user_code``
runs it in a fresh process (``critbatch check`` does, before anything launches), so a user
module that crashes or hangs cannot take the driver with it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math
import os
import sys
import traceback
from typing import Any

from trainables.api import InputError, Target, TrialConfig
from trainables.workload import Workload

BUILD_PARAMS = ("config", "device")
TRAIN_PARAMS = ("config", "report", "state")
_CACHE: dict[tuple[str, str], Workload] = {}


def is_user_workload(name: str) -> bool:
    return ":" in name


def split_spec(spec: str) -> tuple[str, str]:
    module, _, attr = spec.partition(":")
    ok = all(p.isidentifier() for p in module.split(".")) and attr.isidentifier()
    if not ok:
        raise InputError(
            f'workload: {spec!r} is not `module:function`; write e.g. workload: "my_model:build" '
            '(my_model.py in the job file\'s folder) or "my_pkg.sub:build"'
        )
    return module, attr


def _import(module: str, code_dir: str) -> Any:
    if code_dir and os.path.isdir(code_dir):
        code_dir = os.path.abspath(code_dir)
        if code_dir not in sys.path:
            sys.path.insert(0, code_dir)
        _forget_if_elsewhere(module, code_dir)
    where = f"{code_dir!r} or the Python path" if code_dir else "the Python path"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise InputError(
                f"workload: no module {module!r} in {where}; put {module.replace('.', '/')}.py in the "
                "job file's folder, or set code_dir: to the folder that holds it"
            ) from None
        raise InputError(_raised(f"workload: module {module!r} failed to import", e)) from None
    except Exception as e:  # anything the user's module raises at import time
        raise InputError(_raised(f"workload: module {module!r} failed to import", e)) from None


def _forget_if_elsewhere(module: str, code_dir: str) -> None:
    """A module of the same name imported earlier from another folder (a second project in
    one notebook session) is dropped, so this job gets the module in its own ``code_dir``."""
    top = module.split(".")[0]
    loaded = sys.modules.get(top)
    here = os.path.join(code_dir, top)
    if loaded is None or not (os.path.isfile(here + ".py") or os.path.isdir(here)):
        return
    file = os.path.abspath(getattr(loaded, "__file__", "") or "")
    if not file.startswith(code_dir + os.sep):
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]


def _raised(what: str, e: BaseException) -> str:
    """``what``, the exception and the user's line that raised it."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "trainables" not in f.filename]
    at = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{what}: {type(e).__name__}: {e}{at}; fix the error there"


def _contract(spec: str, fn: Any) -> str:
    """``build`` or ``train``, from the parameters ``fn`` takes."""
    if not callable(fn):
        raise InputError(f"workload: {spec} is a {type(fn).__name__}, not a function; name a "
                         "build(config, device) or train(config, report, state) function")  # fmt: skip
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return "build"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    star = any(p.kind == p.VAR_POSITIONAL for p in params)

    def fits(n: int) -> bool:
        return len(required) <= n and (n <= len(positional) or star)

    if fits(2) and fits(3):  # e.g. (config, device=None, state=None): the names decide
        return "train" if "report" in [p.name for p in positional] else "build"
    if fits(2):
        return "build"
    if fits(3):
        return "train"
    got = ", ".join(p.name for p in params)
    raise InputError(
        f"workload: {spec} takes ({got}); a build function takes (config, device) and returns a "
        "Task, a train function takes (config, report, state): change its parameters"
    )


def load_user_workload(spec: str, code_dir: str = "") -> Workload:
    """The :class:`Workload` that ``spec`` (``module:function``) names; raises InputError."""
    key = (spec, os.path.abspath(code_dir) if code_dir else "")
    if key in _CACHE:
        return _CACHE[key]
    module_name, attr = split_spec(spec)
    module = _import(module_name, code_dir)
    if not hasattr(module, attr):
        funcs = [
            n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")
        ]
        raise InputError(
            f"workload: module {module_name!r} ({module.__file__}) has no {attr!r}; define "
            f"`def {attr}(config, device)` there or name one of: {', '.join(funcs) or 'none'}"
        )
    fn = getattr(module, attr)
    contract = _contract(spec, fn)
    schema = getattr(module, "OPTIONS", None)
    if schema is not None and not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise InputError(f"workload: {module_name}.OPTIONS must be a dataclass (fields with defaults), "
                         f"got {schema!r}")  # fmt: skip
    metrics = getattr(module, "METRICS", {"eval_loss": "min"})
    if not isinstance(metrics, dict) or not all(v in ("min", "max") for v in metrics.values()):
        raise InputError(f"workload: {module_name}.METRICS must map metric names to \"min\" or "
                         f"\"max\", got {metrics!r}")  # fmt: skip
    train_size = getattr(module, "TRAIN_SIZE", None)
    if train_size is not None and (not isinstance(train_size, int) or train_size < 1):
        raise InputError(
            f"workload: {module_name}.TRAIN_SIZE must be a positive integer, got {train_size!r}"
        )
    first = next(iter(metrics), "train_loss")
    doc = (inspect.getdoc(fn) or inspect.getdoc(module) or "").strip().splitlines()
    kwargs: dict[str, Any] = {"build": _with_options(fn, schema, spec)} if contract == "build" else {
        "train": _with_options(fn, schema, spec)}  # fmt: skip
    workload = Workload(
        name=spec,
        description=(doc[0] if doc else f"user workload {spec}") + f" ({module.__file__})",
        metrics=dict(metrics),
        default_target=Target(first, 0.0, metrics.get(first, "min")),
        train_size=train_size,
        options=schema,
        **kwargs,
    )
    _CACHE[key] = workload
    return workload


def _with_options(fn: Any, schema: type | None, spec: str) -> Any:
    """``fn`` called with ``config.options`` filled in from the declared defaults."""
    from trainables.options import filled_options

    def call(config: TrialConfig, *args: Any) -> Any:
        config = dataclasses.replace(config, options=filled_options(schema, config.options, spec))
        return fn(config, *args)

    return call


# ---- probe: import, build, one tiny batch --------------------------------------------------
TASK_FIELDS = ("model", "batches", "loss", "evaluate", "train_size")


def _check_task(spec: str, task: Any) -> None:
    from trainables.loop import Task

    have = set(task) if isinstance(task, dict) else {f for f in TASK_FIELDS if hasattr(task, f)}
    if isinstance(task, dict) or task is None or not have >= set(TASK_FIELDS):
        missing = [f for f in TASK_FIELDS if f not in have] or ["the Task type"]
        raise InputError(
            f"workload: {spec} returned {type(task).__name__}, without {', '.join(missing)}; "
            "return Task(model=..., batches=..., loss=..., evaluate=..., train_size=...) "
            "(from trainables import Task)"
        )
    for f in TASK_FIELDS:
        if getattr(task, f) is None:
            raise InputError(f"workload: {spec} returned a Task whose `{f}` is None; give it a value "
                             f"({Task.__doc__.split(chr(10))[0]})")  # fmt: skip
    import torch

    if not isinstance(task.model, torch.nn.Module):
        raise InputError(
            f"workload: Task.model of {spec} is a {type(task.model).__name__}; give a torch.nn.Module"
        )
    for f in ("loss", "evaluate"):
        if not callable(getattr(task, f)):
            raise InputError(f"workload: Task.{f} of {spec} is not callable; give a function")
    if (
        isinstance(task.train_size, bool)
        or not isinstance(task.train_size, int)
        or task.train_size < 1
    ):
        raise InputError(f"workload: Task.train_size of {spec} is {task.train_size!r}; give the "
                         "number of training examples (a positive integer)")  # fmt: skip


def probe(
    spec: str, code_dir: str = "", options: dict[str, Any] | None = None, batch_size: int = 2
) -> dict[str, Any]:
    """Import ``spec``, build it on the CPU, take one batch of ``batch_size``, check the loss is
    a scalar that back-propagates and ``evaluate`` gives the declared metrics. Returns what it
    saw (contract, loss, metrics); raises :class:`InputError` naming the field and the fix."""
    import torch

    from trainables.batches import as_batches

    workload = load_user_workload(spec, code_dir)
    workload.check_options(options or {})
    if workload.train is not None:
        return {"contract": "train"}
    config = TrialConfig(workload=spec, batch_size=batch_size, lr=1e-3, max_steps=1, device="cpu",
                         options=dict(options or {}), code_dir=code_dir)  # fmt: skip
    try:
        task = workload.build(config, torch.device("cpu"))
    except InputError:
        raise
    except Exception as e:
        raise InputError(_raised(f"workload: {spec}(config, device) raised", e)) from None
    _check_task(spec, task)
    try:
        batches = as_batches(task.batches, batch_size, 0, torch.device("cpu"))
    except TypeError as e:
        raise InputError(f"workload: {e}") from None
    try:
        batch = next(batches)
        loss = task.loss(task.model, batch)
    except Exception as e:
        raise InputError(_raised(f"workload: Task.loss of {spec} on one batch raised", e)) from None
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise InputError(
            f"workload: Task.loss of {spec} returned {shape}, not a scalar tensor; return the "
            "batch's mean loss, e.g. F.cross_entropy(model(x), y) or per_example.mean()"
        )
    if not loss.requires_grad:
        raise InputError(f"workload: Task.loss of {spec} does not depend on the model's parameters "
                         "(no gradient); compute it from model(batch)")  # fmt: skip
    loss.backward()
    try:
        with torch.no_grad():
            metrics = task.evaluate(task.model)
    except Exception as e:
        raise InputError(_raised(f"workload: Task.evaluate of {spec} raised", e)) from None
    if not isinstance(metrics, dict):
        raise InputError(f"workload: Task.evaluate of {spec} returned {type(metrics).__name__}; "
                         "return a dict of metric name -> number, e.g. {'eval_loss': 0.4}")  # fmt: skip
    missing = [m for m in workload.metrics if m not in metrics]
    if missing:
        raise InputError(f"workload: Task.evaluate of {spec} gives {sorted(metrics)}, not the "
                         f"declared METRICS {missing}; return them or fix METRICS")  # fmt: skip
    values = {k: float(v) for k, v in metrics.items()}
    return {"contract": "build", "loss": float(loss), "metrics": values,
            "finite": all(math.isfinite(v) for v in values.values())}  # fmt: skip


if __name__ == "__main__":
    # `python -m trainables.user_code '{"spec": ..., "code_dir": ..., "options": {...}}'`:
    # the probe in a process of its own; one JSON line out ({"ok": true, ...} or the error).
    args = json.loads(sys.argv[1])
    try:
        out = {"ok": True, **probe(args["spec"], args.get("code_dir", ""), args.get("options"))}
    except InputError as e:
        out = {"ok": False, "error": str(e)}
    print(json.dumps(out))
