"""Speedup over a base batch size, scaling efficiency, and the three regimes.

Seed paper: s(m; m0) = S(m0) / S(m) with S the steps to target; ideal (linear) speedup m/m0;
efficiency = s / (m/m0) (1 = no extra examples spent). Local scaling efficiency is the slope
-d log S / d log B: measured by finite differences on the steps table, and from the McCandlish
fit as B_crit / (B + B_crit) (1 at small B, 1/2 at B = B_crit, -> 0 at large B).

Regimes from the fitted local efficiency (thresholds chosen symmetric about B_crit on a log
axis, so they are a property of the fit, not of the grid of batch sizes measured):
- linear:               efficiency >= 0.8, i.e. B <= B_crit / 4 (doubling B nearly halves S);
- diminishing returns:  0.2 < efficiency < 0.8, i.e. B_crit / 4 < B < 4 B_crit;
- stagnation:           efficiency <= 0.2, i.e. B >= 4 B_crit (doubling B saves < ~13% of S).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.frame import AnalysisError

LINEAR_THRESHOLD = 0.8  # local efficiency at or above: linear regime (B <= B_crit / 4)
STAGNATION_THRESHOLD = 0.2  # local efficiency at or below: stagnation (B >= 4 B_crit)
REGIMES = ("linear", "diminishing returns", "stagnation")


def local_scaling_efficiency(batch_size, b_crit: float) -> np.ndarray:
    """-d log S / d log B of the fit S = S_min (1 + B_crit / B): B_crit / (B + B_crit)."""
    b = np.asarray(batch_size, dtype=float)
    return b_crit / (b + b_crit)


def regime(
    efficiency,
    linear: float = LINEAR_THRESHOLD,
    stagnation: float = STAGNATION_THRESHOLD,
) -> np.ndarray:
    """Regime name per local scaling efficiency (see the module docstring for thresholds)."""
    if not 0 < stagnation < linear < 1:
        raise AnalysisError(f"need 0 < stagnation ({stagnation}) < linear ({linear}) < 1")
    e = np.asarray(efficiency, dtype=float)
    return np.where(e >= linear, REGIMES[0], np.where(e <= stagnation, REGIMES[2], REGIMES[1]))


def regime_bounds(
    b_crit: float, linear: float = LINEAR_THRESHOLD, stagnation: float = STAGNATION_THRESHOLD
) -> tuple[float, float]:
    """Batch sizes where the regimes change: efficiency e at B = B_crit (1 - e) / e."""
    return b_crit * (1 - linear) / linear, b_crit * (1 - stagnation) / stagnation


def speedup_table(
    best: pd.DataFrame, base_batch_size: int | None = None, b_crit: float | None = None
) -> pd.DataFrame:
    """Speedup per strategy and batch size from a steps table (strategy?, batch_size, steps).

    Adds: speedup = S(m0)/S(m), ideal = m/m0, efficiency = speedup/ideal, measured_local_eff
    (-d log S / d log B by finite differences over neighbouring measured batch sizes) and, if
    `b_crit` is given, fit_local_eff and regime. m0 defaults to the smallest batch size that
    reached the target (per strategy). Rows that never reached the target keep NaN speedup.
    """
    if "strategy" not in best:
        best = best.assign(strategy="tuned")
    out = []
    for _, g in best.sort_values("batch_size").groupby("strategy", sort=True):
        g = g.copy()
        reached = g.dropna(subset=["steps"])
        if reached.empty:
            continue
        m0 = base_batch_size if base_batch_size is not None else reached["batch_size"].min()
        if m0 not in set(reached["batch_size"]):
            raise AnalysisError(
                f"base batch size {m0} did not reach the target; use one of "
                f"{sorted(reached['batch_size'].tolist())}"
            )
        s0 = float(reached.loc[reached["batch_size"] == m0, "steps"].min())
        g["base_batch_size"] = m0
        g["speedup"] = s0 / g["steps"]
        g["ideal"] = g["batch_size"] / m0
        g["efficiency"] = g["speedup"] / g["ideal"]
        slope = np.full(len(g), np.nan)
        if len(reached) >= 2:
            lb, ls = np.log(reached["batch_size"].to_numpy(float)), np.log(reached["steps"])
            slope_r = -np.gradient(ls.to_numpy(float), lb)
            slope[np.flatnonzero(g["steps"].notna().to_numpy())] = slope_r
        g["measured_local_eff"] = slope
        if b_crit is not None:
            g["fit_local_eff"] = local_scaling_efficiency(g["batch_size"], b_crit)
            g["regime"] = regime(g["fit_local_eff"])
        out.append(g)
    if not out:
        raise AnalysisError("no batch size reached the target: there is no speedup to compute")
    return pd.concat(out, ignore_index=True)
