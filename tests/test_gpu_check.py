"""scripts/gpu_check.sh in its CPU mode: every step it runs on a GPU machine (setup, the gpu
tests, the throughput benchmark, a real sweep of a paper workload on CIFAR-10 files written in
the real format) runs here at a toy size, so the script cannot rot between GPU runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # minutes on a busy 2-core machine: several fresh Pythons import torch
def test_gpu_check_script_runs_every_step_on_cpu(tmp_path):
    out = tmp_path / "out"
    # Ray's socket paths must stay under 108 characters: a short temp dir of the sweep's own
    ray_tmp = tempfile.mkdtemp(prefix="cbgc-", dir="/tmp")
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_DEVICE": "cpu", "RAY_TMPDIR": ray_tmp}
    # its own process group, so that a timeout also ends the sweep's Ray processes
    proc = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "gpu_check.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=2300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary + stderr[-3000:]
    assert "NO CUDA: running the same steps on the CPU at a toy size" in summary
    for step in ("setup", "gpu-tests", "throughput", "data", "sweep", "sweep-check"):
        assert f"{step}: ok in" in summary, step
    assert "all steps passed on cpu" in summary
    # the gpu tests were collected and skipped, not missing
    assert "skipped" in (out / "gpu_tests.log").read_text()
    [row] = json.loads((out / "throughput.json").read_text())["rows"]
    assert row["batch_size"] == 4 and row["critbatch_images_per_s"] > 0 < row["plain_images_per_s"]
    assert (out / "data" / "cifar-10-batches-py" / "data_batch_5").is_file()
    # every trial of the toy sweep is an MLflow child run with a final status
    assert "trials: 4 statuses:" in (out / "sweep_check.log").read_text()
