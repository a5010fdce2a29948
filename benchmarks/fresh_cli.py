"""Run a critbatch command the way a new user would: in a fresh folder under /tmp (short, for
Ray's socket paths) with its own HOME, Ray temp dir, MLflow SQLite store and run storage, no
RAY_ADDRESS; timed. Shared by the benchmarks that start whole sweeps."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_fresh(
    args: list[str], name: str, prefix: str, cpus: int | None = None
) -> tuple[subprocess.CompletedProcess, float, Path]:
    """``critbatch ARGS --set name=NAME`` in a fresh folder; (process, wall seconds, folder).
    The sweep's run folder is ``folder / "runs" / name``."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    env = dict(os.environ, HOME=str(d), RAY_TMPDIR=str(d))
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "tune_jobs.cli", *args, "--set", f"name={name}",
           "--set", f"tracking.uri=sqlite:///{d}/mlflow.db", "--set", f"storage={d}/runs"]  # fmt: skip
    if cpus:
        cmd += ["--num-cpus", str(cpus)]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True)
    return p, time.perf_counter() - t, d
