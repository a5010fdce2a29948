"""The gradient noise scale B_simple beside the fitted B_crit (McCandlish et al. 2018; docs/science.md §3).

A sweep run with ``log_noise_scale: true`` has a metric column ``noise_scale_bsimple`` in the
tidy frame (`analysis.frame`): at each eval point, tr(Sigma) / |G|^2 from exponential moving
averages (beta 0.99 per step, so about the last 100 steps) of the two-batch estimates of the
numerator and the denominator (`trainables.noise_scale`). It is NaN where the averaged |G|^2
estimate was not positive (MLflow stores the estimator's inf as NaN).

**B_simple at target** (what the report puts beside B_crit), per strategy:

1. per batch size, the trial that set its steps-to-result (``best_per_batch_size``'s
   ``trial``: the fastest to the target over the LR study and seeds);
2. its B_simple at the (interpolated) step where it reached the target, linearly
   interpolated between the finite eval points that bracket that step;
3. the median over the batch sizes that reached the target, with the range (min, max).

Why at the target: B_simple grows as the loss falls (|G|^2 shrinks, tr(Sigma) much less), and
B_crit belongs to a target, so both are read at the same loss. Why a median over batch sizes:
B_simple is a property of the parameters, not of the batch size, so every batch size's best
trial estimates it at the target loss; they reach it at different parameters (other LRs, other
noise), and the range shows how much that matters.

How it relates to B_crit: the critical batch size is predicted by B_noise = tr(H Sigma) /
(G^T H G); B_simple = tr(Sigma) / |G|^2 equals B_noise only when the Hessian H is a multiple of
the identity. In general they differ (by a factor that depends on how the gradient and the
noise align with the curvature), so B_simple is a cheap order-of-magnitude predictor of
B_crit, not a second measurement of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

BSIMPLE = "noise_scale_bsimple"

DEFINITION = (
    "B_simple = tr(Sigma)/|G|^2 (McCandlish et al.), from EMAs (beta 0.99 per step) of the "
    "two-half-batch estimates; per batch size, the value of the trial fastest to the target at "
    "the step it reached the target (linear interpolation between eval points); the sweep's "
    "value is the median over the batch sizes that reached, with the range. B_crit is "
    "predicted by B_noise = tr(H Sigma)/(G^T H G); B_simple equals it only when the Hessian H "
    "is a multiple of the identity, and in general they differ: read B_simple as an "
    "order-of-magnitude predictor of B_crit, not as a second estimate of it."
)


def has_noise_scale(df: pd.DataFrame) -> bool:
    """Whether the frame holds any finite B_simple value (the sweep logged the noise scale)."""
    return BSIMPLE in df.columns and bool(np.isfinite(df[BSIMPLE].to_numpy(float)).any())


def value_at_step(steps, values, at: float) -> float:
    """``values`` at step ``at``, linear between the finite points that bracket it; NaN when
    ``at`` is NaN or outside the finite points' steps."""
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    keep = np.isfinite(values)
    steps, values = steps[keep], values[keep]
    if not np.isfinite(at) or steps.size == 0 or not steps.min() <= at <= steps.max():
        return float("nan")
    order = np.argsort(steps, kind="stable")
    return float(np.interp(at, steps[order], values[order]))


def bsimple_at_target(df: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """``best`` (one row per group from `analysis.steps.best_per_batch_size`, with ``trial``
    and ``steps``) plus a column ``b_simple``: the trial's B_simple at its crossing step
    (NaN where the target was not reached or no finite B_simple brackets the crossing)."""
    out = best.copy()
    if BSIMPLE not in df.columns:
        return out.assign(b_simple=np.nan)
    curves = {t: g for t, g in df[df["trial"].isin(set(best["trial"]))].groupby("trial")}
    out["b_simple"] = [
        value_at_step(curves[t]["step"], curves[t][BSIMPLE], s) if t in curves else np.nan
        for t, s in zip(best["trial"], best["steps"], strict=True)
    ]
    return out


def bsimple_summary(table: pd.DataFrame, b_crit: float | None = None) -> dict[str, Any] | None:
    """Median, min and max of ``table['b_simple']`` over its batch sizes (one strategy), the
    batch sizes used, and the ratio median / ``b_crit``; None when no value is finite."""
    rows = table[np.isfinite(table["b_simple"].to_numpy(float))]
    if rows.empty:
        return None
    v = rows["b_simple"].to_numpy(float)
    median = float(np.median(v))
    ratio = median / b_crit if b_crit is not None and b_crit > 0 else None
    return {
        "median": median,
        "min": float(v.min()),
        "max": float(v.max()),
        "n_batch_sizes": len(v),
        "batch_sizes": [int(b) for b in rows["batch_size"]],
        "b_crit": b_crit,
        "median_over_b_crit": ratio,
        "definition": DEFINITION,
    }
