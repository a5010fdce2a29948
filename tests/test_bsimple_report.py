"""B_simple beside B_crit in the report, on a tidy frame whose B_simple values are known.

The synthetic sweep of `test_analysis_frames` (train_loss linear in steps, target 1.0 crossed
at S(B) = 400 (1 + 128/B)) gets a `noise_scale_bsimple` column linear in the loss, so its value
at the interpolated crossing is exact: 300 - 100 * 1.0 + offset(B) = 200 + offset(B).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from test_analysis_frames import make_sweep_frame, true_steps

from analysis.noise_scale import (
    BSIMPLE,
    bsimple_at_target,
    bsimple_summary,
    has_noise_scale,
    value_at_step,
)
from analysis.report import write_report
from analysis.steps import Target, best_per_batch_size, steps_to_target

SIZES = [8, 32, 128, 512, 2048]
OFFSET = {8: 0.0, 32: 10.0, 128: 20.0, 512: 30.0, 2048: 40.0}
AT_TARGET = {b: 200.0 + o for b, o in OFFSET.items()}  # by hand: 300 - 100 * loss + offset


def with_bsimple(df: pd.DataFrame) -> pd.DataFrame:
    v = 300.0 - 100.0 * df["train_loss"] + df["batch_size"].map(OFFSET)
    v[df["step"] == 0] = np.nan  # the estimator has no data before the first step
    # a non-finite estimate (|G|^2 <= 0) far from any crossing: skipped, not interpolated
    v[(df["batch_size"] == 8) & (df["step"] == 10)] = math.inf
    return df.assign(**{BSIMPLE: v})


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return with_bsimple(make_sweep_frame(SIZES, lr_multipliers=(0.5, 1.0, 2.0)))


def test_value_at_step_interpolates_between_finite_points():
    steps, vals = [0, 10, 20, 30], [np.nan, 1.0, math.inf, 4.0]
    assert value_at_step(steps, vals, 25.0) == pytest.approx(3.25)  # between 10 and 30
    assert value_at_step(steps, vals, 10.0) == 1.0
    assert math.isnan(value_at_step(steps, vals, 5.0))  # before the first finite point
    assert math.isnan(value_at_step(steps, vals, math.nan))  # target not reached


def test_bsimple_at_target_matches_the_hand_values(frame):
    best = best_per_batch_size(steps_to_target(frame, Target("train_loss", 1.0)))
    # the crossing of B = 2048 (425 steps) lies between eval points: interpolated
    assert best.set_index("batch_size")["steps"].to_dict() == pytest.approx(
        dict(zip(SIZES, true_steps(SIZES), strict=True))
    )
    table = bsimple_at_target(frame, best)
    got = table.set_index("batch_size")["b_simple"].to_dict()
    assert got == pytest.approx(AT_TARGET)
    s = bsimple_summary(table, b_crit=128.0)
    assert s["median"] == pytest.approx(220.0)
    assert (s["min"], s["max"], s["n_batch_sizes"]) == (200.0, 240.0, 5)
    assert s["median_over_b_crit"] == pytest.approx(220.0 / 128.0)
    assert "multiple of the identity" in s["definition"]
    # a batch size that never reached the target has no B_simple at it
    missed = bsimple_at_target(
        frame, best.assign(steps=np.where(best["batch_size"] == 8, np.nan, best["steps"]))
    )
    assert math.isnan(missed.set_index("batch_size").loc[8, "b_simple"])
    assert bsimple_summary(missed)["median"] == pytest.approx(225.0)  # of 210, 220, 230, 240


@pytest.mark.slow
def test_report_shows_bsimple_beside_b_crit(frame, tmp_path):
    r = write_report(frame, tmp_path, Target("train_loss", 1.0), n_boot=50)
    assert r.b_simple["median"] == pytest.approx(220.0)
    head = r.headline()
    assert (
        "B_crit = " in head
        and "B_simple at target = 220 (median of 5 batch sizes, range 200-240" in head
    )
    js = json.loads(r.summary_json.read_text())
    assert js["b_simple"]["median"] == pytest.approx(220.0)
    assert js["b_simple"]["b_crit"] == pytest.approx(js["b_crit"])
    assert set(js["b_simple_per_strategy"]) == {"tuned"}
    assert "multiple of the identity" in js["assumptions"]["gradient_noise_scale"]
    per_b = {rec["batch_size"]: rec["b_simple"] for rec in js["per_batch_size"]}
    assert per_b == pytest.approx(AT_TARGET)
    csv = pd.read_csv(r.summary_csv)
    assert csv.set_index("batch_size")["b_simple"].to_dict() == pytest.approx(AT_TARGET)
    page = r.html.read_text()
    assert "<h3>Gradient noise scale</h3>" in page and "B_simple at target (median)" in page
    assert "not an estimate of it" in page  # the caution is in the headline too
    names = {p.name for p in r.figures}
    assert {"noise_scale.png", "noise_scale.svg"} <= names
    assert (tmp_path / "figures" / "noise_scale.png").read_bytes()[:4] == b"\x89PNG"


def test_report_without_the_column_says_not_logged(tmp_path):
    df = make_sweep_frame(SIZES, lr_multipliers=(1.0,))
    assert not has_noise_scale(df)
    assert not has_noise_scale(df.assign(**{BSIMPLE: np.nan}))  # logged nothing finite
    r = write_report(df, tmp_path, Target("train_loss", 1.0), n_boot=0, figures=False)
    assert r.b_simple is None and "B_simple" not in r.headline()
    js = json.loads(r.summary_json.read_text())
    assert js["b_simple"] is None and js["b_simple_per_strategy"] == {}
    assert "gradient_noise_scale" not in js["assumptions"]
    assert "b_simple" not in pd.read_csv(r.summary_csv).columns
    assert "not logged (set <code>log_noise_scale: true</code>" in r.html.read_text()
