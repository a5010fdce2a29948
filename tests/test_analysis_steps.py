"""Steps to target: crossing interpolation, EMA, the paper's threshold rule, best per batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_analysis_frames import BATCH_SIZES, TARGET, make_sweep_frame, true_steps

from analysis.frame import AnalysisError
from analysis.steps import (
    Target,
    best_per_batch_size,
    best_per_seed,
    crossing_step,
    paper_threshold,
    smooth_ema,
    steps_to_target,
)


def test_crossing_step_interpolates_between_eval_points():
    steps = [0, 10, 20, 30]
    assert crossing_step(steps, [5.0, 4.0, 3.0, 2.0], 2.5) == pytest.approx(25.0)
    assert crossing_step(steps, [5.0, 4.0, 3.0, 2.0], 3.0) == pytest.approx(20.0)
    # accuracy-like metric, direction max: 0.2 -> 0.6 between steps 10 and 20, goal 0.5
    assert crossing_step(steps, [0.1, 0.2, 0.6, 0.7], 0.5, "max") == pytest.approx(17.5)
    assert np.isnan(crossing_step(steps, [5.0, 4.0, 3.0, 2.0], 1.0))
    assert crossing_step(steps, [1.0, 0.5, 0.4, 0.3], 2.0) == 0.0  # met at the first point
    # a NaN (metric not reported at that step) is skipped: line from step 0 to step 20
    assert crossing_step(steps, [5.0, np.nan, 3.0, 2.0], 4.0) == pytest.approx(10.0)


def test_ema_is_bias_corrected_per_trial():
    df = pd.DataFrame(
        dict(trial=["a", "a", "a", "b"], step=[0, 1, 2, 0], x=[1.0, 2.0, np.nan, 10.0])
    )
    out = smooth_ema(df, "x", 0.5)
    # m1 = 0.5*1 / (1-0.5) = 1; m2 = (0.25*1 + 0.5*2) / (1-0.25) = 5/3
    assert out.tolist()[:2] == pytest.approx([1.0, 5 / 3])
    assert np.isnan(out.iloc[2]) and out.iloc[3] == pytest.approx(10.0)
    assert smooth_ema(df, "x", None).equals(df["x"])
    with pytest.raises(AnalysisError, match="beta"):
        smooth_ema(df, "x", 1.5)


def test_steps_to_target_recovers_constructed_crossings():
    df = make_sweep_frame()
    per_trial = steps_to_target(df, Target("train_loss", TARGET))
    assert len(per_trial) == len(BATCH_SIZES) * 3 and per_trial["reached"].all()
    best = best_per_batch_size(per_trial)
    # the best trial of each batch size runs at the best LR and needs exactly true_steps(B)
    np.testing.assert_allclose(best["steps"], true_steps(best["batch_size"]), rtol=1e-9)
    np.testing.assert_allclose(best["lr"], 0.1 * np.sqrt(best["batch_size"] / 8), rtol=1e-12)
    assert (best["n_trials"] == 3).all() and (
        best["examples"] == best["steps"] * best["batch_size"]
    ).all()


def test_unreached_batch_size_keeps_nan_steps_and_best_metric_lr():
    df = make_sweep_frame(batch_sizes=[8, 16])
    per_trial = steps_to_target(df, Target("train_loss", 0.4))  # below the 0.5 floor
    assert not per_trial["reached"].any()
    best = best_per_batch_size(per_trial)
    assert best["steps"].isna().all() and (best["n_reached"] == 0).all()
    assert best["lr_basis"].str.startswith("best metric").all()


def test_best_per_seed_has_one_row_per_study():
    df = make_sweep_frame(batch_sizes=[8, 16, 32], seeds=(0, 1), noise=0.1)
    per_seed = best_per_seed(steps_to_target(df, Target("train_loss", TARGET)))
    assert len(per_seed) == 6 and set(per_seed["seed"]) == {0, 1}


def test_paper_threshold_is_lower_quartile_of_the_largest_batch_best_curve():
    rows = []
    # largest batch size 64: trial "good" reaches 1.0, trial "bad" only 5.0
    for trial, curve in {
        "good": [8.0, 6.0, 4.0, 2.0, 1.0],
        "bad": [9.0, 8.0, 7.0, 6.0, 5.0],
    }.items():
        for i, v in enumerate(curve):
            rows.append(dict(trial=trial, batch_size=64, lr=0.1, strategy="tuned", seed=0,
                             step=10 * i, examples=640 * i, status="not_reached", train_loss=v))  # fmt: skip
    for i, v in enumerate([8.0, 5.0, 3.0, 1.5, 1.0]):  # a small batch size, same steps
        rows.append(dict(trial="small", batch_size=8, lr=0.1, strategy="tuned", seed=0,
                         step=10 * i, examples=80 * i, status="reached", train_loss=v))  # fmt: skip
    df = pd.DataFrame(rows)
    target = paper_threshold(df, "train_loss")
    # sorted good curve [1, 2, 4, 6, 8]: the 25% quantile sits at position 0.25 * 4 = 1 -> 2.0
    assert target.value == pytest.approx(2.0) and target.direction == "min"
    assert "B=64" in target.rule
    per_trial = steps_to_target(df, target).set_index("trial")
    assert per_trial.loc["good", "steps"] == pytest.approx(30.0)
    assert per_trial.loc["small", "steps"] == pytest.approx(20 + 10 * (3.0 - 2.0) / (3.0 - 1.5))
    assert not per_trial.loc["bad", "reached"]


def test_paper_threshold_for_a_metric_to_maximise_uses_the_upper_quartile():
    df = make_sweep_frame(batch_sizes=[8, 64], lr_multipliers=(1.0, 2.0))
    target = paper_threshold(df, "eval_accuracy", direction="max")
    best = df[(df["batch_size"] == 64) & (df["lr"] == df.loc[df["batch_size"] == 64, "lr"].min())]
    assert target.direction == "max" and target.rule.startswith("paper rule: 75% quantile")
    assert target.value == pytest.approx(np.quantile(best["eval_accuracy"], 0.75))
    assert steps_to_target(df, target)["reached"].any()
