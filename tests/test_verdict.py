"""The verdict and its advice, on tables built to trigger each check, and the mean-curve
estimator on curves with a known crossing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.estimate import mean_curve_steps, monotone_crossing
from analysis.fits import fit_mccandlish
from analysis.steps import Target
from analysis.verdict import judge


def _table(sizes, b_crit=64.0, s_min=100.0, noise=None):
    b = np.asarray(sizes, float)
    steps = s_min * (1 + b_crit / b) * (1 if noise is None else np.exp(noise))
    return pd.DataFrame({"batch_size": b.astype(int), "steps": steps})


def _judge(t, ci=(50.0, 80.0), se=0.05, eval_every=1.0):
    fit = fit_mccandlish(t["batch_size"], t["steps"])
    return fit, judge(fit.b_crit, ci, fit.s_min, t, fit.steps(t["batch_size"]),
                      np.full(len(t), se), eval_every)  # fmt: skip


def test_a_well_measured_sweep_is_determined():
    _, v = _judge(_table([8, 16, 32, 64, 128, 256, 512]))
    assert v.determined and v.advice == []
    assert "Verdict: B_crit is determined" in v.text()


def test_b_crit_below_the_smallest_batch_size_asks_for_smaller_ones():
    _, v = _judge(_table([256, 512, 1024, 2048], b_crit=40.0), ci=(30, 50))
    assert not v.determined
    assert any("below your smallest batch size: add 64 and 128" in a for a in v.advice)


def test_b_crit_above_the_largest_batch_size_asks_for_larger_ones():
    _, v = _judge(_table([2, 4, 8, 16], b_crit=500.0), ci=(400, 600))
    assert any("above your largest batch size: add 32 and 64" in a for a in v.advice)


def test_a_wide_ci_asks_for_seeds_or_batch_sizes_near_b_crit():
    _, v = _judge(_table([8, 16, 32, 64, 128, 256, 512]), ci=(10.0, 300.0))
    assert not v.determined
    assert any(a.startswith("CI spans 30x: add seeds") for a in v.advice)


def test_residuals_beyond_the_seed_scatter_flag_a_misfit():
    noise = np.array([0, 0.4, -0.4, 0.4, -0.4, 0.4, 0])
    _, v = _judge(_table([8, 16, 32, 64, 128, 256, 512], noise=noise), se=0.02)
    fit_check = next(c for c in v.checks if c.name == "fit")
    assert not fit_check.ok and "seeds' scatter" in fit_check.detail


def test_coarse_evaluation_asks_for_more_frequent_evals():
    _, v = _judge(_table([8, 16, 32, 64, 128, 256, 512]), eval_every=18.0)
    assert any(a.startswith("eval_every 18 is 18% of S_min: evaluate more often") for a in v.advice)


def test_monotone_crossing_interpolates_per_row():
    steps = np.array([10.0, 20.0, 30.0])
    vals = np.array([[1.0, 0.6, 0.2], [1.0, 0.9, 0.8], [0.1, 0.1, 0.1]])
    got = monotone_crossing(steps, vals, 0.5)
    assert got[0] == pytest.approx(22.5) and np.isnan(got[1]) and got[2] == 10.0
    # accuracy (rising): the same curves mirrored about the threshold
    assert monotone_crossing(steps, 1.0 - vals, 0.5, "max")[0] == pytest.approx(22.5)


def test_monotone_crossing_is_not_pulled_early_by_a_noise_dip():
    """A curve that dips below the threshold once by noise, rises back above it, and only
    later stays below: the first crossing is the dip (step ~19), the monotone fit's crossing
    is where the curve goes below for good on balance (45)."""
    steps = np.arange(10.0, 70.0, 10.0)
    vals = np.array([[1.0, 0.45, 0.7, 0.6, 0.4, 0.3]])
    assert monotone_crossing(steps, vals, 0.5)[0] == pytest.approx(45.0)
    # a dip deeper and longer than what stays above afterwards does count
    deep = np.array([[1.0, 0.1, 0.1, 0.55, 0.4, 0.3]])
    assert monotone_crossing(steps, deep, 0.5)[0] == pytest.approx(10 + 10 * 0.5 / 0.9)


def test_monotone_crossing_cuts_a_curve_at_divergence():
    steps = np.array([10.0, 20.0, 30.0, 40.0])
    crossed = np.array([[1.0, 0.4, 1e300, 1e300]])  # reached, then a run in the mean diverged
    never = np.array([[1.0, 0.8, 1e300, 1e300]])
    assert monotone_crossing(steps, crossed, 0.5)[0] == pytest.approx(10 + 10 * 0.5 / 0.6)
    assert np.isnan(monotone_crossing(steps, never, 0.5)[0])


def test_monotone_crossing_equals_the_isotonic_fit_crossing():
    """The switching relation, checked against scikit-learn's isotonic regression on random
    noisy falling curves with the same point weights (even steps: the ends weigh half): the
    crossing lies between the fit's last point above the threshold and its first at or below."""
    from sklearn.isotonic import isotonic_regression

    rng = np.random.default_rng(0)
    steps = np.arange(1.0, 81.0)
    weights = np.r_[0.5, np.ones(78), 0.5]
    for _ in range(200):
        y = np.exp(-steps / 30) + rng.normal(0, 0.08, steps.size)
        fit = isotonic_regression(y, sample_weight=weights, increasing=False)
        below = np.flatnonzero(fit <= 0.4)
        got = monotone_crossing(steps, y[None, :], 0.4)[0]
        if below.size == 0:
            assert np.isnan(got)
            continue
        if below[0] == 0:
            assert got == steps[0]
        else:
            assert steps[below[0] - 1] <= got <= steps[below[0]]


def test_mean_curve_crossing_averages_seeds_before_thresholding():
    # two seeds: one dips below 0.5 early by noise, the other late; their mean crosses between
    rows = []
    for seed, dip in ((1, 0.4), (2, 0.8)):
        for s, v in zip((10, 20, 30, 40), (1.0, dip, 0.45, 0.3), strict=True):
            rows.append({"trial": f"t{seed}", "batch_size": 8, "lr": 0.1, "strategy": "tuned",
                         "seed": seed, "step": s, "examples": 8 * s, "status": "reached",
                         "phase": "confirm", "eval_loss": v})  # fmt: skip
    est = mean_curve_steps(pd.DataFrame(rows), Target("eval_loss", 0.5), n_boot=50)
    # mean curve: 1.0, 0.6, 0.45, 0.3 -> crosses 0.5 at 20 + 10 * (0.1 / 0.15)
    assert est.table["steps"].iloc[0] == pytest.approx(20 + 10 * 0.1 / 0.15)
    assert est.replicates.shape == (50, 1)


def test_the_faster_confirmed_lr_gives_the_steps_and_the_lr():
    """Confirmation runs at the chosen LR (0.3, whose mean curve levels off above the target)
    and at the LR below it (0.2, which crosses): the batch size's steps and LR are 0.2's, and
    every bootstrap replicate takes the faster LR as well."""
    rows = []
    for lr, curve in ((0.3, (1.0, 0.7, 0.6, 0.55, 0.55)), (0.2, (1.0, 0.8, 0.6, 0.45, 0.4))):
        for seed in (1, 2, 3):
            noise = 0.01 * (seed - 2)
            for s, v in zip((10, 20, 30, 40, 50), curve, strict=True):
                rows.append({"trial": f"t{lr}-{seed}", "batch_size": 8, "lr": lr, "seed": seed,
                             "strategy": "tuned", "step": s, "examples": 8 * s, "status": "reached",
                             "phase": "confirm", "eval_loss": v + noise})  # fmt: skip
    est = mean_curve_steps(pd.DataFrame(rows), Target("eval_loss", 0.5), n_boot=40)
    assert est.table["lr"].iloc[0] == 0.2 and est.table["n_runs"].iloc[0] == 3
    assert est.table["steps"].iloc[0] == pytest.approx(30 + 10 * 0.1 / 0.15)
    assert np.isfinite(est.replicates).all()
    # and when both cross, the faster wins: swap which LR levels off
    swapped = pd.DataFrame(rows).assign(lr=lambda d: d["lr"].map({0.3: 0.2, 0.2: 0.3}))
    est = mean_curve_steps(swapped, Target("eval_loss", 0.5), n_boot=0)
    assert est.table["lr"].iloc[0] == 0.3


def test_the_table_gives_the_lr_the_confirmation_runs_trained():
    """The LR beside a batch size's steps is the one its confirmation runs trained (the
    search's choice), not the search trial that crossed first on the raw metric: steps and LR
    come from the same runs."""
    from analysis.summary import summarize

    rows = []

    def run(trial, b, lr, seed, phase, losses):
        for k, v in enumerate(losses):
            s = 10 * (k + 1)
            rows.append({"trial": trial, "batch_size": b, "lr": lr, "strategy": "tuned",
                         "seed": seed, "step": s, "examples": b * s, "status": "reached",
                         "phase": phase, "eval_loss": v})  # fmt: skip

    for b, n in ((8, 8), (32, 4), (128, 3)):
        # a lucky trial at lr 0.9 dips below the target at once (raw), then levels off above it
        run(f"lucky{b}", b, 0.9, 0, "search", [0.4] + [0.6] * n)
        run(f"chosen{b}", b, 0.3, 0, "search", [1.0] * (n - 1) + [0.45])
        for k in range(2):  # the search chose 0.3; its confirmation runs cross after n-1 evals
            run(f"c{b}-{k}", b, 0.3, 1_000_000 + k, "confirm", [1.0] * (n - 1) + [0.4] * 3)
    summary = summarize(pd.DataFrame(rows), Target("eval_loss", 0.5), n_boot=20)
    table = summary.steps_table()
    assert list(table["lr"]) == [0.3, 0.3, 0.3]
    assert (table["lr_basis"] == "chosen by the search, trained by the confirmation runs").all()


def test_summarize_without_a_bootstrap():
    """n_boot=0 (a quick look): the estimate and the fit, no interval, no crash."""
    from analysis.summary import summarize

    rows = []
    for b, n in ((8, 8), (32, 4), (128, 3), (512, 3)):
        for k, phase in ((0, "search"), (1, "confirm"), (2, "confirm")):
            for i, v in enumerate([1.0] * (n - 1) + [0.4] * 3):
                rows.append({"trial": f"c{b}-{k}", "batch_size": b, "lr": 0.3, "seed": k,
                             "strategy": "tuned", "step": 10 * (i + 1), "examples": b * 10 * (i + 1),
                             "status": "reached", "phase": phase, "eval_loss": v})  # fmt: skip
    summary = summarize(pd.DataFrame(rows), Target("eval_loss", 0.5), n_boot=0)
    assert summary.estimates["tuned"].replicates is None
    assert summary.table["steps"].notna().all() and np.isfinite(summary.cbs.b_crit)
