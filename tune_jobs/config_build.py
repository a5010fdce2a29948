"""Typed dataclasses from plain data (a parsed YAML job): the generic half of
:mod:`tune_jobs.config`, which holds the schema itself. :func:`build_config` checks keys and
types field by field and raises :class:`~tune_jobs.config.JobError` naming the dotted path and
the fix; :func:`field_docs` lists every field with its type and docstring (``critbatch run
--help``'s job reference)."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from typing import Any

from trainables.api import InputError
from tune_jobs.config import JobConfig, JobError


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return {
            "int": "an integer",
            "float": "a number",
            "str": "a string",
            "bool": "true or false",
        }.get(tp.__name__, tp.__name__)
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_plural(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return str(tp)


def _plural(tp: Any) -> str:
    """``integers``, ``lists of integers``: the items of a list type, for an error message."""
    if typing.get_origin(tp) is list:
        return f"lists of {_plural(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is dict:
        return "mappings"
    if isinstance(tp, type):
        names = {
            "int": "integers",
            "float": "numbers",
            "str": "strings",
            "bool": "true/false values",
        }
        return names.get(tp.__name__, f"{tp.__name__} values")
    return str(tp)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise JobError(
                f"{path}: expected a mapping of fields, got {value!r}; see `critbatch check --help`"
            )
        return build_config(tp, value, path + ".")
    if origin is list:
        if not isinstance(value, list):
            raise JobError(
                f"{path}: expected {_type_name(tp)}, got {value!r}; write e.g. [8, 16, 32]"
            )
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise JobError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if origin in (types.UnionType, typing.Union):
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise JobError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise JobError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise JobError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):  # .nan/.inf would pass every range check below
            raise JobError(f"{path}: {value!r} is not a finite number; give a finite value")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise JobError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def build_config(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = (
                f"; did you mean `{prefix}{close[0]}`?"
                if close
                else f"; known fields: {', '.join(fields)}"
            )
            raise JobError(f"{prefix}{key}: unknown field{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise JobError(
            f"{prefix}{missing[0]}: required field is missing; add `{missing[0]}:` to the job file"
        )
    try:
        return cls(**kwargs)
    except InputError as e:  # a schema class's own check (e.g. Target's direction)
        raise JobError(str(e)) from None


@functools.cache  # parsing the source costs ~1 s; every `critbatch` call builds --help texts
def field_docs(cls: type = JobConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted field, type, doc) for every field: the job file reference printed by --help."""
    import ast
    import inspect

    src = inspect.getsource(cls)
    tree = ast.parse(src)
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for a, b in zip(body, body[1:], strict=False):
        if (
            isinstance(a, ast.AnnAssign)
            and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant)
        ):
            docs[a.target.id] = " ".join(str(b.value.value).split())  # type: ignore[union-attr]
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(field_docs(tp, f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", _type_name(tp), docs.get(f.name, "")))
    return out
