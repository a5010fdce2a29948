"""The sweep end to end on real Ray (local), real Optuna and real MLflow (SQLite)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from analysis.packets import POINTS, points_of
from tune_jobs.job_file import parse_job
from tune_jobs.sweep import run_sweep
from tune_jobs.tracking import read_results

REPO = Path(__file__).resolve().parents[1]


def synthetic_job(tmp_path, name="s", **over):
    d = {
        "name": name,
        "workload": "synthetic",
        "batch_sizes": [8, 32, 128],
        # no confirmation runs: these tests count search trials (tests/test_noisy_estimate.py
        # covers confirmation)
        "lr_search": {
            "min": 0.001,
            "max": 2.0,
            "trials_per_batch_size": 3,
            "seed": 0,
            "confirm_seeds": 0,
        },
        "target": {"metric": "eval_loss", "value": 0.2, "direction": "min"},
        "budget": {"max_steps": 200},
        "eval_every": 10,
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": name},
        "storage": str(tmp_path / "runs"),
    }
    d.update(over)
    return d


def children(client, exp_name):
    exp = client.get_experiment_by_name(exp_name)
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    parents = [r for r in runs if r.data.tags.get("critbatch.role") == "sweep"]
    kids = [r for r in runs if r.data.tags.get("critbatch.role") == "trial"]
    return parents, kids


@pytest.mark.slow
def test_full_sweep_parent_children_and_metric_counts(ray_local, tmp_path):
    job = parse_job(synthetic_job(tmp_path))
    res = run_sweep(job, progress=False)
    assert len(res.trials) == job.total_trials == 9

    client = MlflowClient(job.tracking.uri)
    parents, kids = children(client, "s")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert (
        parent.data.params["workload"] == "synthetic"
        and parent.data.params["target_metric"] == "eval_loss"
    )
    assert parent.data.tags["critbatch.git_commit"]
    assert "job.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert len(kids) == 9
    assert len({k.data.tags["critbatch.trial_id"] for k in kids}) == 9
    by_trial = {t["trial_id"]: t for t in res.trials}
    packed = 0  # results that carried several reports (tune_jobs.trainable.ReportCoalescer)
    for k in kids:
        assert k.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert k.info.status == "FINISHED"
        for p in ("batch_size", "lr", "strategy", "workload", "seed"):
            assert p in k.data.params
        t = by_trial[k.data.tags["critbatch.trial_id"]]
        assert k.data.tags["critbatch.status"] == t["status"]
        assert int(k.data.params["batch_size"]) == t["batch_size"]
        # every report Tune recorded is in MLflow, once, keyed by its step
        trial_dir = next(d for d in res.run_dir.iterdir() if d.is_dir() and t["trial_id"] in d.name)
        lines = read_results(trial_dir)
        packed += sum(POINTS in r for r in lines)
        rows = [p for r in lines for p in points_of(r)]  # a packet: each of its reports
        hist = client.get_metric_history(k.info.run_id, "train_loss")
        assert sorted(m.step for m in hist) == [r["step"] for r in rows]
        assert "objective" in k.data.metrics
        if t["status"] == "reached":
            assert k.data.metrics["steps_to_target"] == t["steps_to_target"]
            assert len(client.get_metric_history(k.info.run_id, "eval_loss")) == len(rows)
        else:
            assert "steps_to_target" not in k.data.metrics
    sizes = [t["batch_size"] for t in res.trials]
    assert sorted(set(sizes)) == [8, 32, 128] and all(sizes.count(b) == 3 for b in set(sizes))
    assert any(t["steps_to_target"] for t in res.trials)
    # synthetic trials report every few ms: they sent packets, and MLflow holds all they carried
    assert packed > 0


@pytest.mark.slow
def test_diverging_trials_are_results_not_crashes(ray_local, tmp_path):
    job = parse_job(synthetic_job(tmp_path, "div", batch_sizes=[64],
                                  lr_search={"min": 20.0, "max": 50.0, "trials_per_batch_size": 2}))  # fmt: skip
    res = run_sweep(job, progress=False)
    assert [t["status"] for t in res.trials] == ["diverged", "diverged"]
    _, kids = children(MlflowClient(job.tracking.uri), "div")
    assert sorted(k.data.tags["critbatch.status"] for k in kids) == ["diverged", "diverged"]
    assert all(k.info.status == "FINISHED" for k in kids)
    assert all(t["steps_to_target"] is None for t in res.trials)


@pytest.mark.slow
def test_lsr_sweep_scales_the_lr_warms_up_in_epochs_and_logs_the_strategy(ray_local, tmp_path):
    """The seed paper's LSR through the whole sweep: one trial per batch size at
    lr = base_lr * B / base_batch_size, a linear warm-up of W epochs (more steps at the small
    batch size), and the strategy in every child run's params."""
    job = parse_job(synthetic_job(
        tmp_path, "lsr", batch_sizes=[16, 64],
        strategy={"name": "lsr", "base_batch_size": 16, "base_lr": 0.02, "warmup_epochs": 0.25},
        target={"metric": "eval_loss", "value": 0.0, "direction": "min"},  # every trial runs on
        budget={"epochs": 0.5}, eval_every=8, early_stopping={"enabled": False}))  # fmt: skip
    res = run_sweep(job, progress=False)
    assert sorted((t["batch_size"], t["lr"]) for t in res.trials) == [(16, 0.02), (64, 0.08)]
    _, kids = children(MlflowClient(job.tracking.uri), "lsr")
    assert len(kids) == 2
    client = MlflowClient(job.tracking.uri)
    # synthetic: 4,096 training examples, so W = 0.25 epochs is 64 steps at B = 16, 16 at B = 64
    for k in kids:
        b, p = int(k.data.params["batch_size"]), k.data.params
        peak, warmup = 0.02 * b / 16, 4096 // b // 4
        assert (p["strategy"], p["strategy.base_lr"], p["strategy.base_batch_size"]) == (
            "lsr",
            "0.02",
            "16",
        )
        assert p["strategy.warmup_epochs"] == "0.25" and float(p["lr"]) == pytest.approx(peak)
        lrs = {m.step: m.value for m in client.get_metric_history(k.info.run_id, "lr")}
        assert max(lrs) == 4096 // b // 2  # half an epoch of steps
        for step, lr in lrs.items():  # the LR of the window's last step (0-based step - 1)
            assert lr == pytest.approx(peak * min(step / warmup, 1.0)), (b, step)
        assert min(lrs.values()) < peak  # the first eval point is inside the warm-up


@pytest.mark.slow
def test_existing_sweep_name_is_refused_before_anything_runs(ray_local, tmp_path):
    d = synthetic_job(
        tmp_path,
        "dup",
        batch_sizes=[8],
        lr_search={"min": 0.01, "max": 0.5, "trials_per_batch_size": 1},
    )
    run_sweep(parse_job(d), progress=False)
    from tune_jobs.config import JobError

    with pytest.raises(JobError, match="critbatch resume dup"):
        run_sweep(parse_job(d), progress=False)


def _env(tmp_path):
    env = dict(os.environ)
    env["HOME"] = str(tmp_path / "home")
    # Ray's socket paths must stay under 107 bytes: a short folder, not pytest's deep tmp_path.
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="cbr", dir="/tmp")
    Path(env["HOME"]).mkdir(exist_ok=True)
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.slow  # its studies run one after another at first: minutes on 2 busy cores
def test_pipeline_sweep_through_tune_starts_each_study_behind_the_next_larger(ray_local, tmp_path):
    lr = {"min": 0.001, "max": 2.0, "trials_per_batch_size": 3, "seed": 0, "pipeline": 2}
    job = parse_job(synthetic_job(tmp_path, name="pipe", lr_search=lr))
    res = run_sweep(job, progress=False)
    # Tune numbers its trials in the order the searcher proposed them
    order = sorted(
        (int(m.group(1)), int(m.group(2)))
        for d in res.run_dir.iterdir()
        if (m := re.search(r"_(\d+)_batch_size=(\d+),", d.name))
    )
    sizes = [b for _, b in order]
    assert sizes[:2] == [128, 128]  # bs32 waits for two results of bs128, bs8 for two of bs32
    assert sizes.index(8) > sizes.index(32) > 0 and set(sizes) == {8, 32, 128}
    _, kids = children(MlflowClient(job.tracking.uri), "pipe")
    assert len(kids) == len(res.trials) == len(order)
    assert all(t["status"] != "errored" for t in res.trials)


def test_tune_keeps_a_bounded_state_per_finished_trial(ray_local, tmp_path):
    """Driver memory over a long sweep (BENCHMARKS.md, "Driver memory at 10,000 trials"): the
    sweep's scheduler releases Tune's per-metric statistics of every finished trial
    (tune_jobs/ray_internals.py), so each finished trial's entry in the experiment state Tune
    keeps in memory, and writes to the run folder, is its last result and little more (it
    was ~14 KB of JSON with the statistics), while the run folder, journal and analysis
    still have everything."""
    import json

    from analysis.loaders import load_ray_folder

    job = parse_job({
        "name": "bounded", "workload": "nqm_exact", "batch_sizes": [8, 64, 512],
        "lr_search": {"min": 1e-3, "max": 1.0, "trials_per_batch_size": 8,
                      "algorithm": "random", "confirm_seeds": 0},
        "early_stopping": {"enabled": False},
        "target": {"metric": "eval_loss", "value": 0.05, "direction": "min"},
        "budget": {"max_steps": 2000}, "eval_every": 100,
        "options": {"dim": 1000, "max_reports": 20},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "storage": str(tmp_path / "runs"),
    })  # fmt: skip
    res = run_sweep(job, progress=False)
    assert len(res.trials) == 24
    (snapshot,) = res.run_dir.glob("experiment_state-*.json")
    data = json.loads(snapshot.read_text())["trial_data"]
    assert len(data) == 24
    for _, meta_json in data:
        meta = json.loads(meta_json)
        assert meta["metric_analysis"] == {} and meta["metric_n_steps"] == {}
        assert meta["last_result"]["step"] > 0  # what the callbacks read is kept
        assert len(meta_json) < 4096, len(meta_json)
    df = load_ray_folder(res.run_dir)  # every report is still in the run folder
    assert df["trial"].nunique() == 24


@pytest.mark.slow
def test_tune_trial_ids_that_repeat_still_give_one_trial_each(ray_local, tmp_path, monkeypatch):
    """Tune draws a trial id as 8 random hex digits: in a 10,000-trial sweep two trials share
    one with probability ~1.2%, and the 10,000-trial benchmark hit it (both trials' points went
    to one MLflow run). Here Tune draws ids from a list that repeats itself; the sweep refuses
    an id it has given out, so every trial runs under its own id, once in the journal, the
    table and MLflow."""
    import itertools

    from ray.tune.experiment import Trial
    from test_cluster_multinode import assert_mlflow_matches_tune

    from tune_jobs.journal import journal_path, read_records

    draws = itertools.chain(["aaaa0001", "aaaa0001", "aaaa0002", "aaaa0001", "aaaa0002"],
                            (f"bbbb{i:04d}" for i in itertools.count()))  # fmt: skip
    monkeypatch.setattr(Trial, "generate_id", classmethod(lambda cls: next(draws)))
    job = parse_job(synthetic_job(tmp_path, "dupids", batch_sizes=[8, 32]))
    res = run_sweep(job, progress=False)
    ids = [r["trial_id"] for r in res.trials]
    assert len(ids) == 6 and len(set(ids)) == 6
    assert {"aaaa0001", "aaaa0002"} <= set(ids)
    assert sorted(r["trial_id"] for r in read_records(journal_path(res.run_dir))) == sorted(ids)
    assert_mlflow_matches_tune(job.tracking.uri, "dupids", res.run_dir)
