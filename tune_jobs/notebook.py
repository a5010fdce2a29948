"""critbatch from Python (a notebook, a script): ``run_sweep`` and, in analysis, ``analyze``.

::

    from tune_jobs import run_sweep
    out = run_sweep("examples/own_model/job.yaml", num_cpus=4)    # or a dict, or a JobConfig
    out.table      # pandas: per batch size, the best LR and its steps to target
    out.fit        # McCandlish's fit S(B) = S_min (1 + B_crit / B); None under 3 points
    out.lr_fit     # best LR vs B: power law, saturating and surge forms, and the best of them

    from analysis import analyze
    res = analyze(out.result.parent_run_id, tracking_uri=out.result.tracking_uri)

A job given as a dict is validated exactly as a job file is (the same errors, naming the
field); a user workload's module is then looked up in ``code_dir`` (default: the current
folder, where a notebook usually sits beside its module).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune_jobs.config import JobConfig
from tune_jobs.job_file import load_job, parse_job


def as_job(job: JobConfig | dict[str, Any] | str | Path) -> JobConfig:
    """A validated :class:`JobConfig` from a JobConfig, a mapping (as a job file's YAML), or
    the path of a job file. Raises :class:`tune_jobs.config.JobError` naming the field."""
    if isinstance(job, JobConfig):
        return job
    if isinstance(job, str | Path):
        return load_job(job)
    if isinstance(job, dict):
        data = dict(job)
        if ":" in str(data.get("workload", "")):
            data["code_dir"] = os.path.abspath(str(data.get("code_dir") or "."))
        return parse_job(data, "job")
    raise TypeError(f"job: expected a JobConfig, a dict or a path, got {type(job).__name__}")


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` returns."""

    table: (
        Any  # pandas.DataFrame, one row per batch size (analysis.summary.SweepSummary.steps_table)
    )
    trials: Any  # pandas.DataFrame, one row per trial (search and confirmation runs)
    fit: Any  # analysis.fits McCandlish fit, or None with fewer than 3 batch sizes reaching
    lr_fit: Any  # analysis.lr_fit.LrFit, or None with fewer than 3 best LRs
    result: Any  # tune_jobs.sweep.SweepResult: run folder, MLflow ids, wall time
    no_fit: str | None = None  # why there is no fit (fit is None), as `critbatch run` says it


def run_sweep(
    job: JobConfig | dict[str, Any] | str | Path,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = False,
) -> SweepOutcome:
    """Validate ``job``, run the sweep to the end (local Ray unless ``address``), and return
    its results table and fits. Bad input raises JobError before anything launches."""
    import pandas as pd

    from tune_jobs import sweep
    from tune_jobs.summary import sweep_summary

    config = as_job(job)
    result = sweep.run_sweep(config, address=address, num_cpus=num_cpus, progress=progress)
    try:  # the same numbers as `critbatch run` and `critbatch analyze` print
        summary, _ = sweep_summary(result, config)
        table = summary.steps_table().rename(columns={"steps": "steps_to_target"})
        fit, lr_fit = summary.cbs.fit, summary.lr
    except (ValueError, LookupError) as e:  # e.g. fewer than 3 batch sizes reached the target
        sizes = sorted({t["batch_size"] for t in result.trials})
        table = pd.DataFrame({"batch_size": sizes, "steps_to_target": float("nan")})
        return SweepOutcome(table, pd.DataFrame(result.trials), None, None, result, str(e))
    return SweepOutcome(table, pd.DataFrame(result.trials), fit, lr_fit, result)
