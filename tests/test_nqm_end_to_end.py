"""The whole pipeline finds the right critical batch size where the answer is known.

A real sweep (local Ray, Optuna studies, MLflow SQLite) on the exact noisy quadratic model,
then the analysis fit; compared with `critbatch nqm`'s ground truth (optimal LR over a
continuous range, exact steps). Tolerances from the issue: steps within 5% per batch size,
B_crit within 10%.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from analysis.ground_truth import ground_truth
from trainables.nqm_truth import NQM
from tune_jobs.job_file import parse_job
from tune_jobs.journal import ASK, EVENT, WITHDRAW, journal_path, read_events
from tune_jobs.summary import sweep_summary
from tune_jobs.sweep import run_sweep

JOB = Path(__file__).resolve().parents[1] / "tune_jobs" / "jobs" / "nqm_small.yaml"


def _job(tmp_path, name: str, **lr_search):
    d = yaml.safe_load(JOB.read_text())
    d.update(
        name=name,
        batch_sizes=[64, 256, 1024, 4096, 16384],
        storage=str(tmp_path / "runs"),
        tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": name},
    )
    d["lr_search"] |= {"trials_per_batch_size": 10, **lr_search}
    return parse_job(d)


def _check_against_truth(job, summary) -> None:
    rows = summary.steps_table()

    o = job.options
    truth = ground_truth(
        NQM(o["dim"], o["exponent"], o["noise_scale"], o["s0"]), job.batch_sizes, job.target.value
    )
    for row, b, steps in zip(rows.itertuples(), truth["batch_sizes"], truth["steps"], strict=True):
        assert row.batch_size == b
        assert row.steps == row.steps, f"batch size {b} never reached the target"
        assert abs(row.steps / steps - 1) <= 0.05, (b, row.steps, steps)

    b_crit = summary.cbs.b_crit
    assert abs(b_crit / truth["b_crit"] - 1) <= 0.10, (b_crit, truth["b_crit"])


@pytest.mark.slow
def test_sweep_recovers_nqm_ground_truth(ray_local, tmp_path):
    job = _job(tmp_path, "nqm-e2e")  # the cascade, as nqm_small.yaml ships
    res = run_sweep(job, progress=False)
    summary, _ = sweep_summary(res, job)  # what `critbatch run` prints
    _check_against_truth(job, summary)


@pytest.mark.slow
def test_parallel_sweep_recovers_nqm_ground_truth(ray_local, tmp_path):
    """The parallel search through real Ray: every batch size starts before any finishes
    (as far as the 2 CPUs allow), obsolete first trials are stopped and withdrawn (in the
    journal, the table and MLflow), and the answer is the same as the cascade's."""
    job = _job(tmp_path, "nqm-par", cascade=False, parallel=True)
    res = run_sweep(job, progress=False)
    summary, _ = sweep_summary(res, job)
    _check_against_truth(job, summary)

    events = read_events(journal_path(res.run_dir))
    asks = [e for e in events if e.get(EVENT) == ASK]
    records = [e for e in events if EVENT not in e]
    search = [r for r in records if r.get("phase") != "confirm"]
    assert len(asks) == len(search)  # every ask ended once: a result or a withdrawal
    assert {(e["study"], e["number"]) for e in asks} == {
        (r["proposal"]["study"], r["proposal"]["number"]) for r in search
    }
    withdrawn = {e["trial_id"] for e in events if e.get(EVENT) == WITHDRAW}
    assert {r["trial_id"] for r in records if r["status"] == "withdrawn"} == withdrawn
    rows = json.loads((res.run_dir / "trials.json").read_text())
    assert {r["trial_id"] for r in rows if r["status"] == "withdrawn"} == withdrawn
    assert len(rows) == len(records)
    # MLflow: a child run per trial, the withdrawn ones with their status
    runs = MlflowClient(res.tracking_uri).search_runs(
        [res.experiment_id], "tags.mlflow.parentRunId != ''", max_results=1000
    )
    status = {
        r.data.tags.get("critbatch.trial_id"): r.data.tags.get("critbatch.status") for r in runs
    }
    assert len(runs) == len(records)
    assert all(status.get(t) == "withdrawn" for t in withdrawn)


def _search_events(run_dir: Path) -> tuple[list[tuple], list[str]]:
    """The journal as the search saw it, without Tune's random trial ids: asks, withdrawals
    and results, in order, at their virtual times; and the confirmation runs' records (off
    the clock: journaled as they end in real time), sorted."""
    out, confirm = [], []
    for e in read_events(journal_path(run_dir)):
        if e.get(EVENT):
            out.append((e[EVENT], e["study"], e["number"], e["lr"], e.get("at")))
            continue
        row = {k: v for k, v in e["row"].items() if k != "trial_id"}
        rec = (e["proposal"]["study"], e["proposal"]["number"], e["status"], e["outcome"],
               e.get("at"), sorted(row.items()))  # fmt: skip
        if e.get("phase") == "confirm":
            assert "at" not in e
            confirm.append(repr(rec))
        else:
            out.append(rec)
    return out, sorted(confirm)


@pytest.mark.slow
def test_parallel_sweep_is_the_same_whatever_the_real_timing(ray_local, tmp_path, monkeypatch,
                                                            caplog):  # fmt: skip
    """The parallel search on its virtual clock (tune_jobs/vclock.py) through real Ray: the same
    job (``max_concurrent: 5``, so 5 virtual workers) run unpaced on 2 real workers (each
    trial runs to its end before its first report is read; 3 of 5 studies wait for a worker;
    no trial waits at a held report, as the cluster cannot run all 5), paced on 5 (every study
    in flight, stops acting mid-trial; trials wait at reports the clock holds back), and paced
    on 2 real workers as if the cluster had held 5 at launch (as after a lost node: trials
    wait at held reports until one of the clock's waits too long to start, then go on)
    proposes, stops, withdraws and journals the same trials, and prints the same B_crit."""
    from tune_jobs import scheduler, sweep

    runs = []
    for name, pace, cpus in (("unpaced", 0.0, 1.0), ("paced", 2e-6, 0.25), ("lost", 2e-6, 1.0)):
        d = yaml.safe_load(JOB.read_text())
        d.update(name=name, batch_sizes=[64, 256, 1024, 4096, 16384],
                 storage=str(tmp_path / name),
                 tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": name})  # fmt: skip
        d["lr_search"] |= {"trials_per_batch_size": 8, "cascade": False, "parallel": True}
        d["options"] |= {"seconds_per_step": pace}
        d["resources"] |= {"cpus": cpus}
        d["max_concurrent"] = 5
        job = parse_job(d)
        if name == "lost":
            monkeypatch.setattr(sweep, "cluster_fits", lambda job: 5)
            monkeypatch.setattr(scheduler, "HOLD_PENDING_S", 1.0)
        with caplog.at_level(logging.WARNING, logger="critbatch.search"):
            res = run_sweep(job, progress=False)
        summary, _ = sweep_summary(res, job)
        runs.append((res, summary))
        waited = [r for r in caplog.records if "waited 1 s to start" in r.getMessage()]
        assert bool(waited) == (name == "lost"), name
        caplog.clear()
    (a, sa) = runs[0]
    for b, sb in runs[1:]:
        assert _search_events(a.run_dir) == _search_events(b.run_dir)
        assert sa.cbs.b_crit == sb.cbs.b_crit
        assert sa.text() == sb.text()  # what `critbatch run` prints
        ta, tb = (s.steps_table().drop(columns=["trial"]) for s in (sa, sb))  # Tune's random ids
        pd.testing.assert_frame_equal(ta, tb)


@pytest.mark.slow
def test_the_parallel_searchs_workers_are_the_sweeps(ray_local, tmp_path):
    """The virtual clock's workers (tune_jobs/placement.py:search_slots) on the local 2-CPU Ray:
    as many trials as the CPUs hold, or max_concurrent; none known (0: one per study) when the
    trials ask for GPUs the cluster has none of yet."""
    from tune_jobs.placement import search_slots

    def slots(**fields) -> int:
        d = yaml.safe_load(JOB.read_text())
        d.update(storage=str(tmp_path), tracking={"uri": f"sqlite:///{tmp_path / 'm.db'}"})
        for k, v in fields.items():
            d[k] = {**d[k], **v} if isinstance(v, dict) else v
        return search_slots(parse_job(d))

    assert slots(resources={"cpus": 0.5}) == 4
    assert slots(resources={"cpus": 1}) == 2
    assert slots(resources={"cpus": 0.5}, max_concurrent=3) == 3
    assert slots(resources={"cpus": 1, "gpus": 1}) == 0
