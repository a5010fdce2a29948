"""Time and cost to target (analysis.cost) on frames with hand-set step times, and the
recommendation rule (analysis.recommend) on hand-built time and cost curves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_analysis_frames import make_sweep_frame, true_steps

from analysis.compare import SweepNumbers, parent_run_metrics, sweep_numbers
from analysis.cost import CostModel, pareto_front, sweep_device_hours, time_and_cost
from analysis.frame import AnalysisError
from analysis.recommend import recommend
from analysis.steps import best_per_batch_size, steps_to_target
from trainables.api import Target

TARGET = Target("train_loss", 1.0, "min")


def step_time(b):
    """Seconds per optimizer step: 10 ms of overhead plus 0.1 ms per example."""
    return 0.01 + 0.0001 * np.asarray(b, dtype=float)


def timed_frame(**over) -> pd.DataFrame:
    df = make_sweep_frame(batch_sizes=[8, 32, 128, 512], **over)
    df["train_time"] = df["step"] * step_time(df["batch_size"])  # s in optimizer steps
    df["wall_time"] = df["train_time"] * 1.5  # eval adds half on top
    df["gpus"] = 0.25
    df.attrs["device_names"] = ["NVIDIA H100"]
    return df


def best_of(df):
    return best_per_batch_size(steps_to_target(df, TARGET))


def test_time_device_hours_examples_and_cost_from_hand_set_step_times():
    df = timed_frame()
    got = time_and_cost(best_of(df), df, CostModel(price_per_device_hour=3.0))
    t = got.table.set_index("batch_size")
    b = np.array([8, 32, 128, 512])
    steps = true_steps(b)  # the best LR trial reaches the target in exactly these steps
    assert t["steps"].to_numpy() == pytest.approx(steps)
    assert t["step_time_s"].to_numpy() == pytest.approx(step_time(b))
    hours = steps * step_time(b) / 3600
    assert t["time_to_target_h"].to_numpy() == pytest.approx(hours)
    assert t["device_hours"].to_numpy() == pytest.approx(hours * 0.25)
    assert t["examples_to_target"].to_numpy() == pytest.approx(steps * b)
    assert t["cost"].to_numpy() == pytest.approx(hours * 0.25 * 3.0)
    assert got.device_kind == "GPU"
    assert any("measured on NVIDIA H100" in n for n in got.notes)
    # The whole sweep: every trial's last wall_time x its 0.25 GPU.
    last = df.sort_values("step").groupby("trial").tail(1)
    assert sweep_device_hours(df) == pytest.approx((last["wall_time"] * 0.25).sum() / 3600)


def test_throughput_table_recosts_the_same_steps_and_says_where_they_were_measured():
    df = timed_frame()
    table = pd.DataFrame({"batch_size": [8, 32, 128, 512], "steps_per_second": [100, 80, 50, 20],
                          "devices": [1, 1, 1, 2]})  # fmt: skip
    got = time_and_cost(best_of(df), df, CostModel(None, table, "AMD MI300X"))
    t = got.table.set_index("batch_size")
    steps = true_steps([8, 32, 128, 512])
    assert t["time_to_target_h"].to_numpy() == pytest.approx(
        steps / np.array([100, 80, 50, 20]) / 3600
    )
    assert t["device_hours"].to_numpy() == pytest.approx(
        t["time_to_target_h"].to_numpy() * [1, 1, 1, 2]
    )
    assert t["measured_step_time_s"].to_numpy() == pytest.approx(step_time([8, 32, 128, 512]))
    assert any("measured on NVIDIA H100, not AMD MI300X" in n for n in got.notes)
    with pytest.raises(AnalysisError, match="no row for batch size 512"):
        time_and_cost(best_of(df), df, CostModel(None, table[table["batch_size"] < 512]))
    with pytest.raises(AnalysisError, match="steps_per_second"):
        CostModel(None, table.rename(columns={"steps_per_second": "sps"}))
    with pytest.raises(AnalysisError, match="price-per-device-hour"):
        CostModel(price_per_device_hour=-1.0)


def test_wall_time_fallback_and_unknown_devices_are_stated():
    df = timed_frame().drop(columns=["train_time", "gpus"])
    got = time_and_cost(best_of(df), df)
    assert got.table["step_time_s"].to_numpy() == pytest.approx(1.5 * step_time([8, 32, 128, 512]))
    assert any("eval included" in n for n in got.notes)
    assert any("1 device per trial assumed" in n for n in got.notes)
    untimed = time_and_cost(best_of(df), df.drop(columns=["wall_time"]))
    assert untimed.table["time_to_target_h"].isna().all()
    assert any("time and cost not computed" in n for n in untimed.notes)


def curve(b, time_h, devices) -> pd.DataFrame:
    time_h, devices = np.asarray(time_h, float), np.asarray(devices, float)
    return pd.DataFrame({"batch_size": b, "time_to_target_h": time_h, "devices": devices,
                         "device_hours": time_h * devices})  # fmt: skip


B = [64, 128, 256, 512, 1024, 2048, 4096]


def test_recommendation_on_a_curve_with_a_linear_regime_and_a_plateau():
    # One GPU up to B = 256 (not yet saturated: time halves as B doubles), then data parallel
    # over B / 256 GPUs; time stops falling at B = 2048. GPU-hours: 8, 4, 2, 3.2, 4.6, 8, 16.
    t = curve(B, [8.0, 4.0, 2.0, 1.6, 1.15, 1.0, 1.0], [1, 1, 1, 2, 4, 8, 16])
    r = recommend(t, max_slowdown=1.0, max_extra_cost=1.0)
    # cheapest: 2.0 GPU-h at B = 256; within 2x of it (<= 4): 128, 256, 512; fastest: 512.
    assert (r.cheapest.batch_size, r.recommended.batch_size) == (256, 512)
    # fastest: 1.0 h at B = 2048 (4096 ties but costs twice); within 2x of it the cheapest is 256
    assert r.fastest.batch_size == 2048 and r.faster.batch_size == 256
    assert r.plateau_from == 2048 and not r.no_linear_regime
    text = r.text()
    assert "It is within 2x the fastest time (B = 2048, 1 h)." in text
    assert text.startswith("B = 512: target in 1.6 h on 2 GPUs at 3.2 GPU-h")
    assert "Beyond B = 2048 nothing gets faster." in text
    # Thresholds are flags: a tighter cost bound recommends 256, and speed then points to 1024.
    r = recommend(t, max_slowdown=0.2, max_extra_cost=0.2)
    assert (r.recommended.batch_size, r.faster.batch_size) == (256, 1024)
    assert "B = 1024 is 1.7x faster at 2.3x the cost" in r.text()


def test_recommendation_without_a_plateau_says_larger_may_be_faster():
    t = curve(B, [8, 4, 2, 1, 0.5, 0.25, 0.125], [1, 1, 1, 1, 1, 1, 1])  # perfect scaling
    r = recommend(t)
    assert r.plateau_from is None and r.recommended.batch_size == 4096
    assert "no plateau measured" in r.text() and "(4096)" in r.text()


def test_recommendation_without_a_linear_regime_says_smaller_may_be_cheaper():
    t = curve(B, [1.0, 0.9, 0.85, 0.84, 0.84, 0.84, 0.84], [1, 2, 4, 8, 16, 32, 64])
    r = recommend(t)
    assert r.no_linear_regime and r.cheapest.batch_size == 64
    assert r.recommended.batch_size == 128  # 1.8 GPU-h <= 2 x 1.0; 256 costs 3.4
    assert "no linear regime measured" in r.text() and "(64)" in r.text()
    assert r.plateau_from == 256  # 128 (0.9 h) is beaten by 0.84 h, more than 5%


def test_recommendation_bad_input():
    t = curve(B, [8, 4, 2, 1, 0.5, 0.25, 0.125], [1] * 7)
    with pytest.raises(AnalysisError, match="--max-slowdown"):
        recommend(t, max_slowdown=-0.1)
    with pytest.raises(AnalysisError, match="nothing to recommend"):
        recommend(t.assign(time_to_target_h=np.nan))


def test_pareto_front_keeps_what_nothing_beats_on_both():
    t = pd.DataFrame({"time_to_target_h": [4, 2, 1, 1.5, 3], "device_hours": [1, 1.5, 3, 3.5, 2]})
    assert pareto_front(t).tolist() == [True, True, True, False, False]


def test_parent_run_metrics_are_the_numbers_of_the_sweep():
    df = timed_frame()
    n: SweepNumbers = sweep_numbers(df, TARGET, label="x", n_boot=100)
    m = parent_run_metrics(n)
    d = n.fit.to_dict()
    assert m["b_crit"] == d["b_crit"] and m["cbs"] == d["cbs"] and m["s_min"] == d["s_min"]
    assert [m["b_crit_ci_low"], m["b_crit_ci_high"]] == d["b_crit_ci"]
    assert m["trials"] == df["trial"].nunique()
    assert m["recommended_batch_size"] == n.recommendation.recommended.batch_size
    assert "b_simple" not in m and all(math.isfinite(v) for v in m.values())
    assert n.description().startswith(f"**{n.recommendation.text()}**")
