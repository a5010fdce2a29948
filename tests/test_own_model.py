"""examples/own_model end to end: the user's project (a module and a job file) copied to a
folder outside this repository, `critbatch run job.yaml` there on a local Ray, then the Python
API over the result (`analysis.analyze`) and a sweep started from a dict (`tune_jobs.run_sweep`).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "own_model"

DRIVER = """
import os, sys
os.chdir(sys.argv[1])
from tune_jobs.cli import main
sys.exit(main(["run", "job.yaml", "--num-cpus", "2", "--no-progress",
               "--set", "lr_search.trials_per_batch_size=3", "--set", "lr_search.confirm_seeds=1"]))
"""


@pytest.mark.slow
def test_example_runs_from_a_folder_outside_the_repo(tmp_path):
    project = tmp_path / "my_project"
    shutil.copytree(EXAMPLE, project)
    assert REPO not in project.parents
    # Ray's socket paths must stay under 107 bytes: a short folder directly under /tmp.
    ray_tmp = tempfile.mkdtemp(prefix="cbo", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    try:
        r = subprocess.run([sys.executable, "-c", DRIVER, str(project)], capture_output=True,
                           text=True, timeout=600, env=env)  # fmt: skip
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    assert (
        "optimizer: adamw" in r.stdout
        and "cosine to 0.1 x peak over each trial's budget" in r.stdout
    )
    # 3 search trials and 1 confirmation run at each of the 2 confirmed LRs, per batch size
    assert "15 trials (" in r.stdout and "B_crit" in r.stdout, r.stdout[-3000:]

    # the child runs carry the optimizer and the schedule
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("own-model-spirals")
    kids = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("critbatch.role") == "trial"
    ]
    assert len(kids) == 15
    reached = {int(k.data.params["batch_size"]) for k in kids
               if k.data.tags.get("critbatch.status") == "reached"}  # fmt: skip
    assert reached == {16, 64, 256}  # every batch size reached 98% accuracy
    assert {k.data.params["optimizer.name"] for k in kids} == {"adamw"}
    assert {k.data.params["strategy.decay"] for k in kids} == {"cosine"}

    from analysis import analyze

    res = analyze("own-model-spirals", tracking_uri=f"sqlite:///{project / 'mlflow.db'}",
                  out=tmp_path / "report", n_boot=50)  # fmt: skip
    assert res.report.html.is_file()
    assert sorted(res.table["batch_size"].unique()) == [16, 64, 256]
    assert math.isfinite(res.fit.b_crit) and res.fit.b_crit > 0
    assert res.lr_fit["best_form"] in ("power_law", "saturating", "surge")


@pytest.mark.slow
def test_run_sweep_from_a_dict(tmp_path, ray_local, monkeypatch):
    """The notebook path: a job as a dict, the module beside the notebook (the current folder)."""
    shutil.copy(EXAMPLE / "spirals.py", tmp_path / "spirals.py")
    monkeypatch.chdir(tmp_path)
    from tune_jobs import run_sweep

    out = run_sweep({
        "name": "own-model-dict", "workload": "spirals:build", "batch_sizes": [16, 64, 256],
        "optimizer": {"name": "adamw", "weight_decay": 0.01},
        "strategy": {"name": "blr", "base_lr": 0.03, "base_batch_size": 16, "decay": "wsd"},
        "target": {"metric": "eval_accuracy", "value": 0.98, "direction": "max"},
        "budget": {"max_steps": 800}, "eval_every": 20,
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage": str(tmp_path / "runs"),
    })  # fmt: skip
    assert list(out.table["batch_size"]) == [16, 64, 256]
    assert out.no_fit is None and out.table["steps_to_target"].notna().all(), (
        out.no_fit,
        out.table,
    )
    assert out.fit is not None and out.fit.b_crit > 0
    search = out.trials[out.trials["seed"] < 1_000_000]  # then the confirmation runs
    assert len(search) == 3 and set(search["status"]) == {"reached"}
    # Confirmation runs (fresh seeds, the chosen LR and the LR 1.5x below it) may miss the
    # target within their horizon: that is what confirming finds out. Every batch size has
    # confirmed runs that reached it, or its steps above would be missing.
    confirm = out.trials[out.trials["seed"] >= 1_000_000]
    assert set(confirm.loc[confirm["status"] == "reached", "batch_size"]) == {16, 64, 256}
