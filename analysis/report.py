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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots
from analysis.fits import CriticalBatchSize, critical_batch_size
from analysis.frame import AnalysisError, validate_frame
from analysis.lr_fit import LrFit, fit_best_lr
from analysis.noise_scale import DEFINITION as BSIMPLE_DEFINITION
from analysis.noise_scale import bsimple_at_target, bsimple_summary, has_noise_scale
from analysis.speedup import LINEAR_THRESHOLD, STAGNATION_THRESHOLD, speedup_table
from analysis.steps import (
    Target,
    best_per_batch_size,
    best_per_seed,
    paper_threshold,
    steps_to_target,
)


@dataclass
class ReportResult:
    """What `write_report` produced; `headline()` is the line the CLI prints."""

    out_dir: Path
    html: Path
    summary_csv: Path
    summary_json: Path
    figures: list[Path]
    strategy: str
    target: Target
    cbs: CriticalBatchSize
    notes: list[str] = field(default_factory=list)
    b_simple: dict | None = None  # `bsimple_summary` of the strategy; None: not logged

    @property
    def files(self) -> list[Path]:
        return [self.html, self.summary_csv, self.summary_json, *self.figures]

    def headline(self) -> str:
        c = self.cbs
        lo, hi = c.b_crit_ci
        ci = f" ({c.level:.0%} CI {lo:.3g}-{hi:.3g})" if math.isfinite(lo) else ""
        flag = "" if c.fit.identified else " [outside the measured range: a bound only]"
        return (
            f"[{self.strategy}] target {self.target.describe()}: B_crit = {c.b_crit:.3g}{ci}{flag}; "
            f"CBS = {c.cbs:.3g} (batch size where steps exceed linear scaling from "
            f"B_ref = {c.reference_batch_size:g} by {c.overhead:.0%}); "
            f"S_min = {c.fit.s_min:.3g} steps, E_min = {c.fit.e_min:.3g} examples"
            + (f"; {_bsimple_text(self.b_simple)}" if self.b_simple else "")
        )


def _bsimple_text(b: dict) -> str:
    return (
        f"B_simple at target = {b['median']:.3g} (median of {b['n_batch_sizes']} batch sizes, "
        f"range {b['min']:.3g}-{b['max']:.3g}; a predictor of B_crit, not an estimate of it)"
    )


def _primary(strategies, strategy: str | None) -> str:
    names = sorted(set(strategies))
    if strategy is not None:
        if strategy not in names:
            raise AnalysisError(f"strategy {strategy!r} not in the sweep; it has {names}")
        return strategy
    return "tuned" if "tuned" in names else names[0]


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
figure{margin:1em 0}img{width:100%;max-width:900px}figcaption{font-size:.85em;color:#555}.note{color:#a33}"""


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
    """Analyse `df` and write report.html, summary.csv, summary.json and figures to out_dir.

    target: a fixed goal; None = the seed paper's rule on `paper_metric` (lower quartile of
    the largest batch size's best curve). ema: EMA beta per eval point applied to the metric
    before thresholding. lr_range: the LR search range, to flag best LRs at its edge.
    figures=False skips the plots (tables and fits only; much faster).
    recommendation: the answer shown above the headline (``analysis.recommend``); extra_html:
    a section placed after the figures (``analysis.compare.time_and_cost_html``).
    Raises AnalysisError when the primary strategy has fewer than 3 batch sizes that reach
    the target.
    """
    out = Path(out_dir)
    fig_dir = out / "figures"
    out.mkdir(parents=True, exist_ok=True)
    validate_frame(df, [target.metric] if target else [paper_metric])
    if target is None:
        target = paper_threshold(df, paper_metric, ema=ema)
    per_trial = steps_to_target(df, target, ema)
    best = best_per_batch_size(per_trial, direction=target.direction)
    primary = _primary(per_trial["strategy"], strategy)
    notes: list[str] = []

    fits: dict[str, CriticalBatchSize] = {}
    for name, trials in per_trial.groupby("strategy"):
        try:
            fits[name] = critical_batch_size(
                trials, overhead, reference_batch_size, n_boot, level, seed
            )
        except AnalysisError as e:
            if name == primary:
                raise AnalysisError(f"strategy {name!r}: {e}") from e
            notes.append(f"no fit for strategy {name!r}: {e}")
    cbs = fits[primary]
    speed = pd.concat(
        [
            speedup_table(g, b_crit=fits[name].b_crit if name in fits else None)
            for name, g in best.groupby("strategy")
            if g["steps"].notna().any()
        ],
        ignore_index=True,
    )
    summary = best.merge(
        speed[
            [c for c in speed.columns if c not in best.columns or c in ("strategy", "batch_size")]
        ],
        on=["strategy", "batch_size"],
        how="left",
    )
    lr: LrFit | None = None
    try:
        lr = fit_best_lr(best[best["strategy"] == primary], lr_range)
        summary = summary.merge(
            lr.table[["batch_size", "at_edge"]]
            .assign(strategy=primary)
            .rename(columns={"at_edge": "lr_at_search_edge"}),
            on=["strategy", "batch_size"],
            how="left",
        )
        notes.append(lr.verdict())
    except AnalysisError as e:
        notes.append(f"no best-LR fit: {e}")
    logged = has_noise_scale(df)
    bsimple: dict[str, dict] = {}
    if logged:
        at_target = bsimple_at_target(df, best)
        summary = summary.merge(
            at_target[["strategy", "batch_size", "b_simple"]],
            on=["strategy", "batch_size"],
            how="left",
        )
        for name, g in at_target.groupby("strategy"):
            got = bsimple_summary(g, fits[name].b_crit if name in fits else None)
            if got is not None:
                bsimple[name] = got
        if primary not in bsimple:
            notes.append(
                "B_simple was logged but no batch size of the primary strategy has a finite value "
                "at the step it reached the target"
            )

    made: list[tuple[Path, str]] = []

    def figure(caption: str, make) -> None:
        if not figures:
            return
        try:
            paths = make()
            made.extend((p, caption) for p in paths)
        except AnalysisError as e:
            notes.append(f"figure skipped ({caption}): {e}")

    final_table = None
    figure(
        f"Steps to {target.describe()} per batch size ({primary}): fit, {level:.0%} bootstrap "
        "band, regimes, B_crit and CBS",
        lambda: plots.steps_fit(
            best_per_seed(per_trial[per_trial["strategy"] == primary]),
            best[best["strategy"] == primary], cbs, fig_dir, target.describe(),
        ),
    )  # fmt: skip
    figure("Speedup over the smallest batch size per strategy; dashed: ideal linear speedup",
           lambda: plots.speedup(speed, fig_dir, cbs))  # fmt: skip
    figure(f"{target.metric} over (batch size, steps) at the best LR (seed paper Fig. 1/5)",
           lambda: plots.loss_contours(df, fig_dir, target.metric, best))  # fmt: skip
    figure(f"{target.metric} curves at the best LR per batch size ({primary})",
           lambda: plots.loss_curves(df, fig_dir, target.metric, best, target.value, primary))  # fmt: skip
    if lr is not None:
        figure(f"Best LR vs batch size: power law, saturating and surge (Li et al. 2024) fits, LSR and "
               f"SRSR references; {lr.verdict()}",
               lambda: plots.best_lr(lr, fig_dir))  # fmt: skip
    if logged:
        figure(f"Gradient noise scale B_simple along the best trial of each batch size ({primary}); "
               "dots: B_simple at the target; horizontal: the fitted B_crit",
               lambda: plots.noise_scale(df, at_target, cbs, fig_dir, target.metric, target.value,
                                         target.direction, primary))  # fmt: skip
    if final_metric in df.columns:

        def _final():
            nonlocal final_table
            paths, final_table = plots.final_metric(df, fig_dir, final_metric)
            return paths

        figure(f"Final {final_metric} per batch size and strategy (seed paper Table 2)", _final)

    summary_csv = out / "summary.csv"
    summary.to_csv(summary_csv, index=False)
    assumptions = {
        "target": target.describe(),
        "threshold_rule": target.rule,
        "smoothing": f"bias-corrected EMA, beta = {ema} per eval point" if ema else "none",
        "crossing": "first crossing, linearly interpolated between eval points",
        "steps_to_result": "minimum over the trials of each (batch size, seed) LR study",
        "fit_form": "log S = log(S_min + E_min / B) by least squares; B_crit = E_min / S_min",
        "interval": f"{level:.0%} percentile bootstrap, {n_boot} replicates, seed {seed}",
        "cbs": cbs.to_dict()["cbs_definition"],
        "regimes": f"local efficiency B_crit/(B+B_crit) >= {LINEAR_THRESHOLD} linear, "
        f"<= {STAGNATION_THRESHOLD} stagnation, diminishing returns between",
    }
    if logged:
        assumptions["gradient_noise_scale"] = BSIMPLE_DEFINITION
    result = ReportResult(out, out / "report.html", summary_csv, out / "summary.json",
                          [p for p, _ in made], primary, target, cbs, notes,
                          bsimple.get(primary))  # fmt: skip
    payload = {
        "headline": result.headline(),
        "recommendation": recommendation,
        "strategy": primary,
        "target": {
            "metric": target.metric,
            "value": target.value,
            "direction": target.direction,
            "rule": target.rule,
            "ema": ema,
        },  # fmt: skip
        **cbs.to_dict(),
        "assumptions": assumptions,
        "fits_per_strategy": {k: v.to_dict() for k, v in fits.items()},
        "b_simple": bsimple.get(primary),  # None: not logged (job field log_noise_scale)
        "b_simple_per_strategy": bsimple,
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
            "lr_range": list(lr_range) if lr_range else None,
        },  # fmt: skip
        "per_batch_size": summary.to_dict(orient="records"),
        "notes": notes,
    }
    result.summary_json.write_text(json.dumps(json_safe(payload), indent=2))

    fit_rows = []
    for name, c in fits.items():
        d = c.to_dict()
        for key, label in (("b_crit", "B_crit (examples/step)"), ("cbs", "CBS (examples/step)"),
                           ("s_min", "S_min (steps)"), ("e_min", "E_min (examples)")):  # fmt: skip
            lo, hi = d[f"{key}_ci"] or (None, None)
            fit_rows.append({"strategy": name, "parameter": label, "estimate": d[key],
                             "CI low": lo, "CI high": hi})  # fmt: skip
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        *(
            [f"<p class='headline'><b>{html.escape(recommendation)}</b></p>"]
            if recommendation
            else []
        ),
        f"<p class='headline'>{html.escape(result.headline())}</p>",
        "<h2>Assumptions</h2><ul>",
        *[
            f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>"
            for k, v in assumptions.items()
        ],
        "</ul><h2>Fit summary</h2>",
        f"<p>Confidence intervals: {html.escape(cbs.boot.method if cbs.boot else 'none')}.</p>",
        _table(pd.DataFrame(fit_rows)),
        _bsimple_html(bsimple, fits, logged),
        "<h2>Figures</h2>",
        *[_img(p, cap) for p, cap in made if p.suffix == ".png"],
        extra_html,
        "<h2>Per batch size</h2>",
        _table(summary.drop(columns=["trial"], errors="ignore")),
    ]
    if final_table is not None:
        parts += [f"<h2>Final {html.escape(final_metric)}</h2>", _table(final_table)]
    if notes:
        parts += ["<h2>Notes</h2><ul>"] + [f"<li class='note'>{html.escape(n)}</li>" for n in notes]
        parts.append("</ul>")
    parts.append("</body></html>")
    result.html.write_text("\n".join(parts), encoding="utf-8")
    return result
