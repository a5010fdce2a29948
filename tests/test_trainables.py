"""Trainables without Ray: the report contract, determinism, divergence, checkpoint/resume."""

from __future__ import annotations

import math

import pytest

from trainables.api import REQUIRED_METRICS, Schedule, Status, Target, TrialConfig
from trainables.registry import get_workload, run_trial, workloads
from trainables.schedules import lr_at, peak_lr


def collect(cfg, state=None):
    reports, ckpts = [], []
    run_trial(cfg, lambda m, c=None: (reports.append(m), ckpts.append(c)), state)
    return reports, ckpts


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn", "synthetic"])
def test_reports_required_metrics_and_is_deterministic(name):
    w = get_workload(name)
    cfg = TrialConfig(
        name, 32, 0.1, seed=1, max_steps=40, eval_every=10, target=Target("eval_loss", 1e-9, "min")
    )
    r1, _ = collect(cfg)
    r2, _ = collect(cfg)
    assert [r["step"] for r in r1] == [10, 20, 30, 40]
    for r in r1:
        assert set(REQUIRED_METRICS) <= set(r)
        assert set(w.metrics) <= set(r)
        assert r["examples"] == r["step"] * 32
    assert r1[-1]["status"] == Status.NOT_REACHED
    timings = {"wall_time", "train_time"}  # seconds: the only values that differ run to run
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timings} for r in rs]  # noqa: E731
    assert strip(r1) == strip(r2)


def test_target_reached_stops_and_records_step():
    raw = Target("eval_loss", 0.2, "min", smoothing=0.0)
    cfg = TrialConfig("synthetic", 64, 0.2, max_steps=500, eval_every=5, target=raw)
    r, _ = collect(cfg)
    assert r[-1]["status"] == Status.REACHED
    assert r[-1]["steps_to_target"] == r[-1]["step"] < 500
    assert all(x["eval_loss"] > 0.2 for x in r[:-1]) and r[-1]["eval_loss"] <= 0.2


def test_the_default_stop_rule_is_the_bias_corrected_ema_that_analyze_applies():
    """A trial stops where `critbatch analyze --ema 0.8` on its own reports crosses."""
    import pandas as pd

    from analysis.steps import smooth_ema

    target = Target("eval_loss", 0.2, "min")  # smoothing 0.8, the default
    cfg = TrialConfig("synthetic", 64, 0.2, max_steps=500, eval_every=5, target=target)
    r, _ = collect(cfg)
    df = pd.DataFrame({"trial": "t", "step": [x["step"] for x in r],
                       "eval_loss": [x["eval_loss"] for x in r]})  # fmt: skip
    ema = smooth_ema(df, "eval_loss", target.smoothing).to_numpy()
    assert r[-1]["status"] == Status.REACHED and r[-1]["steps_to_target"] == r[-1]["step"]
    assert ema[-1] <= 0.2 and (ema[:-1] > 0.2).all()
    assert any(x["eval_loss"] <= 0.2 for x in r[:-1])  # the raw metric crossed earlier


def test_divergence_is_a_result():
    cfg = TrialConfig("synthetic", 64, 50.0, max_steps=500, eval_every=5)
    r, _ = collect(cfg)
    assert r[-1]["status"] == Status.DIVERGED and r[-1]["step"] == 5
    assert not math.isfinite(r[-1]["train_loss"]) or r[-1]["train_loss"] > 10


def test_checkpoint_resume_continues_identically():
    cfg = TrialConfig("digits_mlp", 16, 0.1, max_steps=60, eval_every=10, checkpoint_every=2,
                      target=Target("eval_loss", 1e-9, "min"))  # fmt: skip
    full, ckpts = collect(cfg)
    mid = ckpts[1]  # taken at step 20
    assert mid is not None and mid["step"] == 20
    rest, _ = collect(cfg, state=mid)
    assert [r["step"] for r in rest] == [30, 40, 50, 60]
    for a, b in zip(full[2:], rest, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-6)


def test_schedules():
    lsr = Schedule("lsr", base_batch_size=128, base_lr=0.1, warmup_epochs=1)
    assert peak_lr(lsr, 1024) == pytest.approx(0.8)
    assert peak_lr(Schedule("srsr", 128, 0.1), 512) == pytest.approx(0.2)
    assert peak_lr(Schedule("blr", 128, 0.1), 4096) == 0.1
    assert lr_at(0, 0.8, lsr, steps_per_epoch=10) == pytest.approx(0.08)
    assert lr_at(9, 0.8, lsr, steps_per_epoch=10) == pytest.approx(0.8)
    assert lr_at(50, 0.8, lsr, steps_per_epoch=10) == pytest.approx(0.8)
    decay = Schedule("tuned", decay_epochs=(2.0, 4.0), decay_factor=10)
    assert lr_at(25, 1.0, decay, 10) == pytest.approx(0.1) and lr_at(
        45, 1.0, decay, 10
    ) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="base_lr"):
        peak_lr(Schedule("lsr"), 64)


def test_registry_lists_cpu_workloads():
    names = set(workloads())
    assert {"digits_mlp", "digits_cnn", "synthetic"} <= names
    with pytest.raises(KeyError, match="known workloads"):
        get_workload("nope")
