"""The journal of finished trials and the search's replay from it, in-process (no Ray): a
searcher told results in a made-up order, cut off mid-round as a killed driver would be,
then replayed from its journal, proposes exactly what the uninterrupted searcher proposes."""

from __future__ import annotations

import math
from pathlib import Path

from tune_jobs.job_file import parse_job
from tune_jobs.journal import append_record, journal_path, read_records
from tune_jobs.searcher import SweepSearcher


def _job(tmp_path: Path, confirm_seeds: int = 0):
    return parse_job({
        "name": "replay", "workload": "synthetic", "batch_sizes": [8, 32, 128],
        "lr_search": {"min": 0.01, "max": 2.0, "trials_per_batch_size": 4, "confirm_seeds": confirm_seeds, "seed": 5},
        "target": {"metric": "eval_loss", "value": 0.3, "direction": "min"},
        "budget": {"max_steps": 100}, "eval_every": 10,
        "tracking": {"uri": f"sqlite:///{tmp_path / 'm.db'}"}, "storage": str(tmp_path / "runs"),
    })  # fmt: skip


def _result(cfg: dict) -> dict:
    """A made-up but deterministic outcome: reached sooner near lr 0.3 x sqrt(B / 8)."""
    gap = abs(math.log(cfg["lr"] / (0.3 * math.sqrt(cfg["batch_size"] / 8))))
    if gap > 1.5:
        return {"step": 20, "status": "diverged", "eval_loss": float("nan")}
    steps = 10 * (1 + int(6 * gap))
    return {"step": steps, "status": "reached", "steps_to_target": steps, "eval_loss": 0.29}


def _run(searcher: SweepSearcher, stop_after: int | None = None, prefix: str = "t") -> list[tuple]:
    """Suggest and finish trials two at a time (finishing the newer first); stop (the driver
    dies) after ``stop_after`` completions. Returns (study, number, lr) in suggestion order."""
    asked, live, done, n = [], [], 0, 0
    while True:
        while len(live) < 2:
            cfg = searcher.suggest(f"{prefix}{n}")
            if not isinstance(cfg, dict):
                break
            asked.append(
                (cfg["study"], cfg["study_trial"], cfg["lr"], cfg["seed"], cfg.get("phase"))
            )
            live.append((f"{prefix}{n}", cfg))
            n += 1
        if not live:
            return asked
        tid, cfg = live.pop()
        searcher.on_trial_complete(tid, _result(cfg))
        done += 1
        if done == stop_after:
            return asked


def test_replayed_search_proposes_what_the_uninterrupted_one_does(tmp_path: Path) -> None:
    job = _job(tmp_path)
    sizes = dict.fromkeys(job.batch_sizes, 4096)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = _run(SweepSearcher(job, None, sizes, journal_path(tmp_path / "a")))
    killed = SweepSearcher(job, None, sizes, journal_path(tmp_path / "b"))
    _run(killed, stop_after=5)
    records = read_records(journal_path(tmp_path / "b"))
    assert len(records) == 5 and records[0]["outcome"] and records[0]["row"]["lr"]
    resumed = SweepSearcher(job, None, sizes, journal_path(tmp_path / "b"))
    resumed.replay(records)
    finished = {(r["proposal"]["study"], r["proposal"]["number"]) for r in records}
    after = _run(resumed, prefix="r")  # new trial ids, as Tune gives after a resume
    # what the resumed search runs = the uninterrupted search's trials minus the finished ones
    assert sorted(after) == sorted(t for t in whole if (t[0], t[1]) not in finished)
    assert len(read_records(journal_path(tmp_path / "b"))) == len(whole)


def test_replay_owes_the_confirmation_runs_that_had_not_finished(tmp_path: Path) -> None:
    """Killed at every point of a sweep with 2 confirmation runs per study (during the search,
    between, and while confirmation runs train, the last included): the resumed searcher runs
    exactly the trials, search and confirmation, that the journal does not hold."""
    job = _job(tmp_path, confirm_seeds=2)
    sizes = dict.fromkeys(job.batch_sizes, 4096)
    (tmp_path / "whole").mkdir()
    searcher = SweepSearcher(job, None, sizes, journal_path(tmp_path / "whole"))
    whole = _run(searcher)
    confirm = [t for t in whole if t[4] == "confirm"]
    reached = [n for n in searcher.search.studies if n in searcher.search.stop_bound]
    # 2 seeds at each reached study's chosen LR and at the LR below it
    assert reached and len(confirm) == 2 * 2 * len(reached) == len(set(confirm))
    for stop in range(1, len(whole)):
        d = tmp_path / f"k{stop}"
        d.mkdir()
        _run(SweepSearcher(job, None, sizes, journal_path(d)), stop_after=stop)
        records = read_records(journal_path(d))
        resumed = SweepSearcher(job, None, sizes, journal_path(d))
        resumed.replay(records)
        assert not resumed.exhausted
        done = {
            (r["proposal"]["study"], r["proposal"]["seed"], r["proposal"]["lr"]) for r in records
        }
        after = _run(resumed, prefix="r")
        assert sorted(after) == sorted(t for t in whole if (t[0], t[3], t[2]) not in done), stop
        assert len(read_records(journal_path(d))) == len(whole), stop


def test_a_torn_last_line_is_an_unfinished_trial(tmp_path: Path) -> None:
    path = tmp_path / "finished.jsonl"
    append_record(path, {"trial_id": "a", "status": "reached"})
    with path.open("a") as f:
        f.write('{"trial_id": "b", "sta')  # the driver killed mid-write
    assert [r["trial_id"] for r in read_records(path)] == ["a"]


def test_a_trial_id_given_out_before_is_refused(tmp_path: Path) -> None:
    """Tune's trial ids are 8 random hex digits and may repeat within a long sweep (or collide
    with a trial of the sweep before a resume): the searcher refuses an id it has given out,
    without spending a proposal, and Tune draws another."""
    job = _job(tmp_path)
    sizes = dict.fromkeys(job.batch_sizes, 4096)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ref = SweepSearcher(job, None, sizes, journal_path(tmp_path / "a"))
    first, second = ref.suggest("x1"), ref.suggest("x2")
    s = SweepSearcher(job, None, sizes, journal_path(tmp_path / "b"))
    assert s.suggest("x1") == first
    assert s.suggest("x1") is None  # refused: the proposal is still owed
    assert s.suggest("x3") == second
    s.on_trial_complete("x1", _result(first))
    resumed = SweepSearcher(job, None, sizes, journal_path(tmp_path / "b"))
    resumed.replay(read_records(journal_path(tmp_path / "b")))
    assert resumed.suggest("x1") is None  # journaled before the resume
    assert isinstance(resumed.suggest("x4"), dict)
