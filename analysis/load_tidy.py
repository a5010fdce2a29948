"""The tidy frame both loaders build (:mod:`analysis.load_ray`, :mod:`analysis.load_mlflow`;
columns in :mod:`analysis.frame`), and the error they raise when a source names no sweep."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from analysis.frame import NON_METRIC_COLUMNS, PHASE_COLUMN
from analysis.frame import REQUIRED_COLUMNS as TRIAL_COLUMNS
from trainables.api import InputError


class SweepNotFoundError(InputError, LookupError):
    """The source names no sweep: no such folder, experiment or run, or no trials in it."""


def with_devices(df: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    """``df.attrs["device_names"]``: the devices the trials ran on (``analysis.cost`` states
    them beside the times it computes)."""
    df.attrs["device_names"] = sorted({str(n) for n in names if n and n == n})
    return df


def tidy_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Column order and dtypes of the tidy frame; rows sorted by batch size, trial, step."""
    if "examples" not in df:
        df["examples"] = df["step"] * df["batch_size"]
    df = df.dropna(subset=["step"])
    metrics = sorted(c for c in df.columns if c not in NON_METRIC_COLUMNS)
    phase = [PHASE_COLUMN] if PHASE_COLUMN in df.columns else []
    # A shallow copy, and columns replaced one at a time: a copy of the whole frame, then a
    # second one of its metrics, each held beside the input, were most of a 10,000-trial
    # sweep's load_ray_folder peak (BENCHMARKS.md, driver memory at 10,000 trials).
    out = df[list(TRIAL_COLUMNS) + phase + metrics].copy(deep=False)
    del df
    if phase:
        out[PHASE_COLUMN] = out[PHASE_COLUMN].fillna("search").astype(str)
    out["examples"] = out["examples"].fillna(out["step"] * out["batch_size"])
    types = {"trial": str, "batch_size": int, "lr": float, "strategy": str, "seed": int}
    out = out.astype({**types, "step": int, "examples": int, "status": str})
    for m in metrics:
        out[m] = pd.to_numeric(out[m], errors="coerce").astype(float)
    out = out.sort_values(["batch_size", "trial", "step"], kind="stable")
    return out.reset_index(drop=True)
