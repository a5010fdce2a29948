"""Job files in: YAML (and ``--set`` overrides) read, built into the typed
:class:`~tune_jobs.config.JobConfig` (the schema and its field docs), then checked for what a
field's type cannot say (:func:`tune_jobs.job_checks.check_values`).

A bad job fails here, before anything is launched, with a :class:`~tune_jobs.config.JobError`
naming the field (as a dotted path) and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tune_jobs.config import (
    LINE_SEARCH,
    BranchConfig,
    JobConfig,
    JobError,
)
from tune_jobs.config_build import build_config
from tune_jobs.job_checks import check_values
from tune_jobs.preflight import SWEEP_FILE


def parse_job(data: Any, source: str = "job") -> JobConfig:
    """Validate a mapping (parsed YAML) into a :class:`JobConfig`; raises :class:`JobError`."""
    if not isinstance(data, dict):
        raise JobError(
            f"{source}: a job file is a YAML mapping of fields (name, workload, batch_sizes, ...)"
        )
    branch = data.get("branch")
    fill = (isinstance(branch, dict) or bool(data.get("batch_size_schedule"))) and (
        "batch_sizes" not in data
    )
    job = build_config(JobConfig, {**data, "batch_sizes": []} if fill else data)
    if not job.branch.enabled and job.branch != BranchConfig():
        raise JobError("branch.branch_at: the branch section needs the base-run steps to branch "
                       "at, e.g. branch_at: [0, 100, 1000]; or remove the section")  # fmt: skip
    if job.batch_size_schedule:
        schedule = checked_schedule(job.batch_size_schedule, "batch_size_schedule")
        if fill and not job.branch.enabled:
            import dataclasses

            job = dataclasses.replace(job, batch_sizes=sorted({b for _, b in schedule}))
    if job.branch.enabled:
        job = _branch_batch_sizes(job, fill)
    check_values(job)
    return job


def checked_schedule(pairs: Any, name: str) -> tuple[tuple[int, int], ...]:
    """A batch-size schedule checked by its one definition
    (:func:`trainables.branching.check_batch_size_schedule`); :class:`JobError` naming ``name``."""
    from trainables.api import InputError
    from trainables.branching import check_batch_size_schedule

    try:
        return check_batch_size_schedule(pairs, name)
    except InputError as e:
        raise JobError(str(e)) from None


def load_schedule_file(path: Any, flag: str = "--batch-size-schedule") -> list[list[int]]:
    """A batch-size schedule from a YAML (or JSON) file: the ``schedule.yaml`` that `critbatch
    branch` writes (a mapping with ``batch_size_schedule:``) or a bare list of pairs; checked,
    with :class:`JobError` naming the flag, the file and the fix."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise JobError(f"{flag} {p}: cannot read it ({e}); give a YAML file such as a "
                       "`critbatch branch` run folder's schedule.yaml") from None  # fmt: skip
    if isinstance(data, dict):
        if "batch_size_schedule" not in data:
            raise JobError(f"{flag} {p}: no batch_size_schedule key; write batch_size_schedule: "
                           "[[0, 32], [20000, 64]] (or a bare list of pairs)")  # fmt: skip
        data = data["batch_size_schedule"]
    pairs = checked_schedule(data, f"{flag} {p}: batch_size_schedule")
    return [list(x) for x in pairs]


def _branch_batch_sizes(job: JobConfig, fill: bool) -> JobConfig:
    """A branch job's batch sizes are branch.base_batch_size x branch.factors (filled in when
    the job file gives none); the protocol's fields are checked by its one definition."""
    import dataclasses

    from trainables.api import InputError

    try:
        plan = job.branch.plan().check(lambda f: f"branch.{f}")
    except InputError as e:
        raise JobError(str(e)) from None
    sizes = [plan.batch_size(k) for k in plan.factors]
    if fill:
        return dataclasses.replace(job, batch_sizes=sizes)
    if list(job.batch_sizes) != sizes:
        raise JobError(
            f"batch_sizes: {job.batch_sizes}; a branch job's batch sizes are "
            f"branch.base_batch_size x branch.factors = {sizes}: remove batch_sizes"
        )
    return job


def parse_stored_job(data: Any) -> JobConfig:
    """A job as a run folder's ``sweep.json`` stores it (``resume``, ``sync``): valid when its
    sweep started, maybe under an older critbatch, so a value renamed since is read under its
    new name (``lr_search.algorithm: tpe`` as ``line_search``) instead of refused as it is in
    a job file."""
    search = data.get("lr_search") if isinstance(data, dict) else None
    if isinstance(search, dict) and search.get("algorithm") == "tpe":
        data = {**data, "lr_search": {**search, "algorithm": LINE_SEARCH}}
    return parse_job(data, SWEEP_FILE)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set FIELD=VALUE`` flags as {dotted field: YAML value}."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise JobError(f"--set {pair!r}: write FIELD=VALUE, e.g. --set budget.max_steps=500")
        k, v = pair.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or "not a YAML value"
            raise JobError(
                f"--set {k.strip()}: {v!r} is not a valid YAML value ({problem}); "
                "e.g. --set batch_sizes=[8,16] or --set lr_search.max=0.5"
            ) from None
    return out


def load_job(path: str | Path, overrides: dict[str, Any] | None = None) -> JobConfig:
    """Read and validate a YAML job file. ``overrides`` (dotted keys) replace fields."""
    p = Path(path)
    if p.is_dir():
        raise JobError(f"job file {str(p)!r} is a folder; give the path to a YAML job file")
    if not p.is_file():
        raise JobError(
            f"job file {str(p)!r} does not exist; give the path to a YAML job (examples in tune_jobs/jobs/)"
        )
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise JobError(
            f"job file {str(p)!r} cannot be read ({e.strerror}); check its permissions"
        ) from None
    except UnicodeDecodeError:
        raise JobError(
            f"job file {str(p)!r} is not a text file (not UTF-8); give a YAML job file"
        ) from None
    if "\x00" in text:
        raise JobError(f"job file {str(p)!r} holds binary data; give a YAML job file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise JobError(f"{p}: not valid YAML ({e}); fix the syntax at the line shown") from None
    if data is None:
        raise JobError(
            f"job file {str(p)!r} is empty; write at least name, workload and batch_sizes"
        )
    if not isinstance(data, dict):
        raise JobError(
            f"{p}: a job file is a YAML mapping of fields (name, workload, batch_sizes, ...), "
            f"not {type(data).__name__}"
        )
    for key, value in (overrides or {}).items():
        apply_override(data, key, value)
    if ":" in str(data.get("workload", "")):
        # a user workload's module sits beside the job file, or in code_dir relative to it
        data["code_dir"] = str((p.resolve().parent / str(data.get("code_dir") or ".")).resolve())
    return parse_job(data, str(p))


def apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    """``--set a.b=value``: replace field ``a.b`` of the parsed job, refusing to descend into
    a field that is not a mapping (``--set name.x=1``)."""
    node = data
    *parents, last = key.split(".")
    if not all(parents) or not last:
        raise JobError(f"--set {key}: an empty field name; write e.g. --set budget.max_steps=500")
    for i, k in enumerate(parents):
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            where = ".".join(parents[: i + 1])
            raise JobError(
                f"--set {key}: {where} is {type(child).__name__} {child!r}, not a mapping of "
                f"fields; set `{where}` itself"
            )
        node = child
    node[last] = value
