"""Speedup, scaling efficiency and regimes on a known curve; best-LR fits on known laws."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.frame import AnalysisError
from analysis.lr_fit import (
    at_search_edge,
    fit_best_lr,
    fit_power_law,
    fit_saturating,
    reference_lines,
)
from analysis.speedup import local_scaling_efficiency, regime, regime_bounds, speedup_table

B = 2.0 ** np.arange(3, 13)  # 8 .. 4096
S = 1000.0 * (1.0 + 256.0 / B)  # B_crit = 256


def test_speedup_ideal_and_efficiency():
    t = speedup_table(pd.DataFrame(dict(batch_size=B, steps=S)), b_crit=256.0)
    # s(64; 8) = S(8)/S(64) = 33000 / 5000 = 6.6 against an ideal of 8
    row = t.set_index("batch_size").loc[64.0]
    assert row["speedup"] == pytest.approx(6.6) and row["ideal"] == 8
    assert row["efficiency"] == pytest.approx(6.6 / 8)
    assert t["base_batch_size"].eq(8).all() and t["strategy"].eq("tuned").all()
    # the measured slope on log-log axes matches B_crit / (B + B_crit) at interior points
    inner = t.iloc[2:-2]
    np.testing.assert_allclose(inner["measured_local_eff"], inner["fit_local_eff"], atol=0.03)


def test_regimes_on_a_known_curve():
    eff = local_scaling_efficiency(B, 256.0)
    assert eff[B == 256][0] == pytest.approx(0.5)
    labels = dict(zip(B.astype(int), regime(eff), strict=True))
    # efficiency 256/(B+256): B=64 -> 0.8 (linear), 128 -> 0.67, 512 -> 0.33, 1024 -> 0.2
    assert [labels[b] for b in (8, 32, 64)] == ["linear"] * 3
    assert [labels[b] for b in (128, 256, 512)] == ["diminishing returns"] * 3
    assert [labels[b] for b in (1024, 4096)] == ["stagnation"] * 2
    assert regime_bounds(256.0) == pytest.approx((64.0, 1024.0))
    with pytest.raises(AnalysisError):
        regime(eff, linear=0.2, stagnation=0.8)


def test_speedup_per_strategy_and_unreached_rows():
    best = pd.DataFrame(
        dict(strategy=["blr"] * 3 + ["lsr"] * 3, batch_size=[8, 16, 32] * 2,
             steps=[100.0, 60.0, np.nan, 100.0, 50.0, 25.0])
    )  # fmt: skip
    t = speedup_table(best).set_index(["strategy", "batch_size"])
    assert t.loc[("blr", 16), "speedup"] == pytest.approx(100 / 60)
    assert np.isnan(t.loc[("blr", 32), "speedup"])
    assert t.loc[("lsr", 32), "efficiency"] == pytest.approx(1.0)
    with pytest.raises(AnalysisError, match="did not reach"):
        speedup_table(best, base_batch_size=32)


def test_power_law_recovers_alpha():
    lr = 0.003 * B**0.7
    fit = fit_power_law(B, lr)
    assert fit.alpha == pytest.approx(0.7, rel=1e-9) and fit.coef == pytest.approx(0.003)
    assert fit.r2 == pytest.approx(1.0)
    noisy = lr * np.exp(0.05 * np.random.default_rng(0).normal(size=B.size))
    assert fit_power_law(B, noisy).alpha == pytest.approx(0.7, abs=0.05)


def test_saturating_fit_recovers_eta_max_and_b_noise():
    lr = 2.0 / (1.0 + 300.0 / B)
    fit = fit_saturating(B, lr)
    assert fit.eta_max == pytest.approx(2.0, rel=1e-3)
    assert fit.b_noise == pytest.approx(300.0, rel=1e-3) and fit.identified
    np.testing.assert_allclose(fit.lr(B), lr, rtol=1e-6)


def test_reference_lines_and_edge_flags():
    refs = reference_lines([8, 32, 128], 8, 0.1)
    np.testing.assert_allclose(refs["lsr"], [0.1, 0.4, 1.6])
    np.testing.assert_allclose(refs["srsr"], [0.1, 0.2, 0.4])
    # range 1e-3 .. 1 (3 decades); 5% of it is 0.15 decades: 1.4e-3 and 0.71 are the cut-offs
    flags = at_search_edge([1.1e-3, 1.5e-3, 0.03, 0.69, 0.72], (1e-3, 1.0))
    assert flags.tolist() == [True, False, False, False, True]
    with pytest.raises(AnalysisError):
        at_search_edge([0.1], (1.0, 0.1))


def test_fit_best_lr_table():
    best = pd.DataFrame(dict(batch_size=B, lr=np.minimum(0.01 * B**0.5, 0.6)))
    res = fit_best_lr(best, lr_range=(1e-3, 0.6))
    t = res.table
    assert t["at_edge"].tolist() == (t["lr"] >= 0.6 * (0.6 / 1e-3) ** -0.05).tolist()
    assert t["at_edge"].iloc[-1] and not t["at_edge"].iloc[0]
    assert t["lsr"].iloc[1] == pytest.approx(2 * t["lr"].iloc[0])
    # the clipped last point (0.64 -> 0.6) pulls the fitted exponent just below 0.5
    assert res.saturating is not None and 0.45 < res.power_law.alpha < 0.5
    with pytest.raises(AnalysisError, match="3 or more batch sizes"):
        fit_best_lr(best.iloc[:2])
