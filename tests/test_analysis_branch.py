"""`analysis.branch`: the local CBS from branch results, its seed interval, the schedule it implies."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.branch import batch_size_schedule, local_cbs, round_to_batch_sizes, steps_saved
from analysis.frame import AnalysisError
from trainables.branching import BranchPlan
from trainables.nqm_truth import NQM, branched_losses

FACTORS = (1, 2, 4, 8)
B0 = 8


def frame(losses: dict[tuple[int, int], list[float]]) -> pd.DataFrame:
    """Rows from {(branch_at, seed): [loss per factor in FACTORS]}."""
    rows = [
        {"branch_at": t, "factor": k, "batch_size": k * B0, "seed": s, "loss": x}
        for (t, s), xs in losses.items()
        for k, x in zip(FACTORS, xs, strict=True)
    ]
    return pd.DataFrame(rows)


def test_one_seed_largest_passing_batch_size():
    df = frame({(0, 0): [1.0, 1.005, 1.02, 1.5], (100, 0): [1.0, 1.0, 1.001, 1.0099]})
    out = local_cbs(df, tolerance=0.01)
    assert out["branch_at"].tolist() == [0, 100]
    assert out["local_cbs"].tolist() == [16, 64]
    assert out["ci_low"].isna().all() and out["ci_high"].isna().all()
    assert out["passes"][0] == {8: True, 16: True, 32: False, 64: False}


def test_largest_pass_even_above_a_failing_factor():
    out = local_cbs(frame({(0, 0): [1.0, 1.02, 1.005, 1.5]}), tolerance=0.01)
    assert out["local_cbs"][0] == 32 and out["passes"][0][16] is False  # shown, not hidden


def test_diverged_branches_fail():
    out = local_cbs(frame({(0, 0): [1.0, 1.0, math.inf, math.nan], (5, 0): [math.nan] * 4}))
    assert out["local_cbs"][0] == 16 and math.isnan(out["local_cbs"][1])


def test_paired_seed_bootstrap_known_interval():
    """Seed 0 passes k = 8, seed 1 does not (1.05); means over seeds: 1.025 fails. A replicate
    passes k = 8 only when it draws seed 0 twice (probability 1/4): 95% interval [32, 64]."""
    df = frame({(0, 0): [1.0, 1.0, 1.0, 1.0], (0, 1): [1.0, 1.0, 1.0, 1.05]})
    out = local_cbs(df, tolerance=0.01, level=0.95, n_boot=2000)
    assert out["local_cbs"][0] == 32 and out["seeds"][0] == 2
    assert (out["ci_low"][0], out["ci_high"][0]) == (32, 64)
    same = frame({(0, s): [1.0, 1.0, 1.001, 1.5] for s in range(3)})
    out = local_cbs(same, tolerance=0.01)
    assert (out["local_cbs"][0], out["ci_low"][0], out["ci_high"][0]) == (32, 32, 32)


def test_one_definition_with_the_exact_nqm_answer():
    plan = BranchPlan(8, 0.05, (0, 1000, 100_000), (1, 2, 4, 8, 16, 32), 3200, 0.01).check()
    exact = branched_losses(NQM(dim=1000), plan)
    rows = [
        {"branch_at": t, "factor": k, "batch_size": b, "seed": 0, "loss": x}
        for t, xs in zip(exact["branch_at"], exact["losses"], strict=True)
        for k, b, x in zip(exact["factors"], exact["batch_sizes"], xs, strict=True)
    ]
    out = local_cbs(pd.DataFrame(rows), tolerance=0.01)
    assert out["local_cbs"].tolist() == exact["local_cbs"]


@pytest.mark.parametrize(
    "mutate,words",
    [
        (lambda d: d.drop(columns="loss"), "lacks the column(s) ['loss']"),
        (lambda d: d[d["factor"] != 1], "no factor-1 branch"),
        (lambda d: d.iloc[:-1], "not every seed has every factor"),
        (lambda d: d.assign(batch_size=d["batch_size"] + 1), "factor x one base batch size"),
        (lambda d: pd.concat([d, d.iloc[:1]]), "repeats a (branch_at, factor, seed)"),
        (lambda d: d.iloc[:0], "no rows"),
    ],
)
def test_bad_frames_say_what_is_wrong(mutate, words):
    df = frame({(0, 0): [1.0] * 4, (0, 1): [1.0] * 4})
    with pytest.raises(AnalysisError) as e:
        local_cbs(mutate(df))
    assert words in str(e.value)


def test_schedule_and_steps_saved():
    cbs = pd.DataFrame({"branch_at": [100, 1000, 5000], "local_cbs": [16.0, 40.0, np.nan]})
    cbs["ci_low"] = [8.0, 16.0, 64.0]
    # 40 rounds down to 32; NaN (no pass) falls back to B0
    assert batch_size_schedule(cbs, B0, FACTORS) == [(0, 8), (800, 16), (8000, 32), (40000, 8)]
    assert batch_size_schedule(cbs, B0, FACTORS, "ci_low") == [(0, 8), (8000, 16), (40000, 64)]
    s = steps_saved([(0, 8), (800, 16), (8000, 64)], 80_000, B0)
    assert s == {
        "steps_schedule": 100 + 450 + 1125,
        "steps_constant": 10_000,
        "steps_saved": 10_000 - 1675,
        "saved_fraction": pytest.approx(0.8325),
    }
    assert steps_saved([(0, 8), (800, 16)], 500, B0)["steps_schedule"] == 63  # ends before 800
    assert round_to_batch_sizes(7, [8, 16]) == 8 and round_to_batch_sizes(16, [8, 16]) == 16
    with pytest.raises(AnalysisError, match="column 'ci_high'"):
        batch_size_schedule(cbs, B0, FACTORS, "ci_high")
