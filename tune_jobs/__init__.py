"""The search: job files, the Ray Tune sweep, MLflow tracking, the `critbatch` command.

From Python: ``from tune_jobs import run_sweep`` (:mod:`tune_jobs.notebook`; imported on first
use, so importing tune_jobs stays cheap).
"""

import os

# Ray (>= 2.47) notices a driver started under `uv run` and makes every worker re-run
# `uv run` in a copy of the driver's working directory. Run from a folder that is not this
# project (a user's own job folder, a test's tmp dir) those workers cannot import ray and the
# sweep hangs with trials PENDING; run from the project it re-syncs a venv per session. The
# driver's own interpreter already has everything, so workers use it, as without uv. Set
# RAY_ENABLE_UV_RUN_RUNTIME_ENV=1 to get Ray's behaviour back. This must run before `ray` is
# imported (Ray reads the variable at import), hence here.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def __getattr__(name: str):
    if name in ("run_sweep", "as_job", "SweepOutcome"):
        from tune_jobs import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'tune_jobs' has no attribute {name!r}")
