"""Steps to target per batch size, free of the winner's curse, with a seed bootstrap.

Selection and estimation are kept apart (docs/analysis.md). The LR search selects an LR per
(batch size, seed); a sweep then trains that LR again with fresh training seeds (rows with
``phase == "confirm"``, :mod:`tune_jobs.confirm`), and the LR 1.5x below it, with the same
seeds. The steps to target of a batch size at an LR are where the *mean* curve of its runs
(their target metric averaged over seeds at each step, linearly interpolated between eval
points) crosses the target, read off its monotone fit (:func:`monotone_crossing`): it
estimates the first step at which the expected metric meets the target, which is what "steps
to reach the target" means for a noisy training run. Of the two LRs the faster counts.
Three biases are avoided:

- first passage: a single noisy curve dips below the target before its mean does, so one
  run's first crossing is early; averaging the curves first shrinks the noise by sqrt(k), and
  the monotone fit's crossing, unlike the first crossing, is not pulled early by what noise
  remains (it matters where the curve approaches the target at a shallow angle);
- the winner's curse: the fastest of several search trials is the luckiest, so the minimum
  over an LR search is low; the confirmation runs were not selected on their outcome (the
  faster of two 4-seed means is a far milder minimum, and the bootstrap repeats it);
- a lucky LR: the search's choice errs towards too large an LR, whose expected curve may
  level off at the target; the lower LR then gives the estimate.

Interval: a stratified bootstrap over training seeds: within each batch size and LR its
confirmation runs are drawn with replacement, the mean curves' crossings recomputed, the
faster taken, and the fit redone. A run that stopped (its stop rule, or the budget) keeps its
last value for the steps after its end; a diverged one counts as never reaching the target
after it diverged.

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


def monotone_crossing(
    steps: np.ndarray, values: np.ndarray, threshold: float, direction: Direction = "min"
) -> np.ndarray:
    """Where the monotone fit of each row of ``values`` ([R, T] over ``steps`` [T]) crosses
    ``threshold``; NaN for rows it never reaches.

    For a curve that should fall (``min``; rise for ``max``), its isotonic (monotone
    least-squares) fit lies above the threshold up to the eval point k that maximises the
    running sum of w_j (value_j - threshold), and at or below it after (the switching relation
    of isotonic regression); w_j is the step interval point j stands for (trapezoid weights,
    so uneven eval spacing is accounted for). The crossing is interpolated between point k,
    above the threshold, and k + 1, below it. Unlike the first crossing of the curve itself, a
    dip of the noise below the threshold before the crossing does not end the search unless
    it outweighs what follows, so the estimate is not pulled early by first passage. A row is
    cut at its first non-finite or huge value (a diverged run in the mean): it can only have
    reached the threshold before that.
    """
    v = np.atleast_2d(np.asarray(values, dtype=float))
    s = np.asarray(steps, dtype=float)
    n, t = v.shape
    rows = np.arange(n)
    excess = v - threshold if direction == "min" else threshold - v
    bad = ~np.isfinite(v) | (np.abs(v) >= _HUGE * 1e-6)
    end = np.where(bad.any(1), np.argmax(bad, 1), t)  # first index past the usable part
    valid = np.arange(t)[None, :] < end[:, None]
    gaps = np.diff(s)
    w = 0.5 * (np.concatenate([gaps, [0.0]]) + np.concatenate([[0.0], gaps]))
    w = np.where(w > 0, w, 1.0)  # a single eval point
    run = np.cumsum(np.where(valid, w * excess, 0.0), 1)
    # the empty prefix (index -1, sum 0) competes: the fit is below from the first point
    k = np.argmax(np.concatenate([np.zeros((n, 1)), np.where(valid, run, -np.inf)], 1), 1) - 1
    lo, hi = np.clip(k, 0, t - 1), np.clip(k + 1, 0, t - 1)
    a, b = excess[rows, lo], excess[rows, hi]  # a > 0 >= b where the crossing is inside
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.clip(np.where(a > b, a / (a - b), 1.0), 0.0, 1.0)
    out = np.where(k < 0, s[0], s[lo] + frac * (s[hi] - s[lo]))
    never = (k + 1 >= end) & (k >= 0)  # above the threshold up to where the usable part ends
    return np.where(never | (end == 0), np.nan, out)


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


def _runs(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """A batch size's runs in training-seed order (then trial id): the bootstrap's draws then
    depend on the runs, not on the (random) Tune trial ids a sweep happened to give them."""
    by = ["seed", "trial"] if "seed" in frame else ["trial"]
    return [
        pd.DataFrame(
            {
                "step": g["step"].to_numpy(),
                "value": g["_value"].to_numpy(),
                "diverged": (g["status"] == "diverged").to_numpy(),
            }
        )  # fmt: skip
        for _, g in frame.sort_values([*by, "step"]).groupby(by, sort=True)
    ]


def mean_curve_steps(
    df: pd.DataFrame,
    target: Target,
    ema: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    method: str = MEAN_CURVE,
) -> StepsEstimate:
    """The mean-curve estimate for the runs in ``df`` (one strategy): one row per batch size.

    The runs of a batch size are grouped by LR (confirmation runs train the chosen LR and the
    next lower one, :data:`tune_jobs.config.CONFIRM_LR_FACTORS`); each group's mean curve is
    crossed (:func:`monotone_crossing`) and the faster LR counts, in the estimate and in each
    bootstrap replicate alike (so the interval includes that choice). ``lr``: the LR counted
    (the largest confirmed where none crossed)."""
    frame = df.reset_index(drop=True).assign(_value=smooth_ema(df, target.metric, ema).to_numpy())
    rng = np.random.default_rng(seed)
    sizes = sorted(frame["batch_size"].unique())
    rows, reps = [], np.full((max(n_boot, 0), len(sizes)), np.nan)
    for c, b in enumerate(sizes):
        best: dict = {"steps": np.nan}
        for lr, at_lr in frame[frame["batch_size"] == b].groupby("lr", sort=True):
            runs = _runs(at_lr)
            grid, m = curve_matrix(runs, target.direction)
            steps = float(
                monotone_crossing(grid, m.mean(0, keepdims=True), target.value, target.direction)[0]
            )
            spacing = [np.median(np.diff(r["step"])) for r in runs if len(r) > 1]
            row = {"batch_size": int(b), "steps": steps, "n_runs": len(runs), "lr": float(lr),
                   "eval_every": float(np.median(spacing)) if spacing else float("nan")}  # fmt: skip
            if np.isnan(best["steps"]) or steps < best["steps"]:  # the faster LR (by LR order,
                best = row  # the largest when none crossed)
            if n_boot > 0 and len(runs) > 1:
                w = rng.multinomial(len(runs), np.full(len(runs), 1.0 / len(runs)), n_boot)
                got = monotone_crossing(grid, w @ m / len(runs), target.value, target.direction)
                reps[:, c] = np.fmin(reps[:, c], got)
        rows.append(best)
    table = pd.DataFrame(rows)
    multi = bool((table["n_runs"] > 1).all()) and n_boot > 0
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
