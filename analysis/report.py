"""One self-contained HTML report of a sweep, plus summary.csv and summary.json.

`write_report(df, out_dir, target=...)` runs the whole analysis on the tidy frame
(`analysis.frame`): steps to target per trial, steps-to-result per batch size, the McCandlish
fit with a bootstrap interval and the overhead CBS (per strategy; the headline is the primary
strategy, `tuned` when present), speedup and regimes, best LR vs batch size, and the figures
of `analysis.plots` embedded as base64 PNG, so the HTML file can be mailed or logged alone.
When the sweep logged the gradient noise scale (`log_noise_scale: true`), B_simple at the
target (`analysis.noise_scale`) is shown beside B_crit: headline, fit summary, tables, figure.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots
from analysis.fits import CriticalBatchSize
from analysis.frame import AnalysisError
from analysis.noise_scale import DEFINITION as BSIMPLE_DEFINITION
from analysis.noise_scale import bsimple_at_target
from analysis.speedup import LINEAR_THRESHOLD, STAGNATION_THRESHOLD
from analysis.steps import Target, best_per_seed
from analysis.summary import SweepSummary, summarize


@dataclass
class ReportResult:
    """What `write_report` produced; `summary` holds the numbers, `headline()` the CLI line."""

    out_dir: Path
    html: Path
    summary_csv: Path
    summary_json: Path
    figures: list[Path]
    summary: SweepSummary

    @property
    def files(self) -> list[Path]:
        return [self.html, self.summary_csv, self.summary_json, *self.figures]

    @property
    def strategy(self) -> str:
        return self.summary.strategy

    @property
    def target(self) -> Target:
        return self.summary.target

    @property
    def cbs(self) -> CriticalBatchSize:
        return self.summary.cbs

    @property
    def notes(self) -> list[str]:
        return self.summary.notes

    @property
    def b_simple(self) -> dict | None:
        return self.summary.bsimple.get(self.summary.strategy)

    def headline(self) -> str:
        return self.summary.headline()


def json_safe(x):
    """JSON-safe: numpy scalars to Python, NaN / inf to None."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="–", border=0)


def _bsimple_html(bsimple: dict[str, dict], fits: dict, logged: bool) -> str:
    """The gradient-noise-scale part of the fit summary: B_simple beside B_crit per strategy."""
    if not logged:
        return (
            "<p>Gradient noise scale B_simple: not logged (set <code>log_noise_scale: true</code> "
            "in the job file to show it beside B_crit).</p>"
        )
    rows = [
        {"strategy": name, "B_crit (fit)": fits[name].b_crit if name in fits else None,
         "B_simple at target (median)": b["median"], "min": b["min"], "max": b["max"],
         "batch sizes": b["n_batch_sizes"], "B_simple / B_crit": b["median_over_b_crit"]}
        for name, b in bsimple.items()
    ]  # fmt: skip
    table = _table(pd.DataFrame(rows)) if rows else "<p>No finite B_simple at the target.</p>"
    return f"<h3>Gradient noise scale</h3><p>{html.escape(BSIMPLE_DEFINITION)}</p>{table}"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em
auto;padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;
padding-bottom:.2em;margin-top:1.8em}.headline{background:#f3f6fb;border-left:4px solid #2a6fdb;
padding:.8em 1em;font-size:1.05em}table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{padding:.25em .6em;border-bottom:1px solid #eee;text-align:right}th{background:#fafafa}
figure{margin:1em 0}.verdict-ok{border-left:4px solid #2a9d4b;padding:.2em 1em}
.verdict-bad{border-left:4px solid #c0392b;padding:.2em 1em}img{width:100%;max-width:900px}figcaption{font-size:.85em;color:#555}.note{color:#a33}"""


def write_report(
    df: pd.DataFrame,
    out_dir: str | Path,
    target: Target | None = None,
    *,
    ema: float | None = None,
    paper_metric: str = "train_loss",
    overhead: float = 0.2,
    reference_batch_size: float | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    lr_range: tuple[float, float] | None = None,
    final_metric: str = "eval_accuracy",
    strategy: str | None = None,
    title: str = "critbatch report",
    figures: bool = True,
    recommendation: str | None = None,
    extra_html: str = "",
) -> ReportResult:
    """Analyse `df` (:func:`analysis.summary.summarize`, same arguments) and write report.html,
    summary.csv, summary.json and figures to out_dir. figures=False skips the plots."""
    summary = summarize(
        df, target, ema=ema, paper_metric=paper_metric, overhead=overhead,
        reference_batch_size=reference_batch_size, n_boot=n_boot, level=level, seed=seed,
        lr_range=lr_range, strategy=strategy,
    )  # fmt: skip
    return render_report(summary, df, out_dir, final_metric=final_metric, title=title,
                         figures=figures, n_boot=n_boot, seed=seed,
                         recommendation=recommendation, extra_html=extra_html)  # fmt: skip


def render_report(
    summary: SweepSummary,
    df: pd.DataFrame,
    out_dir: str | Path,
    *,
    final_metric: str = "eval_accuracy",
    title: str = "critbatch report",
    figures: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    recommendation: str | None = None,
    extra_html: str = "",
) -> ReportResult:
    """The HTML report, summary.csv and summary.json of a computed summary (no numbers are
    computed here beyond what the figures draw). recommendation: the answer shown above the
    verdict (``analysis.recommend``); extra_html: a section placed after the figures
    (``analysis.compare.time_and_cost_html``)."""
    out = Path(out_dir)
    fig_dir = out / "figures"
    out.mkdir(parents=True, exist_ok=True)
    target, primary, cbs, ema = summary.target, summary.strategy, summary.cbs, summary.ema
    level, lr, fits = summary.level, summary.lr, summary.fits
    table = summary.table
    notes = summary.notes
    made: list[tuple[Path, str]] = []

    def figure(caption: str, make) -> None:
        if not figures:
            return
        try:
            paths = make()
            made.extend((p, caption) for p in paths)
        except AnalysisError as e:
            notes.append(f"figure skipped ({caption}): {e}")

    best = table  # the estimate per batch size
    shown = table.dropna(subset=["trial"])  # the search's fastest trial: the curves drawn
    est = summary.estimates[primary]
    figure(
        f"Steps to {target.describe()} per batch size ({primary}): {est.method}; fit, "
        f"{level:.0%} bootstrap band, regimes, B_crit and CBS",
        lambda: plots.steps_fit(
            best_per_seed(summary.per_trial[summary.per_trial["strategy"] == primary]),
            best[best["strategy"] == primary], cbs, fig_dir, target.describe(),
        ),
    )  # fmt: skip
    speed = table.dropna(subset=["speedup"]) if "speedup" in table else table.iloc[:0]
    figure("Speedup over the smallest batch size per strategy; dashed: ideal linear speedup",
           lambda: plots.speedup(speed, fig_dir, cbs))  # fmt: skip
    figure(f"{target.metric} over (batch size, steps) at the best LR (seed paper Fig. 1/5)",
           lambda: plots.loss_contours(df, fig_dir, target.metric, shown))  # fmt: skip
    figure(f"{target.metric} curves at the best LR per batch size ({primary})",
           lambda: plots.loss_curves(df, fig_dir, target.metric, shown, target.value, primary))  # fmt: skip
    if lr is not None:
        figure(f"Best LR vs batch size: power law, saturating and surge (Li et al. 2024) fits, LSR and "
               f"SRSR references; {lr.verdict()}",
               lambda: plots.best_lr(lr, fig_dir))  # fmt: skip
    if summary.noise_logged:
        at_target = bsimple_at_target(df, shown)
        figure(f"Gradient noise scale B_simple along the best trial of each batch size ({primary}); "
               "dots: B_simple at the target; horizontal: the fitted B_crit",
               lambda: plots.noise_scale(df, at_target, cbs, fig_dir, target.metric, target.value,
                                         target.direction, primary))  # fmt: skip
    final_table = None
    if final_metric in df.columns:

        def _final():
            nonlocal final_table
            paths, final_table = plots.final_metric(df, fig_dir, final_metric)
            return paths

        figure(f"Final {final_metric} per batch size and strategy (seed paper Table 2)", _final)

    summary_csv = out / "summary.csv"
    table.to_csv(summary_csv, index=False)
    assumptions = {
        "target": target.describe(),
        "threshold_rule": target.rule,
        "smoothing": f"bias-corrected EMA, beta = {ema} per eval point" if ema else "none",
        "crossing": "first crossing, linearly interpolated between eval points",
        "steps_to_result": est.method,
        "fit_form": "log S = log(S_min + E_min / B) by least squares; B_crit = E_min / S_min",
        "interval": f"{level:.0%} percentile bootstrap, {n_boot} replicates, seed {seed}: "
        f"{summary.ci_method}",
        "cbs": cbs.to_dict()["cbs_definition"],
        "regimes": f"local efficiency B_crit/(B+B_crit) >= {LINEAR_THRESHOLD} linear, "
        f"<= {STAGNATION_THRESHOLD} stagnation, diminishing returns between",
    }
    if summary.noise_logged:
        assumptions["gradient_noise_scale"] = BSIMPLE_DEFINITION
    result = ReportResult(out, out / "report.html", summary_csv, out / "summary.json",
                          [p for p, _ in made], summary)  # fmt: skip
    payload = {"recommendation": recommendation} | cbs.to_dict() | summary.to_dict() | {
        "target": {"metric": target.metric, "value": target.value,
                   "direction": target.direction, "rule": target.rule, "ema": ema},
        "assumptions": assumptions,
        "cbs": cbs.to_dict(),
        "best_lr_fit": None
        if lr is None
        else {
            "alpha": lr.power_law.alpha,
            "coef": lr.power_law.coef,
            "r2": lr.power_law.r2,
            "eta_max": lr.saturating.eta_max if lr.saturating else None,
            "b_noise": lr.saturating.b_noise if lr.saturating else None,
            "surge_eta_max": lr.surge.eta_max if lr.surge else None,
            "surge_b_noise": lr.surge.b_noise if lr.surge else None,
            "surge_peak_inside": lr.surge.peak_inside if lr.surge else None,
            "rms_log_residual": lr.rms,
            "best_form": lr.best_form,
            "lr_range": list(lr.lr_range) if lr.lr_range else None,
        },
    }  # fmt: skip
    result.summary_json.write_text(json.dumps(json_safe(payload), indent=2))

    fit_rows = []
    for name, c in fits.items():
        d = c.to_dict()
        for key, label in (("b_crit", "B_crit (examples/step)"), ("cbs", "CBS (examples/step)"),
                           ("s_min", "S_min (steps)"), ("e_min", "E_min (examples)")):  # fmt: skip
            lo, hi = d[f"{key}_ci"] or (None, None)
            fit_rows.append({"strategy": name, "parameter": label, "estimate": d[key],
                             "CI low": lo, "CI high": hi})  # fmt: skip
    verdict = summary.verdict
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        *(
            [f"<p class='headline'><b>{html.escape(recommendation)}</b></p>"]
            if recommendation
            else []
        ),
        _verdict_html(verdict),
        f"<p class='headline'>{html.escape(result.headline())}</p>",
        "<h2>Assumptions</h2><ul>",
        *[
            f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>"
            for k, v in assumptions.items()
        ],
        "</ul><h2>Fit summary</h2>",
        f"<p>Confidence intervals: {html.escape(summary.ci_method)}.</p>",
        _table(pd.DataFrame(fit_rows)),
        _bsimple_html(summary.bsimple, fits, summary.noise_logged),
        "<h2>Figures</h2>",
        *[_img(p, cap) for p, cap in made if p.suffix == ".png"],
        extra_html,
        "<h2>Per batch size</h2>",
        _table(table.drop(columns=["trial"], errors="ignore")),
    ]
    if final_table is not None:
        parts += [f"<h2>Final {html.escape(final_metric)}</h2>", _table(final_table)]
    if notes:
        parts += ["<h2>Notes</h2><ul>"] + [f"<li class='note'>{html.escape(n)}</li>" for n in notes]
        parts.append("</ul>")
    parts.append("</body></html>")
    result.html.write_text("\n".join(parts), encoding="utf-8")
    return result


def _verdict_html(verdict) -> str:
    if verdict is None:
        return ""
    cls = "verdict-ok" if verdict.determined else "verdict-bad"
    head = (
        "B_crit is determined by the data"
        if verdict.determined
        else ("B_crit is NOT determined by the data")
    )
    checks = "".join(
        f"<li>{'ok' if c.ok else '<b>fails</b>'}: {html.escape(c.name)}: {html.escape(c.detail)}</li>"
        for c in verdict.checks
    )
    advice = "".join(f"<li><b>{html.escape(a)}</b></li>" for a in verdict.advice)
    return (
        f"<div class='{cls}'><h2>Verdict: {head}</h2><ul>{checks}</ul>"
        + (f"<p>What to do:</p><ul>{advice}</ul>" if advice else "")
        + "</div>"
    )
