"""The McCandlish fit, its bootstrap interval and the overhead CBS, on known answers."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import least_squares

from analysis.fits import (
    _profile_fit,
    bootstrap_fit,
    critical_batch_size,
    fit_mccandlish,
    overhead_cbs,
)
from analysis.frame import AnalysisError

B = 2.0 ** np.arange(3, 13)  # 8 .. 4096


def hyperbola(b, s_min=1000.0, b_crit=256.0):
    return s_min * (1.0 + b_crit / np.asarray(b, dtype=float))


@pytest.mark.parametrize("b_crit", [20.0, 256.0, 3000.0])
def test_exact_hyperbola_returns_its_parameters(b_crit):
    fit = fit_mccandlish(B, hyperbola(B, 1000.0, b_crit))
    assert fit.s_min == pytest.approx(1000.0, rel=1e-3)
    assert fit.e_min == pytest.approx(1000.0 * b_crit, rel=1e-3)
    assert fit.b_crit == pytest.approx(b_crit, rel=1e-3)
    assert fit.identified and fit.rss < 1e-12 and fit.n_batch_sizes == 10


def test_batched_profile_fit_matches_scipy_weighted_least_squares():
    rng = np.random.default_rng(3)
    log_b = np.log(np.repeat(B, 3))
    y = np.log(hyperbola(np.exp(log_b))) + 0.2 * rng.normal(size=log_b.size)
    w = rng.integers(0, 3, size=(4, log_b.size)).astype(float)
    c, log_s_min, _, _ = _profile_fit(log_b, np.tile(y, (4, 1)), w)
    for r in range(4):
        sol = least_squares(
            lambda p, r=r: np.sqrt(w[r]) * (y - np.logaddexp(p[0], p[1] - log_b)),
            [7.0, 12.0], method="lm", xtol=1e-15, ftol=1e-15,
        )  # fmt: skip
        assert np.exp(c[r]) == pytest.approx(np.exp(sol.x[1] - sol.x[0]), rel=1e-5)
        assert log_s_min[r] == pytest.approx(sol.x[0], abs=1e-5)


def test_degenerate_data_raise_clear_errors():
    with pytest.raises(AnalysisError, match="at least 3 distinct batch sizes.*got 2"):
        fit_mccandlish([8, 8, 16], [100, 110, 60])
    with pytest.raises(AnalysisError, match=r"positive and finite \(bad at batch sizes \[16\]"):
        fit_mccandlish([8, 16, 32], [100, 0, 40])
    with pytest.raises(AnalysisError, match="never reached"):
        fit_mccandlish([8, 16, 32], [100, np.nan, 40])
    with pytest.raises(AnalysisError, match="overhead must be > 0"):
        overhead_cbs(100.0, 0.0, 8)


def test_perfect_scaling_is_flagged_unidentified():
    fit = fit_mccandlish(B, 1e6 / B)  # S proportional to 1/B: B_crit beyond the measured range
    assert not fit.identified and fit.b_crit > 1e3 * B.max() / 2


def test_overhead_cbs_hand_derived():
    # S = 1000 + 256000/B. S(B_ref=8) = 33000; 20% over linear scaling from 8 is
    # 1.2 * 33000 * 8 / B = 316800 / B. 1000 + 256000/B = 316800/B  =>  B = 60800/1000 = 60.8.
    per_trial = pd.DataFrame(dict(batch_size=B, steps=hyperbola(B)))
    cbs = critical_batch_size(per_trial, overhead=0.2, n_boot=50)
    assert cbs.reference_batch_size == 8.0  # default: the smallest batch size
    assert cbs.cbs == pytest.approx(60.8, rel=1e-6)
    fit = cbs.fit
    assert fit.steps(60.8) == pytest.approx(1.2 * fit.steps(8.0) * 8.0 / 60.8, rel=1e-9)
    d = critical_batch_size(per_trial, overhead=0.5, reference_batch_size=32, n_boot=0).to_dict()
    assert d["cbs"] == pytest.approx(1.5 * 32 + 0.5 * 256, rel=1e-6)  # = 176
    assert d["cbs_overhead"] == 0.5 and d["cbs_reference_batch_size"] == 32
    assert "B_ref = 32" in d["cbs_definition"]


def test_residual_bootstrap_of_an_exact_curve_collapses_to_the_point():
    per_trial = pd.DataFrame(dict(batch_size=B, steps=hyperbola(B)))
    boot = bootstrap_fit(per_trial, n_boot=200, seed=1)
    assert boot.method.startswith("residual")
    lo, hi = boot.interval(boot.b_crit)
    assert lo == pytest.approx(256.0, rel=1e-4) and hi == pytest.approx(256.0, rel=1e-4)


def test_trial_bootstrap_skips_unreached_trials_and_counts_failures():
    # 3 batch sizes, 2 trials each; at B=32 one trial never reached: a replicate drawing it twice
    # has only 2 batch sizes and cannot be fitted (probability 1/4 per replicate).
    per_trial = pd.DataFrame(
        dict(batch_size=[8, 8, 16, 16, 32, 32], steps=[900, 1000, 500, 600, np.nan, 300])
    )
    boot = bootstrap_fit(per_trial, n_boot=400, seed=0)
    assert "trials" in boot.method and "seeds" not in boot.method
    assert 60 < boot.n_failed < 140  # binomial(400, 1/4): mean 100, sd 8.7
    assert np.isnan(boot.b_crit).sum() == boot.n_failed


def test_bootstrap_interval_covers_the_truth_at_its_stated_rate():
    """200 synthetic sweeps (8 seeds per batch size, 10% multiplicative noise), one 95% CI each.

    Tolerance: coverage over 200 independent datasets is binomial with sd
    sqrt(0.95 * 0.05 / 200) = 1.5 points. The stratified bootstrap also under-covers by a known
    small-sample amount: resampling n = 8 seeds per batch size shrinks the variance by
    (n - 1) / n, so a 95% interval acts like +-1.96 * sqrt(7/8) = +-1.83 sd, i.e. ~93%. We accept
    [0.88, 0.99]: 3 sd around that expectation. A broken interval (no resampling -> ~0%, wrong
    percentile -> far off 95%) fails.
    """
    t0 = time.perf_counter()
    b = np.repeat(B, 8)
    seed = np.tile(np.arange(8), B.size)
    covered = []
    for ds in range(200):
        rng = np.random.default_rng(ds)
        steps = hyperbola(b) * np.exp(0.1 * rng.normal(size=b.size))
        per_trial = pd.DataFrame(dict(batch_size=b, seed=seed, steps=steps))
        boot = bootstrap_fit(per_trial, n_boot=200, level=0.95, seed=ds)
        lo, hi = boot.interval(boot.b_crit)
        covered.append(lo <= 256.0 <= hi)
    coverage = float(np.mean(covered))
    assert 0.88 <= coverage <= 0.99, coverage
    assert time.perf_counter() - t0 < 60


def _replicates(steps: np.ndarray, rel_sd: float, n: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return steps[None, :] * np.exp(rel_sd * rng.standard_normal((n, steps.size)))


def test_scatter_beyond_the_seeds_widens_the_interval_by_the_birge_ratio(monkeypatch):
    """Points that sit on S(B) within their seed errors keep the seed bootstrap's interval;
    points that scatter about it by ~5x their errors (an LR search that chose differently at
    each batch size) get their spread scaled by the fit's sqrt(chi^2/dof): the interval is
    that much wider, and covers the truth where the seeds-only one does not."""
    import analysis.fits as fits

    b = np.array([4, 8, 16, 32, 64, 128, 256, 512], dtype=float)
    truth = 1000 * (1 + 32 / b)  # S_min 1000, B_crit 32
    table = pd.DataFrame({"batch_size": b, "steps": truth})
    on = fits.critical_batch_size_from_steps(table, _replicates(truth, 0.02), "seeds", n_boot=400)
    assert on.b_crit == pytest.approx(32, rel=1e-3)
    assert fits.scatter_scale(b, truth, _replicates(truth, 0.02), on.fit) == 1.0
    assert "Birge" not in on.boot.method

    # each point off S(B) by a random 10% (an LR search that chose a little differently at each
    # batch size), seed errors 2%: the seeds-only interval rarely covers the truth
    covered = {"scaled": 0, "seeds only": 0}
    scales = []
    for k in range(40):
        wobble = truth * np.exp(0.1 * np.random.default_rng(k).standard_normal(b.size))
        reps, t = _replicates(wobble, 0.02), table.assign(steps=wobble)
        with monkeypatch.context() as m:
            got = fits.critical_batch_size_from_steps(t, reps, "seeds", n_boot=400)
            scales.append(fits.scatter_scale(b, wobble, reps, got.fit))
            m.setattr(fits, "scatter_scale", lambda *a: 1.0)
            seeds_only = fits.critical_batch_size_from_steps(t, reps, "seeds", n_boot=400)
        covered["scaled"] += got.b_crit_ci[0] <= 32 <= got.b_crit_ci[1]
        covered["seeds only"] += seeds_only.b_crit_ci[0] <= 32 <= seeds_only.b_crit_ci[1]
    assert "Birge ratio" in got.boot.method and 3 < np.median(scales) < 8
    # measured: 36/40 scaled (nominal 95%), 8/40 seeds only
    assert covered["scaled"] >= 32 and covered["seeds only"] <= 16, covered


def test_bootstrap_does_not_depend_on_the_order_of_the_trials():
    """Two sweeps with the same trials under other (random) trial ids list them in another
    order: the bootstrap interval must be the same."""
    from analysis.fits import bootstrap_fit

    rng = np.random.default_rng(1)
    rows = [{"batch_size": b, "seed": s, "steps": 100 * (1 + 64 / b) * rng.uniform(0.8, 1.3)}
            for b in (8, 16, 32, 64, 128, 256) for s in (0, 1) for _ in range(4)]  # fmt: skip
    df = pd.DataFrame(rows)
    a = bootstrap_fit(df, n_boot=200, seed=3)
    b = bootstrap_fit(df.sample(frac=1.0, random_state=7), n_boot=200, seed=3)
    assert np.array_equal(a.b_crit, b.b_crit, equal_nan=True)
