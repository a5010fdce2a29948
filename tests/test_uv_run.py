"""A sweep whose driver runs under `uv run` from a folder that is not the project.

Ray (>= 2.47) sees a `uv run` ancestor and, unless told otherwise, starts every worker with
`uv run` inside a copy of the driver's working directory: from a user's own job folder those
workers cannot import ray and the trials hang PENDING without a word. `tune_jobs` turns that
off (RAY_ENABLE_UV_RUN_RUNTIME_ENV=0) so workers use the driver's interpreter. This test is the
user's situation: `uv run` started in the project, the driver working in another folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

DRIVER = """
import os, sys
os.chdir(sys.argv[1])
from tune_jobs.cli import main
sys.exit(main(["run", "job.yaml", "--num-cpus", "2", "--no-progress"]))
"""


def _uv() -> list[str]:
    """`python3 -m uv` as the README runs it (that form also sets the variable that made the
    nested uv pick the wrong interpreter): with the interpreter this venv was made from (under
    `uv run`, plain `python3` is the venv's own, which has no uv), else the uv binary."""
    base = getattr(sys, "_base_executable", None) or "python3"
    if subprocess.run([base, "-m", "uv", "--version"], capture_output=True).returncode == 0:
        return [base, "-m", "uv"]
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv is needed (the README's commands install it)"
    return [uv]


@pytest.mark.slow
def test_sweep_under_uv_run_from_another_folder(tmp_path):
    job = {
        "name": "uvrun",
        "workload": "synthetic",
        "batch_sizes": [8, 32],
        "lr_search": {
            "min": 0.01,
            "max": 0.5,
            "trials_per_batch_size": 1,
            "confirm_seeds": 0,
            "seed": 0,
        },
        "target": {"metric": "eval_loss", "value": 0.2, "direction": "min"},
        "budget": {"max_steps": 20},
        "eval_every": 10,
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "uvrun"},
        "storage": str(tmp_path / "runs"),
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_ENABLE_UV", "RAY_ADDRESS"))
    }
    env["HOME"] = str(tmp_path)
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="cbu", dir="/tmp")  # short socket paths
    uv = _uv()
    proc = subprocess.Popen([*uv, "run", "--frozen", "python", "-c", DRIVER, str(tmp_path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        output, _ = proc.communicate(
            timeout=int(os.environ.get("CRITBATCH_UV_TEST_TIMEOUT", "600"))
        )
    except subprocess.TimeoutExpired:  # the failure this test guards against: a silent hang
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        output, _ = proc.communicate()
        pytest.fail(f"sweep under `uv run` hung:\n{output[-3000:]}")
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert proc.returncode == 0, output[-3000:]
    assert "2 trials" in output
