"""`critbatch submit` ships the user's code: a job file and its module in a folder outside
this repository, submitted to a real `ray start --head`; the driver and every trial worker
import the module from the copy Ray uploaded (its runtime_env working_dir), not from the
user's folder, and critbatch's packages travel beside it as py_modules."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from test_submit_end_to_end import RayHead, _clean_env, _submit, ray_head  # noqa: F401

from tune_jobs.cluster import REPO, runtime_env_for

pytestmark = pytest.mark.slow

MODULE = """
import os
import torch
from trainables import Task

with open({marker!r}, "a") as f:  # where this module was imported from, once per process
    f.write(os.path.dirname(os.path.abspath(__file__)) + "\\n")

def build(config, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.ones(4, 1)
    xv, yv = x[:64], y[:64]
    model = torch.nn.Linear(4, 1)
    return Task(model=model, batches=(x, y), loss=lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(),
                evaluate=lambda m: {{"eval_loss": float(((m(xv) - yv) ** 2).mean())}}, train_size=256)
"""


def test_runtime_env_ships_critbatch_beside_user_code(tmp_path):
    assert "py_modules" not in runtime_env_for(REPO)
    env = runtime_env_for(tmp_path)
    assert env["working_dir"] == str(tmp_path)
    assert env["py_modules"] == [str(REPO / p) for p in ("trainables", "tune_jobs", "analysis")]


def test_submit_ships_a_module_from_outside_the_repo(ray_head: RayHead, tmp_path: Path) -> None:  # noqa: F811
    project = tmp_path / "project"
    project.mkdir()
    marker = tmp_path / "imported_from.txt"
    (project / "linreg.py").write_text(textwrap.dedent(MODULE.format(marker=str(marker))))
    name = "submit-user-code"
    job = {
        "name": name, "workload": "linreg:build", "batch_sizes": [8, 16],
        "lr_search": {"min": 0.01, "max": 0.1, "trials_per_batch_size": 1, "confirm_seeds": 0, "algorithm": "grid"},
        "target": {"metric": "eval_loss", "value": 0.0}, "budget": {"max_steps": 10},
        "eval_every": 5, "early_stopping": {"enabled": False},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage": str(tmp_path / "runs"),
    }  # fmt: skip
    job_file = project / "job.yaml"
    job_file.write_text(yaml.safe_dump(job, sort_keys=False))

    r = _submit(job_file, project, ray_head.address, _clean_env(ray_head.home), 400)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert r.stdout.rstrip().endswith(": SUCCEEDED"), out[-3000:]
    results = sorted((tmp_path / "runs" / name).glob("*/result.json"))
    assert len(results) == 2
    for f in results:
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        assert rows[-1]["step"] == 10
    places = marker.read_text().split()
    local = [p for p in places if p == str(project)]  # the local check before submitting
    shipped = [p for p in places if p.startswith(ray_head.temp_dir)]
    assert local and len(shipped) >= 2, places  # the driver and the trial workers
    assert all("runtime_resources" in p for p in shipped), shipped
