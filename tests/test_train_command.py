"""`critbatch train`: a job with a batch-size schedule, one run per seed on real Ray Tune and
MLflow, equal to the same trial run in-process; bad input refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from analysis.mlflow_layout import PARENT_TAG, ROLE_TAG, ROLE_TRAIN
from tune_jobs.cli import main
from tune_jobs.config import JobError
from tune_jobs.job_file import load_schedule_file

JOBS = Path(__file__).resolve().parents[1] / "tune_jobs" / "jobs"


def job_file(tmp_path: Path, **extra) -> Path:
    d = {"name": "sched", "workload": "digits_mlp", "seeds": [0], "eval_every": 5,
         "target": {"metric": "eval_accuracy", "value": 0.4, "direction": "max", "smoothing": 0},
         "batch_size_schedule": [[0, 16], [160, 32]], "resources": {"cpus": 1},
         "storage": str(tmp_path / "runs"),
         "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "sched"}}  # fmt: skip
    d.update(extra)
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.mark.slow
def test_train_on_ray_equals_the_trial_in_process_and_is_tracked(ray_local, tmp_path, capsys):
    from trainables.api import Target, TrialConfig
    from trainables.registry import run_trial

    job = job_file(tmp_path)
    assert main(["train", str(job), "--lr", "0.05", "--max-examples", "480", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    (run,) = got["runs"]
    # 10 steps at 16 (160 examples), then 10 at 32: 480; the LR doubles with the batch size
    assert (run["step"], run["examples"], run["batch_size"]) == (20, 480, 32)
    assert run["lr"] == pytest.approx(0.1) and run["status"] == "reached"
    # 41% eval accuracy at step 15: 10 x 16 + 5 x 32 examples
    assert (run["steps_to_target"], run["examples_to_target"]) == (15, 320)

    local: list[dict] = []
    cfg = TrialConfig("digits_mlp", 16, 0.05, seed=0, max_steps=481, eval_every=5,
                      target=Target("eval_accuracy", 0.4, "max", smoothing=0), run_to_max_steps=True,
                      batch_size_schedule=((0, 16), (160, 32)), max_examples=480)  # fmt: skip
    run_trial(cfg, lambda m, c=None: local.append(m))
    assert local[-1]["eval_loss"] == run["eval_loss"]  # the same trial, on a Ray worker
    assert local[-1]["steps_to_target"] == run["steps_to_target"]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sched").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(ROLE_TAG) == ROLE_TRAIN]
    (child,) = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    sizes = [m.value for m in sorted(client.get_metric_history(child.info.run_id, "batch_size"),
                                     key=lambda m: m.step)]  # fmt: skip
    assert sizes == [16, 16, 32, 32]
    assert all(r.info.status == "FINISHED" for r in (parent, child))
    assert json.loads((Path(got["run_dir"]) / "train.json").read_text())["runs"][0]["step"] == 20
    # a run folder of `critbatch train` is not a sweep to resume
    assert main(["resume", got["run_dir"]]) == 2
    assert "holds a `critbatch train` run" in capsys.readouterr().err


def test_bad_input_is_refused_before_anything_runs(tmp_path, capsys):
    job = job_file(tmp_path)
    assert main(["train", str(job), "--max-examples", "480"]) == 2  # no LR to use
    assert "lr: the job has no branch section" in capsys.readouterr().err
    bad = tmp_path / "s.yaml"
    bad.write_text("batch_size_schedule: [[0, 16], [10, 0]]\n")
    assert main(["train", str(job), "--lr", "0.1", "--batch-size-schedule", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"--batch-size-schedule {bad}: batch_size_schedule[1]: batch size 0" in err
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "batch_size_schedule: " in err and f"critbatch train {job}" in err
    assert main(["check", str(job)]) == 0
    out = capsys.readouterr().out
    assert "batch size 16 from 0, 32 from 160 examples" in out and "`critbatch train` will" in out
    plain = job_file(tmp_path, batch_size_schedule=[], batch_sizes=[16])
    assert main(["train", str(plain), "--lr", "0.1"]) == 2
    assert "batch_size_schedule: the job has none" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_schedule_file_forms(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("# from critbatch branch\nbatch_size_schedule: [[0, 8], [800, 64]]\n")
    assert load_schedule_file(f) == [[0, 8], [800, 64]]
    f.write_text("[[0, 8], [800, 64]]\n")
    assert load_schedule_file(f) == [[0, 8], [800, 64]]
    f.write_text("schedule: [[0, 8]]\n")
    with pytest.raises(JobError, match="no batch_size_schedule key"):
        load_schedule_file(f)
    with pytest.raises(JobError, match="cannot read it"):
        load_schedule_file(tmp_path / "missing.yaml")


def test_a_branch_job_gives_the_lr_by_its_rule(tmp_path):
    from tune_jobs.job_file import load_job
    from tune_jobs.train import default_max_examples, train_lr

    job = load_job(JOBS / "digits_branch.yaml", {"batch_size_schedule": [[0, 32], [800, 16]]})
    lr, rule = train_lr(job, None, None)
    assert rule == "linear" and lr == pytest.approx(job.branch.base_lr * 32 / 8)
    assert train_lr(job, None, "sqrt")[0] == pytest.approx(job.branch.base_lr * 2)
    assert default_max_examples(job) == (400 + 320) * 8
