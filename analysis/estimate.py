"""Steps to target per batch size, free of the winner's curse, with a seed bootstrap.

Selection and estimation are kept apart (docs/analysis.md). The LR search selects an LR per
(batch size, seed); a sweep then trains that LR again with fresh training seeds (rows with
``phase == "confirm"``, :mod:`tune_jobs.confirm`). The steps to target of a batch size are the
first crossing of the *mean* curve of those runs (their target metric averaged over seeds at
each step, linearly interpolated between eval points): it estimates the first step at which
the expected metric meets the target, which is what "steps to reach the target" means for a
noisy training run. Two biases are avoided:

- first passage: a single noisy curve dips below the target before its mean does, so one
  run's first crossing is early; averaging the curves first shrinks the noise by sqrt(k);
- the winner's curse: the fastest of several search trials is the luckiest, so the minimum
  over an LR search is low; the confirmation runs were not selected on their outcome.

Interval: a stratified bootstrap over training seeds: within each batch size its confirmation
runs are drawn with replacement, the mean curve's crossing recomputed, and the fit redone
(the chosen LR is held fixed). A run that stopped (its stop rule, or the budget) keeps its
last value for the steps after its end; a diverged one counts as never reaching the target.

Without confirmation runs the estimator falls back: for strategies that search no LR (one
run per seed at a computed LR) the same mean curve over seeds; for an LR search recorded
without confirmation runs, the fastest trial per study (biased low; the summary says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.frame import PHASE_COLUMN
from analysis.steps import Direction, Target, smooth_ema

CONFIRM = "confirm"
MEAN_CURVE = "crossing of the mean curve of the confirmation runs (fresh seeds at the chosen LR)"
SEED_CURVE = "crossing of the mean curve over training seeds (no LR search: nothing selected)"
FASTEST = (
    "fastest trial of each LR study (no confirmation runs recorded: biased low by the "
    "winner's curse and first passage; rerun with lr_search.confirm_seeds > 0)"
)
_HUGE = 1e300  # stands for a diverged run's metric (never meets a min target)
WINDOW = 0.1  # half-width of the centred time average of the mean curve, relative to the step


@dataclass
class StepsEstimate:
    """Steps to target per batch size of one strategy, and their bootstrap replicates.

    ``table``: batch_size, steps (NaN: not reached), n_runs (runs the estimate averages),
    eval_every (median steps between their eval points). ``replicates``: [R, n batch sizes]
    bootstrap steps (NaN where a replicate's mean curve never crossed), or None when the
    estimate is the legacy fastest-trial one (its bootstrap lives in `analysis.fits`).
    """

    strategy: str
    method: str
    table: pd.DataFrame
    replicates: np.ndarray | None
    ci_method: str


def crossing_steps(
    steps: np.ndarray, values: np.ndarray, threshold: float, direction: Direction = "min"
) -> np.ndarray:
    """First interpolated crossing of each row of ``values`` ([R, T] over ``steps`` [T]); NaN
    for rows that never reach ``threshold``. Row-wise :func:`analysis.steps.crossing_step`."""
    v = np.atleast_2d(np.asarray(values, dtype=float))
    s = np.asarray(steps, dtype=float)
    hit = v <= threshold if direction == "min" else v >= threshold
    any_hit = hit.any(1)
    i = np.argmax(hit, axis=1)
    j = np.maximum(i - 1, 0)
    rows = np.arange(v.shape[0])
    v0, v1 = v[rows, j], v[rows, i]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = (threshold - v0) / (v1 - v0)
    frac = np.where(np.isfinite(frac), np.clip(frac, 0.0, 1.0), 1.0)
    out = np.where(i == 0, s[0], s[j] + frac * (s[i] - s[j]))
    return np.where(any_hit, out, np.nan)


def curve_matrix(runs: list[pd.DataFrame], direction: Direction) -> tuple[np.ndarray, np.ndarray]:
    """Runs' curves (frames of step, value, diverged) on the union of their eval steps: [K, T].

    Linear between a run's eval points; before its first, its first value; after its last,
    its last value (a diverged run: a value that never meets the target)."""
    grid = np.unique(np.concatenate([r["step"].to_numpy(float) for r in runs]))
    bad = _HUGE if direction == "min" else -_HUGE
    out = np.empty((len(runs), grid.size))
    for k, r in enumerate(runs):
        ok = np.isfinite(r["value"].to_numpy(float))
        s, v = r["step"].to_numpy(float)[ok], r["value"].to_numpy(float)[ok]
        if s.size == 0:
            out[k] = bad
            continue
        out[k] = np.interp(grid, s, v)
        if bool(r["diverged"].iloc[-1]):
            out[k, grid > s[-1]] = bad
    return grid, out


def time_average(steps: np.ndarray, window: float = WINDOW) -> np.ndarray:
    """[T, T] matrix A: (values @ A.T)[t] = mean of values at eval steps within
    [t (1 - window), t (1 + window)], narrowed near the last step to stay centred. Centred, so a smooth curve is not shifted (no lag, unlike
    an EMA; the bias is about (window t)^2 f''(t) / 6); the scatter of a noisy one is averaged
    over the eval points in the window."""
    s = np.asarray(steps, dtype=float)
    # symmetric even at the end of the runs: a window cut to the left there would lift a falling
    # curve, so it narrows instead (the last eval point is averaged with nothing after it)
    half = np.minimum(window * s, s[-1] - s)
    near = np.abs(s[None, :] - s[:, None]) <= half[:, None]
    return near / near.sum(1, keepdims=True)


def _runs(frame: pd.DataFrame) -> list[pd.DataFrame]:
    return [
        pd.DataFrame(
            {
                "step": g["step"].to_numpy(),
                "value": g["_value"].to_numpy(),
                "diverged": (g["status"] == "diverged").to_numpy(),
            }
        )  # fmt: skip
        for _, g in frame.sort_values(["trial", "step"]).groupby("trial", sort=True)
    ]


def mean_curve_steps(
    df: pd.DataFrame,
    target: Target,
    ema: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    method: str = MEAN_CURVE,
) -> StepsEstimate:
    """The mean-curve estimate for the runs in ``df`` (one strategy): one row per batch size."""
    frame = df.reset_index(drop=True).assign(_value=smooth_ema(df, target.metric, ema).to_numpy())
    rng = np.random.default_rng(seed)
    sizes = sorted(frame["batch_size"].unique())
    rows, reps = [], np.full((max(n_boot, 0), len(sizes)), np.nan)
    for c, b in enumerate(sizes):
        runs = _runs(frame[frame["batch_size"] == b])
        grid, m = curve_matrix(runs, target.direction)
        m = m @ time_average(grid).T
        steps = float(
            crossing_steps(grid, m.mean(0, keepdims=True), target.value, target.direction)[0]
        )
        spacing = [np.median(np.diff(r["step"])) for r in runs if len(r) > 1]
        rows.append(
            {"batch_size": int(b), "steps": steps, "n_runs": len(runs),
             "eval_every": float(np.median(spacing)) if spacing else float("nan")}
        )  # fmt: skip
        if n_boot > 0 and len(runs) > 1:
            w = rng.multinomial(len(runs), np.full(len(runs), 1.0 / len(runs)), n_boot)
            reps[:, c] = crossing_steps(grid, w @ m / len(runs), target.value, target.direction)
    table = pd.DataFrame(rows)
    multi = bool((table["n_runs"] > 1).all())
    ci = (
        f"stratified bootstrap over training seeds: each batch size's runs resampled, "
        f"mean curve re-crossed, fit redone ({n_boot} replicates)"
        if multi
        else "residual bootstrap of the fit (one run per batch size: no seeds to resample)"
    )
    return StepsEstimate(str(df["strategy"].iloc[0]), method, table, reps if multi else None, ci)


def estimation_runs(df: pd.DataFrame, strategy: str) -> tuple[pd.DataFrame, str] | None:
    """The rows the estimate of ``strategy`` averages and which estimator applies; None when
    only the legacy fastest-trial estimate is possible (an LR search with no confirmation)."""
    rows = df[df["strategy"] == strategy]
    if PHASE_COLUMN in rows and (rows[PHASE_COLUMN] == CONFIRM).any():
        return rows[rows[PHASE_COLUMN] == CONFIRM], MEAN_CURVE
    per_study = rows.groupby(["batch_size", "seed"])["trial"].nunique()
    if strategy != "tuned" and (per_study == 1).all():
        return rows, SEED_CURVE
    return None
