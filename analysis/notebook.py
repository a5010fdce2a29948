"""``analyze``: a sweep's analysis from Python, as `critbatch analyze` does it.

::

    from analysis import analyze
    res = analyze("own-model-spirals", tracking_uri="sqlite:///mlflow.db")
    res.table     # pandas: per (strategy, batch size): best LR, steps to target, speedup, ...
    res.fit       # the CriticalBatchSize: B_crit with its CI, CBS, the McCandlish fit
    res.lr_fit    # best LR vs B: every form's parameters, RMS residual and the best form
    res.report.html

``source`` is what `critbatch analyze` takes (an MLflow experiment name, a parent run id, a
run folder) or an already loaded frame (analysis.frame). ``target`` is a
:class:`trainables.api.Target`, a mapping ``{metric, value, direction}``, or None: the sweep's
own target when the source records one, else the seed paper's threshold rule on train_loss.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.report import ReportResult, write_report
from analysis.steps import paper_threshold
from trainables.api import Target


@dataclass
class AnalysisOutcome:
    table: pd.DataFrame  # summary.csv of the report: one row per (strategy, batch_size)
    fit: Any  # analysis.fits.CriticalBatchSize of the headline strategy
    lr_fit: dict[str, Any] | None  # summary.json's best_lr_fit (None: under 3 best LRs)
    report: ReportResult  # paths of report.html, figures, summary files; headline()


def _target(df: pd.DataFrame, target: Target | dict[str, Any] | None) -> Target:
    if isinstance(target, Target):
        return target
    if isinstance(target, dict):
        return Target(str(target["metric"]), float(target["value"]), target.get("direction", "min"))
    if "target" in df.attrs:
        t = df.attrs["target"]
        return Target(t["metric"], float(t["value"]), t.get("direction", "min"), "sweep target")
    return paper_threshold(df, "train_loss")


def analyze(
    source: str | Path | pd.DataFrame,
    *,
    tracking_uri: str | None = None,
    target: Target | dict[str, Any] | None = None,
    out: str | Path | None = None,
    n_boot: int = 1000,
    **report_args: Any,
) -> AnalysisOutcome:
    """Load ``source``, write the report (to ``out``, default critbatch_reports/<source>) and
    return its table and fits. ``report_args`` go to :func:`analysis.report.write_report`
    (overhead, reference_batch_size, ema, lr_range, strategy, figures, ...)."""
    if isinstance(source, pd.DataFrame):
        df, name = source, "frame"
    else:
        from analysis import loaders

        df, name = loaders.load(str(source), tracking_uri), Path(str(source)).name
    out = (
        Path(out)
        if out
        else Path("critbatch_reports") / (re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "sweep")
    )
    result = write_report(df, out, _target(df, target), n_boot=n_boot, **report_args)
    payload = json.loads(result.summary_json.read_text())
    return AnalysisOutcome(
        pd.read_csv(result.summary_csv), result.cbs, payload.get("best_lr_fit"), result
    )
