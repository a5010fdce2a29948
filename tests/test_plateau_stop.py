"""The plateau stop (``early_stopping.plateau``): a trial whose smoothed metric has stalled
short of the target is stopped and counted as needing more steps; a trial still on its way,
noisy as it is, is not.

The rule alone on curves worked by hand, then the sweep's real scheduler and searcher fed the
reports of real ``nqm_sgd`` trials (sampled SGD on the noisy quadratic model), whose exact
answer says which LRs reach the target in expectation (:func:`trainables.nqm_truth.optimal_lr`;
``benchmarks/plateau_stop.py`` measures the same over more seeds and batch sizes).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from trainables.api import Status, TrialConfig
from trainables.nqm_truth import NQM, optimal_lr, steps_to_target
from trainables.workloads.nqm import train_sgd
from tune_jobs.job_file import parse_job
from tune_jobs.lr_rules import plateaued
from tune_jobs.scheduler import PerBatchSizeScheduler
from tune_jobs.searcher import SweepSearcher

OPTIONS = {"dim": 100, "noise_scale": 1.0, "exponent": 1.0, "s0": 1.0}
TARGET, B, EVAL_EVERY = 0.05, 16, 4


# ---- the rule ---------------------------------------------------------------------------------
def test_a_loss_levelled_off_above_the_target_has_plateaued():
    steps = [100, 200, 300, 400]
    assert plateaued(steps, [0.5, 0.0601, 0.06005, 0.06], 0.05, True, 0.01, 0)  # 0.0101 -> 0.01
    # closed 2% of the distance (0.0102 -> 0.01) since step 200: not yet under a 1% tolerance
    assert not plateaued(steps, [0.5, 0.0602, 0.0601, 0.06], 0.05, True, 0.01, 0)


def test_the_distance_to_the_target_counts_not_the_metrics_own_change():
    # the loss fell by only 0.8% of itself since half the steps, but closed 44% of the distance
    # to a target just below it: still on its way
    assert not plateaued([50, 100], [1.008, 1.0], 0.99, True, 0.01, 0)
    # an accuracy (direction max) stuck at 0.90 under a 0.95 target
    assert plateaued([100, 200, 400], [0.5, 0.9, 0.9], 0.95, False, 0.01, 0)
    assert not plateaued([100, 200, 400], [0.5, 0.9, 0.92], 0.95, False, 0.01, 0)


def test_the_level_is_smoothed_within_the_doubling_only():
    # reports thinning out geometrically (the NQM's): a fast fall, then level at 0.0988 above a
    # 0.01 target from step 17,600 on. The stop rule's EMA from the first eval (beta 0.8) still
    # falls by more than 1% of the distance per doubling at step 80,000, carrying the first
    # losses; smoothed within each doubling, the level is flat from twice 17,600 steps on.
    steps = [int(100 * 1.17**k) for k in range(48)]
    values = [0.0988 + 1.4 * min(1.0, (100 / s) ** 1.2) * (s < 17_600) for s in steps]
    until = [i for i, s in enumerate(steps) if s <= 80_000][-1] + 1
    assert plateaued(steps[:until], values[:until], 0.01, True, 0.01, 0.8)
    ema, num, den = [], 0.0, 0.0
    for v in values[:until]:
        num, den = 0.8 * num + v, 0.8 * den + 1
        ema.append(num / den)
    assert not plateaued(steps[:until], ema, 0.01, True, 0.01, 0)  # the EMA from the start
    # the doubling's own EMA still smooths noise: one low point does not hide a level
    noisy = values[: until - 1] + [0.0988 * 0.97]
    assert plateaued(steps[:until], noisy, 0.01, True, 0.01, 0.8)


def test_no_plateau_before_a_point_at_half_the_steps_or_once_the_target_is_met():
    assert not plateaued([100], [0.06], 0.05, True, 0.01, 0)  # nothing at step 50 or before
    assert not plateaued([100, 200], [0.05, 0.05], 0.05, True, 0.01, 0)  # met at half the steps
    assert not plateaued([100, 200], [0.045, 0.046], 0.05, True, 0.01, 0)


# ---- the scheduler on real noisy training ------------------------------------------------------
def _scheduler(tmp_path: Path, plateau: float, **fields) -> PerBatchSizeScheduler:
    job = parse_job({
        "name": "plateau", "workload": "nqm_sgd", "batch_sizes": [B], "options": OPTIONS,
        # a cascade has no ASHA, and no lag rule here: only the plateau (and the bound) can stop
        "lr_search": {"min": 1e-3, "max": 2.0, "trials_per_batch_size": 4, "confirm_seeds": 0,
                      "cascade": True, "lag_stop": 0},
        "target": {"metric": "eval_loss", "value": TARGET}, "budget": {"max_steps": 6000},
        "eval_every": EVAL_EVERY, "early_stopping": {"enabled": True, "plateau": plateau},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'm.db'}"}, "storage": str(tmp_path / "runs"),
    } | fields)  # fmt: skip
    return PerBatchSizeScheduler(job, SweepSearcher(job, None, {B: 6000}, None), 6000)


class _End(Exception):
    pass


def _train(s: PerBatchSizeScheduler, lr: float, seed: int) -> tuple[str, int]:
    """One nqm_sgd trial, every report through the scheduler: (how it ended, at which step)."""
    trial = SimpleNamespace(
        trial_id=f"t{lr:.4f}-{seed}", config={"study": f"bs{B}-seed0", "batch_size": B, "seed": 0}
    )
    end: list[tuple[str, int]] = []

    def report(m: dict, checkpoint: dict | None = None) -> None:
        if m["status"] != Status.RUNNING:
            end.append((str(m["status"]), m["step"]))
            raise _End
        if s.on_trial_result(None, trial, dict(m)) == TrialScheduler.STOP:
            end.append(("stopped", m["step"]))
            raise _End

    cfg = TrialConfig(workload="nqm_sgd", batch_size=B, lr=lr, seed=seed, max_steps=6000,
                      eval_every=EVAL_EVERY, target=s.target, options=OPTIONS)  # fmt: skip
    with pytest.raises(_End):
        train_sgd(cfg, report)
    return end[0]


@pytest.fixture(scope="module")
def best_lr() -> float:
    nqm = NQM(**OPTIONS)
    lr, steps = optimal_lr(nqm, B, TARGET)
    assert steps_to_target(nqm, B, 2 * lr, TARGET, k_max=100_000) is None  # 2x never reaches
    return lr


def test_trials_that_reach_are_never_stopped_at_a_plateau(tmp_path: Path, best_lr: float):
    s = _scheduler(tmp_path, 0.01)
    ends = [_train(s, best_lr * f, seed) for f in (0.7, 1.0) for seed in range(8)]
    assert all(e == "reached" for e, _ in ends), ends
    assert not s.searcher.censored


def test_a_trial_stalled_above_the_target_is_stopped_and_censored(tmp_path: Path, best_lr: float):
    s = _scheduler(tmp_path, 0.01)
    ends = [_train(s, 2 * best_lr, seed) for seed in range(4)]
    assert all(e == "stopped" and step <= 1000 for e, step in ends), ends
    # censored where it stopped: it needed more steps than it ran
    assert sorted(s.searcher.censored.values()) == sorted(float(step) for _, step in ends)
    # the rule off: the same trial runs on to the step budget
    assert _train(_scheduler(tmp_path, 0.0), 2 * best_lr, 0) == ("not_reached", 6000)


# ---- where the rule does not judge --------------------------------------------------------------
def _flat(s: PerBatchSizeScheduler, steps, lr_at) -> list[str]:
    """A trial whose loss sits at 0.08 (above the 0.05 target) at every report."""
    trial = SimpleNamespace(trial_id="flat", config={"study": f"bs{B}-seed0", "batch_size": B,
                                                     "seed": 0})  # fmt: skip
    return [
        s.on_trial_result(
            None, trial, {"step": k, "status": "running", "eval_loss": 0.08, "lr": lr_at(k)}
        )  # fmt: skip
        for k in steps
    ]


def test_the_window_must_have_run_at_one_lr(tmp_path: Path):
    # a warm-up to step 400 (the reported LR rises every report), then a constant LR: flat
    # during the warm-up is not a plateau; flat from 400 to 800 at the peak LR is
    s = _scheduler(tmp_path, 0.01)
    actions = _flat(s, range(EVAL_EVERY, 804, EVAL_EVERY), lambda k: 0.1 * min(k, 400) / 400)
    stop = [k for k, a in zip(range(EVAL_EVERY, 804, EVAL_EVERY), actions, strict=True)
            if a == TrialScheduler.STOP]  # fmt: skip
    assert stop and stop[0] == 800, stop
    # the same constant LR from the start: judged from twice the grace steps (40) on
    s = _scheduler(tmp_path, 0.01)
    assert _flat(s, range(EVAL_EVERY, 44, EVAL_EVERY), lambda k: 0.1)[-1] == TrialScheduler.STOP


@pytest.mark.parametrize("strategy", [{"decay": "cosine"}, {"decay": "step", "decay_epochs": [1]}])
def test_no_plateau_stop_under_an_lr_that_decays_later(tmp_path: Path, strategy: dict):
    # a trial at its peak LR levels off above the target; the decay to come may take it below
    s = _scheduler(tmp_path, 0.01, workload="digits_mlp", options={},
                   strategy={"name": "tuned", **strategy})  # fmt: skip
    assert s.plateau == 0.0
    assert set(_flat(s, range(EVAL_EVERY, 2000, EVAL_EVERY), lambda k: 0.1)) == {
        TrialScheduler.CONTINUE
    }
