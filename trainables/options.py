"""Workload options as a declared schema: a dataclass with defaults and a doc per field.

A workload (built-in or the user's) declares its ``options`` as a frozen dataclass; a job's
``options:`` mapping is checked against it before anything launches. An unknown or mistyped
option raises :class:`~trainables.api.InputError` naming it and listing the valid ones, instead
of being silently ignored. Field docs are the ``#`` comment or string after each field, as in
the job file's own schema.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import types
import typing
from typing import Any

from trainables.api import InputError

_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _accepts(tp: Any, value: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        return any(_accepts(t, value) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:  # NaN and inf pass every range check a workload makes: refused here
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if origin in (list, tuple):
        return isinstance(value, list | tuple)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return isinstance(value, tp) if isinstance(tp, type) else True


def type_text(tp: Any) -> str:
    """``an integer``, ``true or false or a string``, ... for messages and docs."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return " or ".join("null" if t is type(None) else type_text(t) for t in typing.get_args(tp))
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def option_docs(schema: type) -> dict[str, str]:
    """Field name -> its doc: the string literal after the field, else its trailing comment."""
    try:
        src = inspect.getsource(schema)
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = ast.parse(inspect.cleandoc("\n" + src) if src[0].isspace() else src).body[0].body  # type: ignore[attr-defined]
    lines = src.splitlines()
    for a, b in zip(body, [*body[1:], None], strict=False):
        if not isinstance(a, ast.AnnAssign) or not isinstance(a.target, ast.Name):
            continue
        if isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            docs[a.target.id] = " ".join(str(b.value.value).split())
        elif "#" in lines[a.lineno - 1]:
            docs[a.target.id] = lines[a.lineno - 1].split("#", 1)[1].strip()
    return docs


def describe(schema: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, doc) of every option, for `critbatch workloads` and errors."""
    hints = typing.get_type_hints(schema)
    docs = option_docs(schema)
    out = []
    for f in dataclasses.fields(schema):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, type_text(hints[f.name]), default, docs.get(f.name, "")))
    return out


def parse_options(schema: type | None, options: dict[str, Any], workload: str) -> Any:
    """``options`` checked against ``schema`` (a dataclass): the filled-in instance.

    Raises :class:`InputError` for an option the schema does not declare (with the closest
    valid name and the list of valid ones) or a value of the wrong type. ``schema`` None means
    the workload takes no options.
    """
    if not isinstance(options, dict):
        raise InputError(f"options: expected a mapping of option: value, got {options!r}")
    if schema is None:
        if options:
            raise InputError(
                f"options.{next(iter(options))}: workload {workload} takes no options; remove `options:`"
            )
        return None
    hints = typing.get_type_hints(schema)
    valid = [f.name for f in dataclasses.fields(schema)]
    for key, value in options.items():
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            raise InputError(
                f"options.{key}: unknown option of workload {workload}; {hint}"
                f"valid options: {', '.join(valid) or 'none'}"
            )
        if not _accepts(hints[key], value):
            raise InputError(
                f"options.{key}: expected {type_text(hints[key])}, got {value!r} "
                f"(workload {workload}; `critbatch workloads` lists its options)"
            )
    try:
        return schema(**options)
    except (TypeError, ValueError) as e:  # a __post_init__ check of the schema itself
        raise InputError(f"options: {e} (workload {workload})") from None


def filled_options(schema: type | None, options: dict[str, Any], workload: str) -> dict[str, Any]:
    """``options`` with every declared default filled in, as a plain dict (picklable, loggable)."""
    parsed = parse_options(schema, options, workload)
    return {} if parsed is None else dataclasses.asdict(parsed)
