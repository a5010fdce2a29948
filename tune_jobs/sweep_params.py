"""What a sweep records about itself in MLflow beside its metrics: the job flattened into
the parent run's params, the params every child run carries, and its provenance (the git
commit and package versions it ran with: the parent run's tags and the run folder's
sweep.json)."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

from tune_jobs.config import JobConfig


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parents[1])  # fmt: skip
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for p in ("critbatch", "torch", "torchvision", "ray", "optuna", "mlflow", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            out[p] = version(p)
    return out


def job_params(job: JobConfig) -> dict[str, str]:
    """The job flattened into MLflow params (dotted keys shortened where conventional)."""
    flat: dict[str, str] = {}

    def walk(prefix: str, d: dict[str, Any]) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(f"{prefix}{k}.", v)
            else:
                flat[f"{prefix}{k}"] = str(v)[:6000]

    d = job.to_dict()
    if not job.branch.enabled:  # a sweep's parent run does not list the unused branch fields
        d.pop("branch")
    walk("", d)
    from analysis.tracking_uri import redact_uri

    flat["tracking.uri"] = redact_uri(job.tracking.uri)  # a password never goes into MLflow
    flat["target_metric"], flat["target_value"] = job.target.metric, str(job.target.value)
    flat["target_direction"], flat["strategy"] = job.target.direction, job.strategy.name
    return flat


def child_params(job: JobConfig) -> dict[str, str]:
    """Params every child run carries besides its trial's own: the target, the LR strategy
    (the seed paper's BLR/LSR/SRSR and their warm-up) and the optimizer, so runs compare in the MLflow UI
    without opening the parent."""
    strategy = {f"strategy.{k}": str(v) for k, v in dataclasses.asdict(job.strategy).items()}
    strategy |= {f"optimizer.{k}": str(v) for k, v in dataclasses.asdict(job.optimizer).items()}
    return {"eval_every": str(job.eval_every), "target_metric": job.target.metric,
            "target_value": str(job.target.value), "target_direction": job.target.direction,
            **strategy}  # fmt: skip
