"""ASHA ranks a study's trials on the smoothed target metric the stop rule uses, not on one
eval: an eval that dips within the noise at a rung does not stop a trial that is ahead.

In-process: the sweep's real scheduler and searcher, Ray's real ASHA bracket, made-up reports.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from trainables.api import StopRule
from tune_jobs.job_file import parse_job
from tune_jobs.scheduler import PerBatchSizeScheduler
from tune_jobs.searcher import SweepSearcher

GRACE = 50  # the first ASHA rung: 5 evals of 10 steps


def _scheduler(tmp_path: Path) -> PerBatchSizeScheduler:
    job = parse_job({
        "name": "asha", "workload": "digits_mlp", "batch_sizes": [16],
        "lr_search": {"min": 0.01, "max": 1.0, "trials_per_batch_size": 4, "confirm_seeds": 0},
        "target": {"metric": "eval_accuracy", "value": 0.99, "direction": "max"},
        "budget": {"max_steps": 1000}, "eval_every": 10,
        "early_stopping": {"enabled": True, "grace_steps": GRACE, "reduction_factor": 2},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'm.db'}"}, "storage": str(tmp_path / "runs"),
    })  # fmt: skip
    searcher = SweepSearcher(job, None, {16: 1000}, None)
    return PerBatchSizeScheduler(job, searcher, 1000)


def _report(s: PerBatchSizeScheduler, trial, step: int, acc: float) -> str:
    return s.on_trial_result(None, trial, {"step": step, "status": "running", "eval_accuracy": acc})


def _trial(tid: str):
    return SimpleNamespace(
        trial_id=tid, config={"study": "bs16-seed0", "batch_size": 16, "seed": 0}
    )


# steady: 0.80 at every eval. ahead: clearly better all along, one eval dips below 0.80 at the rung
STEADY = [0.80] * 5
AHEAD = [0.84, 0.86, 0.87, 0.88, 0.79]


def test_a_dip_at_the_rung_does_not_stop_a_trial_that_is_ahead(tmp_path: Path) -> None:
    s = _scheduler(tmp_path)
    steady, ahead = _trial("steady"), _trial("ahead")
    for k, acc in enumerate(STEADY):
        assert _report(s, steady, 10 * (k + 1), acc) == TrialScheduler.CONTINUE
    actions = [_report(s, ahead, 10 * (k + 1), acc) for k, acc in enumerate(AHEAD)]
    assert actions[-1] == TrialScheduler.CONTINUE  # smoothed 0.84 > 0.80 at step 50
    # what ASHA was fed at the rung: the stop rule's EMA of the trial's evals
    rule = StopRule(s.target)
    expected = [rule.update(a, 10 * (k + 1)) for k, a in enumerate(AHEAD)][-1]
    assert s.searcher.asha_fed["ahead"][-1] == (GRACE, expected)

    # a trial that is behind all along is still stopped at the rung
    behind = _trial("behind")
    actions = [_report(s, behind, 10 * (k + 1), 0.70) for k in range(5)]
    assert actions[-1] == TrialScheduler.STOP


def test_a_restarted_trial_smooths_from_its_first_eval_again(tmp_path: Path) -> None:
    s = _scheduler(tmp_path)
    t = _trial("t")
    for k in range(3):
        _report(s, t, 10 * (k + 1), 0.5)
    _report(s, t, 10, 0.9)  # restarted: the old evals no longer count
    assert s.smoothed["t"][1].update(None, 10) == 0.9
