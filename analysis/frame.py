"""The tidy DataFrame every analysis function takes: one row per (trial, step).

This is the only place the columns are documented; `analysis.loaders` produces the frame
from MLflow, a Ray Tune run folder or a CSV.

==================  =======  ==============================================================
column              dtype    meaning
==================  =======  ==============================================================
``trial``           str      trial id (the Tune trial id; unique across the sweep)
``batch_size``      int      examples per optimizer step (global batch)
``lr``              float    peak learning rate of the trial (after any scaling rule)
``strategy``        str      ``tuned`` (per-batch-size LR search), ``blr``, ``lsr`` or ``srsr``
``seed``            int      training seed; one LR study per (batch size, seed)
``step``            int      optimizer steps taken when the row was reported
``examples``        int      examples processed so far (= step * batch_size)
``status``          str      FINAL status of the trial, repeated on every row:
                             ``reached|not_reached|diverged|stopped_early|errored|withdrawn``
``phase``           str      optional: ``search`` (a trial of the LR search) or ``confirm``
                             (a confirmation run of the chosen LR with a fresh seed; B_crit
                             is estimated from these, see `analysis.estimate`). Absent or
                             NaN: ``search``
metric columns      float    one column per metric, NaN where not reported at that step:
                             ``train_loss``, ``train_loss_ema``, ``eval_loss``,
                             ``eval_accuracy``, ... (losses in nats per example)
==================  =======  ==============================================================

A CSV of ``batch_size,steps`` measured elsewhere is a *steps table*, not this frame; it goes
straight to `analysis.fits` (see ``critbatch fit``).
"""

from __future__ import annotations

import pandas as pd

from trainables.api import InputError

REQUIRED_COLUMNS: tuple[str, ...] = (
    "trial",
    "batch_size",
    "lr",
    "strategy",
    "seed",
    "step",
    "examples",
    "status",
)

PHASE_COLUMN = "phase"  # optional trial column (not a metric): search or confirm
NON_METRIC_COLUMNS = (*REQUIRED_COLUMNS, PHASE_COLUMN)


class AnalysisError(InputError):
    """The data cannot answer the question asked (missing columns, too few batch sizes, ...).

    The message names the problem and what to change; the CLI turns it into exit code 2.
    """


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a tidy frame (every column that is not a required one)."""
    return [c for c in df.columns if c not in NON_METRIC_COLUMNS]


def validate_frame(df: pd.DataFrame, metrics: tuple[str, ...] | list[str] = ()) -> pd.DataFrame:
    """Check `df` has the tidy columns (and the `metrics` asked for); return it unchanged.

    Raises AnalysisError naming every missing column, so a loader bug or a wrong metric name
    is reported once, at the start, rather than as a KeyError deep inside a fit.
    """
    if not isinstance(df, pd.DataFrame):
        raise AnalysisError(f"expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise AnalysisError(
            f"the frame lacks the required column(s) {missing}; a tidy frame has "
            f"{list(REQUIRED_COLUMNS)} plus one column per metric (see analysis/frame.py)"
        )
    absent = [m for m in metrics if m not in df.columns]
    if absent:
        raise AnalysisError(
            f"the frame has no metric column(s) {absent}; metrics present: "
            f"{metric_columns(df)}; pick one of those as the target metric"
        )
    if df.empty:
        raise AnalysisError("the frame has no rows: the source holds no reported steps")
    return df
