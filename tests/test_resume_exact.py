"""A driver killed with SIGKILL at three points, then `critbatch resume`: the same table as the
sweep that was never killed, every trial exactly once in MLflow, no finished trial run again.

Real stack: the `critbatch` CLI in its own process (its own local Ray), real Optuna (the line
search in synchronous rounds), ASHA early stopping on, MLflow on SQLite. Kill points, read off
the journal of finished trials and Tune's trial folders: `early` (a first trial finished),
`middle` (the second round under way, and the driver's MLflow writer blocked mid-request on
the store's lock), `last_round` (a trial of the last round started).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_cluster_multinode import assert_mlflow_matches_tune, child_runs, synthetic_job_data
from test_sweep import _env

from tune_jobs.journal import ASK, EVENT, JOURNAL_FILE, WITHDRAW, read_events, read_records
from tune_jobs.lr_rules import COARSE_TRIALS

CLI = [sys.executable, "-m", "tune_jobs.cli"]
TOTAL = 6  # 2 batch sizes x 3 trials, two at a time: three rounds of the line search


def _job(tmp_path: Path, name: str, confirm_seeds: int = 0) -> Path:
    data = synthetic_job_data(
        tmp_path, name, f"sqlite:///{tmp_path / 'mlflow.db'}",
        batch_sizes=[8, 32],
        lr_search={"min": 0.01, "max": 2.0, "trials_per_batch_size": 3, "confirm_seeds": 0, "algorithm": "line_search", "seed": 3},
        target={"metric": "eval_loss", "value": 0.3, "direction": "min"},
        budget={"max_steps": 80},
        early_stopping={"enabled": True, "grace_steps": 20},
        options={"sleep_per_step": 0.2},
    )  # fmt: skip
    data["lr_search"]["confirm_seeds"] = confirm_seeds
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(tmp_path: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args, "--num-cpus", "2", "--no-progress"], env=_env(tmp_path),
                          cwd=tmp_path, capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _table(run_dir: Path) -> list[dict]:
    """The sweep's table without trial ids (a restarted trial gets a new one)."""
    rows = json.loads((run_dir / "trials.json").read_text())
    return [{k: v for k, v in r.items() if k != "trial_id"} for r in rows]


def _start_driver(tmp_path: Path, job: Path) -> subprocess.Popen:
    """`critbatch run job` in its own process group (its local Ray too), logging to driver.log."""
    log = open(tmp_path / "driver.log", "wb")  # noqa: SIM115 (the driver process writes it)
    return subprocess.Popen([*CLI, "run", str(job), "--num-cpus", "2", "--no-progress"],
                            env=_env(tmp_path), cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _started(run_dir: Path) -> int:
    return sum(1 for d in run_dir.glob("*") if (d / "params.json").exists())


KILL_AT = {  # (journaled trials, trial folders) -> kill now
    "early": lambda done, started: done >= 1,
    "middle": lambda done, started: done >= 2 and started >= 3,
    "last_round": lambda done, started: started >= TOTAL - 1 and done < TOTAL,
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The table of the same sweep, never interrupted."""
    tmp = tmp_path_factory.mktemp("reference")
    out = _run(tmp, "run", str(_job(tmp, "exact")))
    assert out.returncode == 0, out.stderr[-3000:]
    return _table(tmp / "runs" / "exact")


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("point", list(KILL_AT))
def test_driver_sigkill_then_resume_gives_the_uninterrupted_table(
    tmp_path: Path, reference: list[dict], point: str
) -> None:
    job = _job(tmp_path, "exact")
    run_dir = tmp_path / "runs" / "exact"
    driver = _start_driver(tmp_path, job)
    deadline = time.time() + 900  # a loaded 2-core host may need minutes to start Ray
    journal = run_dir / JOURNAL_FILE
    while not KILL_AT[point](
        len(read_records(journal)), _started(run_dir) if run_dir.exists() else 0
    ):
        assert driver.poll() is None, (
            "driver ended before the kill:\n" + (tmp_path / "driver.log").read_text()[-3000:]
        )
        assert time.time() < deadline, "sweep never got going"
        time.sleep(0.1)
    lock = None
    if point == "middle":  # hold MLflow's SQLite store so the writer's next request waits on
        lock = sqlite3.connect(tmp_path / "mlflow.db", timeout=60)  # it: killed mid-write
        lock.execute("BEGIN EXCLUSIVE")
        time.sleep(1.5)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    if lock is not None:
        lock.rollback()
        lock.close()
    time.sleep(1)
    os.killpg(driver.pid, signal.SIGKILL)  # its local Ray too: the whole host lost the driver
    before = {r["trial_id"]: r for r in read_records(journal)}
    lines_before = {
        tid: (run_dir.glob(f"*{tid}*").__next__() / "result.json").read_text() for tid in before
    }
    assert len(before) < TOTAL, "killed after the end: not this scenario"

    out = _run(tmp_path, "resume", "exact", "--storage", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr[-3000:]

    # The same table as the sweep that was never killed.
    assert _table(run_dir) == reference
    # No finished trial ran again: its folder and its result.json are as they were, the
    # journal holds each trial once, and the only extra attempts are those set aside.
    after = read_records(journal)
    assert len(after) == TOTAL and {r["trial_id"] for r in after} >= set(before)
    keys = [(r["proposal"]["study"], r["proposal"]["number"]) for r in after]
    assert len(set(keys)) == TOTAL
    for tid, text in lines_before.items():
        assert (run_dir.glob(f"*{tid}*").__next__() / "result.json").read_text() == text
    abandoned = [d for d in (run_dir / "abandoned").glob("*/*") if (d / "params.json").exists()] \
        if (run_dir / "abandoned").exists() else []  # fmt: skip
    assert _started(run_dir) == TOTAL
    assert all(json.loads((d / "params.json").read_text()) for d in abandoned)
    # MLflow: each trial of the table exactly once, every step once, its status and end set.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert_mlflow_matches_tune(uri, "exact", run_dir)
    by_id = {r["trial_id"]: r for r in after}
    for tid, runs in child_runs(uri, "exact").items():
        run = runs[0]
        assert run.data.tags["critbatch.status"] == by_id[tid]["status"]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["objective"] == pytest.approx(by_id[tid]["objective"])
        assert run.data.params["batch_size"] == str(by_id[tid]["proposal"]["batch_size"])


def _confirm_started(run_dir: Path) -> int:
    return sum(
        1
        for d in run_dir.glob("*")
        if (d / "params.json").exists()
        and json.loads((d / "params.json").read_text()).get("phase") == "confirm"
    )


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_driver_killed_mid_confirmation_then_resume_gives_the_uninterrupted_table(
    tmp_path: Path,
) -> None:
    """The confirmation runs (fresh seeds at each study's chosen LR) resume like the search:
    killed while one of them trains, `critbatch resume` finishes the sweep with the table of
    the sweep that was never killed, each confirmation run once."""
    total = TOTAL + 2 * 2 * 2  # 2 confirmation seeds x 2 LRs per batch size
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    out = _run(ref_dir, "run", str(_job(ref_dir, "conf", confirm_seeds=2)))
    assert out.returncode == 0, out.stderr[-3000:]
    reference = _table(ref_dir / "runs" / "conf")
    assert sum(r["seed"] >= 1_000_000 for r in reference) == 8

    job = _job(tmp_path, "conf", confirm_seeds=2)
    run_dir = tmp_path / "runs" / "conf"
    driver = _start_driver(tmp_path, job)
    deadline = time.time() + 900
    journal = run_dir / JOURNAL_FILE
    while not (run_dir.exists() and _confirm_started(run_dir) >= 1):
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert time.time() < deadline, "no confirmation run ever started"
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    time.sleep(1)
    os.killpg(driver.pid, signal.SIGKILL)
    before = read_records(journal)
    assert len(before) < total, "killed after the end: not this scenario"

    out = _run(tmp_path, "resume", "conf", "--storage", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert _table(run_dir) == reference
    after = read_records(journal)
    keys = [(r["proposal"]["study"], r["proposal"]["seed"], r["proposal"]["lr"]) for r in after]
    assert len(after) == total and len(set(keys)) == total


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_parallel_search_killed_mid_write_then_resume_ends_every_trial_once(
    tmp_path: Path,
) -> None:
    """The parallel LR search (every batch size in flight, proposals that depend on which
    trials had finished): killed while the MLflow writer waits on the store, `critbatch resume`
    replays the journaled asks, results and withdrawals in order (it refuses a journal the
    search does not reproduce), owes the trials that were running, and ends every proposal
    exactly once, in the journal, the table and MLflow."""
    data = yaml.safe_load(_job(tmp_path, "par").read_text())
    data["batch_sizes"] = [8, 32, 128]
    data["lr_search"] |= {"parallel": True}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "runs" / "par"
    driver = _start_driver(tmp_path, job)
    deadline = time.time() + 900
    journal = run_dir / JOURNAL_FILE
    while len(read_records(journal)) < 3:
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert time.time() < deadline, "sweep never got going"
        time.sleep(0.1)
    lock = sqlite3.connect(tmp_path / "mlflow.db", timeout=60)  # the writer's next request waits
    lock.execute("BEGIN EXCLUSIVE")
    time.sleep(1.5)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    lock.rollback()
    lock.close()
    time.sleep(1)
    os.killpg(driver.pid, signal.SIGKILL)
    before = read_events(journal)
    asked_before = {(e["study"], e["number"]) for e in before if e.get(EVENT) == ASK}
    done_before = [r for r in before if EVENT not in r]
    lines_before = {r["trial_id"]: next(run_dir.glob(f"*{r['trial_id']}*")).joinpath(
        "result.json").read_text() for r in done_before}  # fmt: skip
    assert len(asked_before) > len(done_before), "nothing in flight: not this scenario"

    out = _run(tmp_path, "resume", "par", "--storage", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr[-3000:]
    after = read_events(journal)
    assert after[: len(before)] == before  # the resumed driver appends only
    asks = [(e["study"], e["number"]) for e in after if e.get(EVENT) == ASK]
    withdrawn = [(e["study"], e["number"]) for e in after if e.get(EVENT) == WITHDRAW]
    records = [r for r in after if EVENT not in r]
    told = [(r["proposal"]["study"], r["proposal"]["number"]) for r in records
            if r["status"] != "withdrawn"]  # fmt: skip
    assert len(asks) == len(set(asks)) and len(told) == len(set(told))
    assert sorted(told + withdrawn) == sorted(asks)
    for study in {s for s, _ in asks}:
        # at most trials_per_batch_size results per study, plus its failed coarse-pass
        # trials (its first COARSE_TRIALS asks, which do not count when they fail)
        mine = sorted(
            (r for r in records if r["proposal"]["study"] == study and r["status"] != "withdrawn"),
            key=lambda r: r["proposal"]["number"],
        )
        free = sum(r["status"] != "reached" for r in mine[:COARSE_TRIALS])
        assert len(mine) <= 3 + free
    for tid, text in lines_before.items():  # no finished trial ran again
        assert next(run_dir.glob(f"*{tid}*")).joinpath("result.json").read_text() == text
    table = json.loads((run_dir / "trials.json").read_text())
    assert sorted(r["trial_id"] for r in table) == sorted(r["trial_id"] for r in records)
    assert_mlflow_matches_tune(f"sqlite:///{tmp_path / 'mlflow.db'}", "par", run_dir)
