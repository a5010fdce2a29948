"""Steps to target per trial, and the best (fewest) steps per batch size.

Takes the tidy frame of `analysis.frame`. A target is a fixed goal (metric, value, direction)
or the seed paper's rule (eps = lower quartile of the losses reached by the largest batch
size). The metric may be smoothed by an EMA before thresholding (McCandlish et al. fit the
smoothed loss), and the crossing step is linearly interpolated between the two eval points
that bracket the threshold, so S is not quantised to the eval interval.

Steps-to-result of a batch size (Shallue et al.) is the minimum over the trials of its LR
search; per (batch size, seed) it is kept separately so the bootstrap can resample seeds.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from analysis.frame import AnalysisError, validate_frame
from trainables.api import Target

Direction = Literal["min", "max"]


def smooth_ema(df: pd.DataFrame, metric: str, beta: float | None) -> pd.Series:
    """The metric smoothed per trial by a bias-corrected EMA over its eval points.

    m_t = beta * m_{t-1} + (1 - beta) * x_t, divided by (1 - beta^t) so the first points are
    not pulled toward zero. beta is per eval point (not per step); None or 0 = no smoothing.
    Rows where the metric was not reported stay NaN.
    """
    if beta is None or beta == 0:
        return df[metric].astype(float)
    if not 0 < beta < 1:
        raise AnalysisError(f"EMA beta must be in [0, 1), got {beta}")
    flat = df[[metric, "trial", "step"]].reset_index(drop=True)  # positional: index may repeat
    ordered = flat.dropna(subset=[metric]).sort_values(["trial", "step"], kind="stable")
    # pandas' adjust=True EMA is exactly the bias-corrected form above
    smoothed = ordered.groupby("trial", sort=False)[metric].transform(
        lambda x: x.ewm(alpha=1.0 - beta, adjust=True).mean()
    )
    return pd.Series(smoothed.reindex(flat.index).to_numpy(float), index=df.index, name=metric)


def crossing_step(
    steps: np.ndarray, values: np.ndarray, threshold: float, direction: Direction = "min"
) -> float:
    """First step at which `values` reach `threshold`, linearly interpolated (NaN if never).

    Between the last eval point before the crossing (s0, v0) and the first at or past it
    (s1, v1) the metric is taken as linear in steps: s0 + (thr - v0) * (s1 - s0) / (v1 - v0).
    If the first eval point already meets the target, that step is returned.
    """
    steps = np.asarray(steps, dtype=float)
    values = np.asarray(values, dtype=float)
    keep = ~np.isnan(values)
    steps, values = steps[keep], values[keep]
    hit = values <= threshold if direction == "min" else values >= threshold
    if not hit.any():
        return float("nan")
    i = int(np.argmax(hit))
    if i == 0:
        return float(steps[0])
    s0, s1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
    if not np.isfinite(v0) or v1 == v0:  # a diverged previous point: no line to follow
        return float(s1)
    return float(s0 + (threshold - v0) * (s1 - s0) / (v1 - v0))


def paper_threshold(
    df: pd.DataFrame,
    metric: str = "train_loss",
    quantile: float = 0.25,
    ema: float | None = None,
    direction: Direction = "min",
) -> Target:
    """The seed paper's target: the lower quartile of the losses reached by the largest batch.

    Golmant et al. ran one run per batch size; with an LR search we take the best trial of the
    largest batch size (lowest smoothed minimum; all strategies pooled so every strategy is
    measured against one common target) and the `quantile` of the values on its curve. For a
    metric to maximise (direction max) the upper quantile is used. This favours large batches:
    lower losses are reachable only by small ones.
    """
    validate_frame(df, [metric])
    values = smooth_ema(df, metric, ema).to_numpy(float)
    largest = df["batch_size"].max()
    keep = (df["batch_size"] == largest).to_numpy() & np.isfinite(values)
    if not keep.any():
        raise AnalysisError(
            f"the largest batch size ({largest}) has no finite {metric} values; the paper "
            "threshold needs them (give a fixed --target-value instead)"
        )
    rows = pd.DataFrame({"trial": df["trial"].to_numpy()[keep], "v": values[keep]})
    per_trial = rows.groupby("trial")["v"]
    best = per_trial.min().idxmin() if direction == "min" else per_trial.max().idxmax()
    curve = rows.loc[rows["trial"] == best, "v"].to_numpy()
    q = quantile if direction == "min" else 1.0 - quantile
    value = float(np.quantile(curve, q))
    rule = f"paper rule: {q:.0%} quantile of the {metric} curve of the best trial at B={largest}"
    return Target(metric, value, direction, rule)


def steps_to_target(df: pd.DataFrame, target: Target, ema: float | None = None) -> pd.DataFrame:
    """One row per trial: the (interpolated) steps to reach `target`, NaN if never reached.

    Columns: trial, strategy, batch_size, seed, lr, status, steps (float, optimizer steps),
    examples (= steps * batch_size), reached (bool), best_value and final_value (of the smoothed
    metric), last_step (steps trained).
    """
    validate_frame(df, [target.metric])
    smoothed = smooth_ema(df, target.metric, ema).to_numpy(float)
    frame = df.reset_index(drop=True).assign(_value=smoothed).sort_values(["trial", "step"])
    out = []
    for trial, g in frame.groupby("trial", sort=True):
        vals = g["_value"].to_numpy(dtype=float)
        s = crossing_step(g["step"].to_numpy(), vals, target.value, target.direction)
        finite = vals[np.isfinite(vals)]
        reported = vals[~np.isnan(vals)]
        first = g.iloc[0]
        out.append(
            {
                "trial": str(trial),
                "strategy": first["strategy"],
                "batch_size": int(first["batch_size"]),
                "seed": int(first["seed"]),
                "lr": float(first["lr"]),
                "status": first["status"],
                "steps": s,
                "examples": s * int(first["batch_size"]),
                "reached": bool(np.isfinite(s)),
                "best_value": (
                    float(finite.min() if target.direction == "min" else finite.max())
                    if finite.size
                    else float("nan")
                ),
                "final_value": float(reported[-1]) if reported.size else float("nan"),
                "last_step": int(g["step"].max()),
            }
        )
    return pd.DataFrame(out)


def best_per_batch_size(
    per_trial: pd.DataFrame,
    by: tuple[str, ...] = ("strategy", "batch_size"),
    direction: Direction = "min",
) -> pd.DataFrame:
    """Steps-to-result per group: the fewest steps over the trials of its LR search.

    Columns: `by`..., steps (NaN if no trial reached), examples, lr and trial of the fastest
    trial (if none reached: of the trial with the best metric, lr_basis says which), n_trials,
    n_reached. Pass by=("strategy", "batch_size", "seed") for one row per study.
    """
    rows = []
    for key, g in per_trial.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        reached = g[g["reached"]]
        if not reached.empty:
            pick, basis = reached.loc[reached["steps"].idxmin()], "fastest to target"
        else:
            ranked = g.dropna(subset=["best_value"])
            if ranked.empty:
                pick, basis = g.iloc[0], "none finite"
            else:
                i = (
                    ranked["best_value"].idxmin()
                    if direction == "min"
                    else ranked["best_value"].idxmax()
                )
                pick, basis = ranked.loc[i], "best metric (target not reached)"
        row = dict(zip(by, key, strict=True))
        row.update(
            steps=float(pick["steps"]) if not reached.empty else float("nan"),
            examples=float(pick["examples"]) if not reached.empty else float("nan"),
            lr=float(pick["lr"]),
            trial=pick["trial"],
            lr_basis=basis,
            n_trials=int(len(g)),
            n_reached=int(len(reached)),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def best_per_seed(per_trial: pd.DataFrame, direction: Direction = "min") -> pd.DataFrame:
    """Steps-to-result per study (strategy, batch size, seed): the bootstrap's input."""
    return best_per_batch_size(per_trial, ("strategy", "batch_size", "seed"), direction)
