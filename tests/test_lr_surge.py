"""The non-monotone best-LR fit of Adam-style optimizers (Li et al. 2024, arXiv 2405.14578,
eq. 2) recovers its own peak from noisy data, and the report's verdict names the form that
fits best."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.lr_fit import SurgeFit, fit_best_lr, fit_surge


def _surge(b, eta_max, b_noise):
    return eta_max / (0.5 * (np.sqrt(b_noise / b) + np.sqrt(b / b_noise)))


def test_surge_form_by_hand():
    f = SurgeFit(eta_max=0.01, b_noise=256.0, peak_inside=True)
    assert f.lr(256) == pytest.approx(0.01)  # the peak
    assert f.lr(64) == pytest.approx(0.01 / (0.5 * (2 + 0.5)))  # sqrt(4) + sqrt(1/4)
    assert f.lr(64) == pytest.approx(f.lr(1024))  # symmetric in log B around B_noise


def test_surge_fit_recovers_the_peak_of_noisy_data():
    rng = np.random.default_rng(0)
    b = np.repeat(2.0 ** np.arange(3, 15), 3)  # 8 .. 16384, three seeds each
    lr = _surge(b, 3e-3, 700.0) * np.exp(rng.normal(0, 0.1, b.size))  # 10% noise in log LR
    fit = fit_surge(b, lr)
    assert fit.peak_inside
    assert fit.b_noise == pytest.approx(700.0, rel=0.25)
    assert fit.eta_max == pytest.approx(3e-3, rel=0.1)


def test_verdict_picks_the_form_the_data_come_from():
    rng = np.random.default_rng(1)
    b = 2.0 ** np.arange(3, 14)
    noise = np.exp(rng.normal(0, 0.05, b.size))
    surge = fit_best_lr(pd.DataFrame({"batch_size": b, "lr": _surge(b, 1e-3, 512.0) * noise}))
    assert surge.best_form == "surge" and "surge (Li et al. 2024)" in surge.verdict()
    assert {"power_law", "surge"} <= set(surge.rms)
    # a best LR that grows like B^0.8 everywhere: steeper than the surge's sqrt(B) can rise
    power = fit_best_lr(pd.DataFrame({"batch_size": b, "lr": 1e-3 * b**0.8 * noise}))
    assert power.best_form in ("power_law", "saturating") and not power.surge.peak_inside
