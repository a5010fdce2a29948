"""A job's `branch:` section: validated by the protocol's one definition, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tune_jobs.cli import main
from tune_jobs.config import JobError
from tune_jobs.job_file import parse_job
from tune_jobs.sweep_params import job_params

JOB = Path(__file__).resolve().parents[1] / "tune_jobs" / "jobs" / "nqm_branch.yaml"


def branch_job(**branch) -> dict:
    d = yaml.safe_load(JOB.read_text())
    d["branch"].update(branch)
    return d


def test_shipped_job_and_its_batch_sizes():
    job = parse_job(yaml.safe_load(JOB.read_text()))
    assert job.batch_sizes == [8, 16, 32, 64, 128, 256]  # base_batch_size x factors
    plan = job.branch.plan()
    assert plan.lr(4) == pytest.approx(0.2) and plan.steps(4) == 800
    assert job_params(job)["branch.window_steps"] == "3200"
    sweep = parse_job({k: v for k, v in yaml.safe_load(JOB.read_text()).items() if k != "branch"}
                      | {"batch_sizes": [8, 16]})  # fmt: skip
    assert not sweep.branch.enabled and not any(k.startswith("branch.") for k in job_params(sweep))


@pytest.mark.parametrize(
    "branch,words",
    [
        ({"window_steps": 3000}, "branch.window_steps 3000: must be divisible by every factor"),
        ({"factors": [2, 4]}, "branch.factors 2,4: give positive integers in increasing order"),
        ({"base_lr": 0.0}, "branch.base_lr 0.0: give a learning rate > 0"),
        ({"tolerance": -1.0}, "branch.tolerance -1.0: give a relative tolerance >= 0"),
        ({"branch_at": [100, 0]}, "branch.branch_at 100,0: give base-run steps >= 0"),
        ({"lr_rule": "cubic"}, "branch.lr_rule 'cubic': give linear"),
        ({"base_batch_size": 0}, "branch.base_batch_size 0: give a positive integer"),
        (
            {"windw_steps": 10},
            "branch.windw_steps: unknown field; did you mean `branch.window_steps`",
        ),
        ({"branch_at": []}, "branch.branch_at: the branch section needs the base-run steps"),
    ],
)
def test_bad_branch_fields_name_the_field_and_fix(branch, words):
    with pytest.raises(JobError) as e:
        parse_job(branch_job(**branch))
    assert words in str(e.value)


def test_batch_sizes_must_be_the_branch_ones():
    with pytest.raises(JobError, match=r"batch_sizes: \[8, 16\]; a branch job's batch sizes are"):
        parse_job(branch_job() | {"batch_sizes": [8, 16]})
    assert parse_job(branch_job() | {"batch_sizes": [8, 16, 32, 64, 128, 256]}).branch.enabled


def test_branch_compares_a_loss():
    d = branch_job() | {"workload": "digits_mlp", "options": {}}
    d["target"] = {"metric": "eval_accuracy", "value": 0.9, "direction": "max"}
    with pytest.raises(JobError, match="target.metric: critbatch branch compares a loss"):
        parse_job(d)


def test_run_refuses_a_branch_job_and_branch_a_sweep(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(branch_job() | {"storage": str(tmp_path / "runs")}))
    assert main(["run", str(job)]) == 2
    assert f"run it with `critbatch branch {job}`" in capsys.readouterr().err
    sweep = tmp_path / "sweep.yaml"
    d = {k: v for k, v in branch_job().items() if k != "branch"} | {"batch_sizes": [8, 16]}
    sweep.write_text(yaml.safe_dump(d))
    assert main(["branch", str(sweep)]) == 2
    assert "branch.branch_at" in capsys.readouterr().err
    job.write_text(yaml.safe_dump(branch_job() | {"storage": "s3://bucket/runs"}))
    assert main(["branch", str(job)]) == 2
    assert "storage: 's3://bucket/runs'; critbatch branch needs a folder" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_check_prints_the_branch_plan_and_resume_refuses_a_branch_folder(tmp_path, capsys):
    import json

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(branch_job() | {"storage": str(tmp_path / "runs")}))
    assert main(["check", str(job)]) == 0
    out = capsys.readouterr().out
    assert "trials: 1 base + 18 branches" in out and "`critbatch branch` will start" in out
    folder = tmp_path / "runs" / "nqm-branch"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"branch": True, "job": {}}))
    assert main(["resume", str(folder)]) == 2
    assert "cannot be resumed" in capsys.readouterr().err


def test_the_supervised_loop_branches_from_a_base_checkpoint():
    """A branch at k = 1 from the base run's checkpoint at step 10 is the base run itself
    (same examples, same state); at k = 2 it goes on from step 10 for window / 2 steps."""
    import dataclasses

    from trainables.api import TrialConfig
    from trainables.registry import run_trial

    base = TrialConfig("synthetic", 8, 0.1, seed=3, max_steps=20, eval_every=10,
                       checkpoint_at=(10,))  # fmt: skip
    reports, checkpoints = [], {}

    def keep(m, c=None):
        reports.append(m)
        if c is not None:
            checkpoints[m["step"]] = c

    run_trial(base, keep)
    assert sorted(checkpoints) == [10]
    plain = dataclasses.replace(base, checkpoint_at=())
    k1: list[dict] = []
    run_trial(plain, lambda m, c=None: k1.append(m), checkpoints[10])
    assert [r["step"] for r in k1] == [20] and k1[-1]["train_loss"] == reports[-1]["train_loss"]
    k2: list[dict] = []
    run_trial(dataclasses.replace(plain, batch_size=16, lr=0.2, max_steps=15),
              lambda m, c=None: k2.append(m), checkpoints[10])  # fmt: skip
    assert k2[-1]["step"] == 15 and k2[-1]["train_loss"] != k1[-1]["train_loss"]
