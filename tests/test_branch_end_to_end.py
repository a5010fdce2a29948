"""`critbatch branch` on real Ray Tune and MLflow finds the exact local critical batch size.

The shipped job `tune_jobs/jobs/nqm_branch.yaml` on `nqm_exact`: a base run checkpointed at
its branch points, 18 branches restored from those checkpoints, in parallel; its local CBS
and losses against `critbatch nqm --branch-at` with the same numbers (the exact answer).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from analysis.mlflow_layout import PARENT_TAG, ROLE_BRANCH, ROLE_TAG
from tune_jobs.cli import main

JOB = Path(__file__).resolve().parents[1] / "tune_jobs" / "jobs" / "nqm_branch.yaml"
EXACT = ["nqm", "--dim", "1000", "--branch-at", "0,1000,100000", "--base-batch-size", "8",
         "--base-lr", "0.05", "--factors", "1,2,4,8,16,32", "--window-steps", "3200",
         "--tolerance", "0.003", "--json"]  # fmt: skip


@pytest.mark.slow
def test_branch_on_nqm_exact_matches_the_exact_answer(ray_local, tmp_path, capsys):
    d = yaml.safe_load(JOB.read_text())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    d.update(storage=str(tmp_path / "runs"), tracking={"uri": uri, "experiment": "branch-e2e"})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(d))
    assert main(["nqm", *EXACT[1:]]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert main(["branch", str(job), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)

    assert got["branch_at"] == exact["branch_at"] == [0, 1000, 100000]
    b0 = got["base_batch_size"]
    assert got["examples_at"] == [t * b0 for t in got["branch_at"]]  # the CBS against examples
    # the table `critbatch branch` prints without --json, from the same result
    from tune_jobs.cli.branch import branch_result_text
    from tune_jobs.job_file import load_job

    text = branch_result_text(load_job(job), got)
    assert f"{100000:>10} {100000 * b0:>10}" in text and "schedule (batch size from" in text
    assert got["local_cbs"] == exact["local_cbs"] == [128, 64, 8]
    assert got["passes"] == exact["passes"]
    for g, e in zip(got["losses"], exact["losses"], strict=True):
        assert g == pytest.approx(e, rel=1e-6)
    assert got["schedule"] == [[0, 128], [8000, 64], [800000, 8]]

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("branch-e2e")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(ROLE_TAG) == ROLE_BRANCH]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == 1 + 3 * 6  # the base run and one run per branch
    names = {r.info.run_name for r in children}
    assert "base bs=8 lr=0.05 seed=0" in names and "t=1000 k=4 bs=32 lr=0.2 seed=0" in names
    assert all(r.info.status == "FINISHED" for r in [parent, *children])
    history = client.get_metric_history(parent.info.run_id, "local_cbs")
    assert sorted((m.step, m.value) for m in history) == [(0, 128), (1000, 64), (100000, 8)]
    stored = json.loads((Path(got["run_dir"]) / "branch.json").read_text())
    assert stored["local_cbs"] == got["local_cbs"] and len(stored["branches"]) == 18
    from tune_jobs.job_file import load_schedule_file  # what `critbatch train` reads

    assert load_schedule_file(Path(got["run_dir"]) / "schedule.yaml") == got["schedule"]


@pytest.mark.slow
def test_branch_on_sampled_sgd_restores_the_base_run_exactly_per_seed(ray_local, tmp_path, capsys):
    """`nqm_sgd`, two seeds: each k = 1 branch, restored on a Ray worker from its seed's base
    checkpoint, is that seed's uninterrupted run (same draws, same loss); the local CBS gets a
    seed interval around it."""
    from trainables.api import Target, TrialConfig
    from trainables.registry import run_trial

    d = {"name": "sgd-branch", "workload": "nqm_sgd", "options": {"dim": 100}, "seeds": [0, 1],
         "branch": {"base_batch_size": 4, "base_lr": 0.2, "branch_at": [0, 200],
                    "factors": [1, 2, 4], "window_steps": 400, "tolerance": 0.05},
         "target": {"metric": "eval_loss", "value": 0.01, "direction": "min"}, "eval_every": 100,
         "storage": str(tmp_path / "runs"), "resources": {"cpus": 1},
         "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}  # fmt: skip
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(d))
    assert main(["branch", str(job), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["seeds"] == [2, 2]
    for cbs, lo, hi in zip(got["local_cbs"], got["ci_low"], got["ci_high"], strict=True):
        assert lo is not None and lo <= cbs <= hi
    # the exact answer of the same problem (the expected loss, `critbatch nqm --branch-at`) lies
    # within the seed interval at every branch point
    assert main(["nqm", "--dim", "100", "--branch-at", "0,200", "--base-batch-size", "4",
                 "--base-lr", "0.2", "--factors", "1,2,4", "--window-steps", "400",
                 "--tolerance", "0.05", "--json"]) == 0  # fmt: skip
    exact = json.loads(capsys.readouterr().out)["local_cbs"]
    for e, lo, hi in zip(exact, got["ci_low"], got["ci_high"], strict=True):
        assert lo <= e <= hi, (exact, got["ci_low"], got["ci_high"])
    branches = json.loads((Path(got["run_dir"]) / "branch.json").read_text())["branches"]
    for seed in (0, 1):
        for t in (0, 200):
            (row,) = [
                b for b in branches if (b["seed"], b["branch_at"], b["factor"]) == (seed, t, 1)
            ]
            cfg = TrialConfig("nqm_sgd", 4, 0.2, seed=seed, max_steps=t + 400, eval_every=100,
                              target=Target("eval_loss", -1e300, "min"), options={"dim": 100})  # fmt: skip
            reports: list[dict] = []
            run_trial(cfg, lambda m, c=None, out=reports: out.append(m))
            assert row["loss"] == pytest.approx(reports[-1]["eval_loss"], rel=1e-12)
    losses = {(b["seed"], b["branch_at"]): b["loss"] for b in branches if b["factor"] == 1}
    assert losses[(0, 200)] != losses[(1, 200)]  # the seeds differ


@pytest.mark.slow
def test_branch_beside_a_full_sweep_of_the_same_problem(ray_local, tmp_path, capsys):
    """`--sweep`: the local CBS per branch point beside the full sweep's B_crit at that point's
    k = 1 loss (Merrill et al.'s comparison). The sweep's trials stop at its own target (0.3),
    so it answers at the losses above it (0.44, 0.35) and says why not at the one below (0.012).
    A sweep that cannot be found is refused before anything runs."""
    from tune_jobs.sweep import run_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    full = {"name": "nqm-full", "workload": "nqm_exact", "batch_sizes": [8, 32, 128, 512],
            "options": {"dim": 1000, "exponent": 1.0, "noise_scale": 1.0, "s0": 1.0},
            "lr_search": {"algorithm": "grid", "min": 0.2, "max": 2.0, "trials_per_batch_size": 5,
                          "confirm_seeds": 0, "seed": 0},
            "target": {"metric": "eval_loss", "value": 0.3, "direction": "min"},
            "budget": {"max_steps": 2000}, "eval_every": 5, "resources": {"cpus": 1},
            "storage": str(tmp_path / "runs"), "tracking": {"uri": uri, "experiment": "full"}}  # fmt: skip
    from tune_jobs.job_file import parse_job

    run_sweep(parse_job(full), progress=False)
    d = yaml.safe_load(JOB.read_text())
    d.update(storage=str(tmp_path / "runs"), tracking={"uri": uri, "experiment": "branch-e2e"})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(d))

    assert main(["branch", str(job), "--sweep", "no-such-sweep"]) == 2
    assert "no-such-sweep" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "nqm-branch").exists()  # refused before anything ran

    assert main(["branch", str(job), "--sweep", "full", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    rows = got["sweep"]["at_k1_loss"]
    assert [round(r["loss"], 3) for r in rows] == [0.44, 0.346, 0.012]
    for r in rows[:2]:
        assert r["ci_low"] <= r["b_crit"] <= r["ci_high"] and r["note"] == ""
    assert rows[2]["b_crit"] != rows[2]["b_crit"] and "reach" in rows[2]["note"]
    # the B_crit of reaching a lower loss from scratch is larger (the sweep's steps grow
    # faster at small batch sizes as the target falls)
    assert rows[1]["b_crit"] > rows[0]["b_crit"]
    from tune_jobs.cli.branch import branch_result_text
    from tune_jobs.job_file import load_job

    text = branch_result_text(load_job(job), got)
    assert "full sweep full at the k=1 loss of branch point 0 (0.4397): B_crit" in text
