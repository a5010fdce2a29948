"""Sweeps side by side: the numbers of one sweep, and the comparison of several.

``sweep_numbers(df, target)`` is what one sweep contributes, from its tidy frame: B_crit
with its interval, CBS, S_min, E_min, B_simple when logged, the trials and device-hours it
took, time and cost to target per batch size (``analysis.cost``) and the recommendation
(``analysis.recommend``). ``parent_run_metrics`` turns it into the metrics of the sweep's
MLflow parent run, so sweeps compare in the MLflow runs table; ``compare_sweeps`` writes one
table, the shared-axes figures and one self-contained HTML page.

Sweeps compare only at one target: different targets are an error unless the caller says
``allow_different_targets``, and then every row states its own.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.cost import CostModel, CostTable, sweep_device_hours, time_and_cost
from analysis.fits import CriticalBatchSize
from analysis.frame import AnalysisError, validate_frame
from analysis.noise_scale import bsimple_at_target, bsimple_summary, has_noise_scale
from analysis.recommend import (
    DEFAULT_MAX_EXTRA_COST,
    DEFAULT_MAX_SLOWDOWN,
    Recommendation,
    check_thresholds,
    recommend,
)
from analysis.steps import best_per_batch_size, steps_to_target
from analysis.summary import summarize
from trainables.api import Target


@dataclass
class SweepNumbers:
    """One sweep's result at one target, for one strategy (``tuned`` when present)."""

    label: str
    target: Target
    strategy: str
    best: pd.DataFrame  # best_per_batch_size of the strategy
    fit: CriticalBatchSize | None  # None: fewer than 3 batch sizes reached the target
    cost: CostTable
    recommendation: Recommendation | None
    trials: int
    device_hours: float
    b_simple: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.fit is None:
            return "no fit: fewer than 3 batch sizes reached the target"
        if not self.fit.fit.identified:
            return "B_crit is a bound only: the measured batch sizes show no bend"
        lo, hi = self.fit.b_crit_ci
        b = self.best["batch_size"]
        if math.isfinite(hi) and (hi > b.max() or lo < b.min()):
            return "B_crit measured, but its interval reaches beyond the batch sizes measured"
        return "B_crit measured: the batch sizes cover the linear regime and the plateau"

    def headline(self) -> str:
        if self.fit is None:
            return f"[{self.label}] target {self.target.describe()}: {self.verdict}"
        c = self.fit
        lo, hi = c.b_crit_ci
        ci = f" ({c.level:.0%} CI {lo:.3g}-{hi:.3g})" if math.isfinite(lo) else ""
        return (
            f"[{self.label}] target {self.target.describe()}: B_crit = {c.b_crit:.3g}{ci}; "
            f"CBS = {c.cbs:.3g}; S_min = {c.fit.s_min:.3g} steps, E_min = {c.fit.e_min:.3g} "
            "examples"
        )

    def description(self) -> str:
        """The parent run's description (markdown): recommendation, verdict, headline."""
        rec = self.recommendation.text() if self.recommendation else "No recommendation."
        notes = "".join(f"\n- {n}" for n in self.cost.notes + self.notes)
        return f"**{rec}**\n\n{self.verdict}.\n\n{self.headline()}\n{notes}".rstrip() + "\n"


def sweep_numbers(
    df: pd.DataFrame,
    target: Target,
    *,
    label: str = "sweep",
    strategy: str | None = None,
    ema: float | None = None,
    overhead: float = 0.2,
    reference_batch_size: float | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    cost_model: CostModel | None = None,
    max_slowdown: float = DEFAULT_MAX_SLOWDOWN,
    max_extra_cost: float = DEFAULT_MAX_EXTRA_COST,
) -> SweepNumbers:
    """Everything one sweep contributes to a comparison, from its tidy frame."""
    check_thresholds(max_slowdown, max_extra_cost)
    validate_frame(df, [target.metric])
    per_trial = steps_to_target(df, target, ema)
    names = sorted(per_trial["strategy"].unique())
    if strategy is not None and strategy not in names:
        raise AnalysisError(f"strategy {strategy!r} not in sweep {label!r}; it has {names}")
    strategy = strategy or ("tuned" if "tuned" in names else names[0])
    mine = per_trial[per_trial["strategy"] == strategy]
    best = best_per_batch_size(mine, direction=target.direction)
    notes: list[str] = []
    fit = None
    try:  # the one result of the sweep (analysis.summary): the numbers `run`/`analyze` print
        summary = summarize(df, target, ema=ema, overhead=overhead,
                            reference_batch_size=reference_batch_size, n_boot=n_boot,
                            level=level, seed=seed, strategy=strategy)  # fmt: skip
        fit = summary.fits.get(strategy)
        if fit is None:
            notes.append(f"no fit for strategy {strategy!r}")
    except AnalysisError as e:
        notes.append(f"no fit: {e}")
    cost = time_and_cost(best, df[df["strategy"] == strategy], cost_model)
    rec = None
    try:
        rec = recommend(cost.table, max_slowdown, max_extra_cost, cost.device_kind)
    except AnalysisError as e:
        notes.append(f"no recommendation: {e}")
    b_simple = None
    if has_noise_scale(df):
        got = bsimple_summary(bsimple_at_target(df, best), fit.b_crit if fit else None)
        b_simple = got["median"] if got else None
    trials = int(df.loc[df["strategy"] == strategy, "trial"].nunique())
    return SweepNumbers(label, target, strategy, best, fit, cost, rec, trials,
                        sweep_device_hours(df[df["strategy"] == strategy]), b_simple, notes)  # fmt: skip


def parent_run_metrics(n: SweepNumbers) -> dict[str, float]:
    """The sweep's MLflow parent-run metrics; a number that does not exist is left out."""
    out: dict[str, float] = {"trials": float(n.trials), "device_hours": n.device_hours}
    if n.fit is not None:
        d = n.fit.to_dict()
        out.update(b_crit=d["b_crit"], b_crit_ci_low=d["b_crit_ci"][0],
                   b_crit_ci_high=d["b_crit_ci"][1], s_min=d["s_min"], e_min=d["e_min"],
                   cbs=d["cbs"])  # fmt: skip
    if n.b_simple is not None:
        out["b_simple"] = n.b_simple
    if n.recommendation is not None:
        r = n.recommendation
        out.update(recommended_batch_size=float(r.recommended.batch_size),
                   recommended_time_to_target_h=r.recommended.time_h,
                   recommended_device_hours=r.recommended.device_hours)  # fmt: skip
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


# ---------------------------------------------------------------- several sweeps
def check_targets(sweeps: list[SweepNumbers], allow_different: bool) -> list[str]:
    """The targets of ``sweeps``, described; an error when they differ, unless allowed."""
    described = [s.target.describe() for s in sweeps]
    if len(set(described)) > 1 and not allow_different:
        each = "; ".join(f"{s.label}: {d}" for s, d in zip(sweeps, described, strict=True))
        raise AnalysisError(
            f"the sweeps have different targets ({each}). Steps to different targets do not "
            "compare: pass --target-metric/--target-value/--direction to measure every sweep "
            "at one target, or --allow-different-targets to put them side by side anyway "
            "(each row then states its target)"
        )
    return described


def comparison_table(sweeps: list[SweepNumbers]) -> pd.DataFrame:
    """One row per sweep: target, B_crit with CI, CBS, S_min, E_min, and the recommended and
    fastest batch sizes with their time and device-hours to target (and cost when priced)."""
    rows = []
    for s in sweeps:
        row: dict = {"sweep": s.label, "strategy": s.strategy, "target": s.target.describe()}
        d = s.fit.to_dict() if s.fit else {}
        row.update({
            "B_crit": d.get("b_crit"), "B_crit CI low": (d.get("b_crit_ci") or [None])[0],
            "B_crit CI high": (d.get("b_crit_ci") or [None, None])[1], "CBS": d.get("cbs"),
            "S_min (steps)": d.get("s_min"), "E_min (examples)": d.get("e_min"),
            "trials": s.trials, "sweep device-hours": s.device_hours,
        })  # fmt: skip
        r = s.recommendation
        if r is not None:
            row.update({
                "device": s.cost.device_kind,
                "recommended B": r.recommended.batch_size,
                "time to target at recommended (h)": r.recommended.time_h,
                "device-hours at recommended": r.recommended.device_hours,
                "fastest B": r.fastest.batch_size,
                "best time to target (h)": r.fastest.time_h,
                "device-hours at fastest": r.fastest.device_hours,
            })  # fmt: skip
            if r.recommended.cost is not None:
                row["cost at recommended"] = r.recommended.cost
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class Comparison:
    out_dir: Path
    html: Path
    table_csv: Path
    figures: list[Path]
    table: pd.DataFrame

    @property
    def files(self) -> list[Path]:
        return [self.html, self.table_csv, *self.figures]


def compare_sweeps(
    sweeps: list[SweepNumbers],
    out_dir: str | Path,
    *,
    allow_different_targets: bool = False,
    title: str | None = None,
) -> Comparison:
    """Write compare.html (self-contained), compare.csv and the figures into ``out_dir``."""
    from analysis import cost_plots
    from analysis.report import _CSS, _img, _table  # one look for every critbatch page

    if len(sweeps) < 2:
        raise AnalysisError(
            f"compare needs at least 2 sweeps, got {len(sweeps)}; name two or more (or an "
            "experiment that holds several)"
        )
    labels = [s.label for s in sweeps]
    if len(set(labels)) < len(labels):
        raise AnalysisError(f"two sweeps have the same label: {labels}; name each sweep once")
    targets = check_targets(sweeps, allow_different_targets)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(sweeps)
    table_csv = out / "compare.csv"
    table.to_csv(table_csv, index=False)
    fig_dir = out / "figures"
    one_target = targets[0] if len(set(targets)) == 1 else "each sweep's own target"
    made = [
        (cost_plots.steps_compare(sweeps, fig_dir, one_target),
         f"Steps to {one_target} versus batch size, every sweep on shared axes, each with its "
         "fit S_min (1 + B_crit / B); hollow markers: the best trial of a batch size"),
        (cost_plots.time_compare(sweeps, fig_dir),
         "Time to target versus batch size (steps x measured step time); star: the recommended B"),
        (cost_plots.pareto_compare(sweeps, fig_dir),
         "Time against device-hours to target per batch size; lines join each sweep's Pareto "
         "front (no other batch size is both faster and cheaper)"),
    ]  # fmt: skip
    title = title or "critbatch comparison: " + " vs ".join(labels)
    recs = [
        f"<li><b>{html.escape(s.label)}</b>: "
        f"{html.escape(s.recommendation.text() if s.recommendation else s.verdict)}</li>"
        for s in sweeps
    ]
    notes = sorted({f"{s.label}: {n}" for s in sweeps for n in s.cost.notes + s.notes})
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<div class='headline'><ul>{''.join(recs)}</ul></div>",
        f"<p>Target: {html.escape(one_target)}.</p>",
        _table(table),
        *[_img(paths[0], caption) for paths, caption in made],
        "<h2>Per batch size</h2>",
        _table(pd.concat([s.cost.table.assign(sweep=s.label) for s in sweeps])),
    ]
    if notes:
        parts += ["<h2>Notes</h2><ul>", *[f"<li>{html.escape(n)}</li>" for n in notes], "</ul>"]
    parts.append("</body></html>")
    page = out / "compare.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return Comparison(out, page, table_csv, [p for paths, _ in made for p in paths], table)


def format_comparison(table: pd.DataFrame) -> str:
    """The comparison table as plain text for the terminal."""
    shown = table.drop(columns=[c for c in table.columns if c.startswith("B_crit CI")])
    ci = [
        f"{lo:.3g}-{hi:.3g}" if lo is not None and np.isfinite(lo) else "-"
        for lo, hi in zip(table["B_crit CI low"], table["B_crit CI high"], strict=True)
    ]
    shown.insert(shown.columns.get_loc("B_crit") + 1, "B_crit CI", ci)
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3g}", na_rep="-")


def time_and_cost_html(n: SweepNumbers, fig_dir: str | Path) -> tuple[str, list[Path]]:
    """The report's "Time and cost" section of one sweep: its table, the time-to-target and
    Pareto figures, and the notes on where the step times come from."""
    from analysis import cost_plots
    from analysis.report import _img, _table

    paths = cost_plots.time_compare([n], fig_dir) + cost_plots.pareto_compare([n], fig_dir)
    figs = [p for p in paths if p.suffix == ".png"]
    notes = "".join(f"<li>{html.escape(x)}</li>" for x in n.cost.notes)
    part = (
        f"<h2>Time and cost to target ({html.escape(n.strategy)})</h2>"
        + _table(n.cost.table.drop(columns=["strategy"]))
        + _img(figs[0], "Time to target versus batch size; star: the recommended B")
        + _img(figs[1], "Time against device-hours to target; the line joins the Pareto front")
        + (f"<ul>{notes}</ul>" if notes else "")
    )
    return part, paths
