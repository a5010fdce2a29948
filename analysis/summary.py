"""A sweep's result, computed once from its tidy frame: :func:`summarize` -> :class:`SweepSummary`.

`critbatch run` (its closing summary), `critbatch analyze` and the HTML report all call
:func:`summarize` on the same frame and print from the object, so they give the same numbers:
steps to target per batch size (:mod:`analysis.estimate`), the McCandlish fit with its CI,
S_min, E_min, the overhead CBS, the regimes, the verdict and advice (:mod:`analysis.verdict`),
the best LR per batch size and, when logged, B_simple. Rendering lives elsewhere
(:meth:`SweepSummary.text` for the terminal, `analysis.report` for HTML); a new kind of result
is a new field plus an entry in :meth:`SweepSummary.sections`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.estimate import (
    FASTEST,
    MEAN_CURVE,
    StepsEstimate,
    estimation_runs,
    mean_curve_steps,
)
from analysis.fits import (
    CriticalBatchSize,
    critical_batch_size,
    critical_batch_size_from_steps,
    log_spread,
)
from analysis.frame import PHASE_COLUMN, AnalysisError, validate_frame
from analysis.lr_fit import LrFit, fit_best_lr
from analysis.noise_scale import bsimple_at_target, bsimple_summary, has_noise_scale
from analysis.speedup import speedup_table
from analysis.steps import Target, best_per_batch_size, paper_threshold, steps_to_target
from analysis.verdict import Verdict, judge


@dataclass
class SweepSummary:
    """Everything a sweep's analysis reports; ``strategy`` is the headline one."""

    target: Target
    strategy: str
    ema: float | None
    level: float
    per_trial: pd.DataFrame  # steps_to_target per trial (search and confirmation runs)
    table: pd.DataFrame  # per strategy and batch size: estimate, CI, search best LR, regimes
    estimates: dict[str, StepsEstimate]
    fits: dict[str, CriticalBatchSize]
    verdict: Verdict | None
    lr: LrFit | None = None
    bsimple: dict[str, dict] = field(default_factory=dict)
    noise_logged: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def cbs(self) -> CriticalBatchSize:
        return self.fits[self.strategy]

    @property
    def estimator(self) -> str:
        return self.estimates[self.strategy].method

    @property
    def ci_method(self) -> str:
        boot = self.cbs.boot
        return boot.method if boot is not None else "none"

    def headline(self) -> str:
        c = self.cbs
        lo, hi = c.b_crit_ci
        ci = f" ({c.level:.0%} CI {lo:.3g}-{hi:.3g})" if math.isfinite(lo) else ""
        flag = "" if c.fit.identified else " [outside the measured range: a bound only]"
        b = self.bsimple.get(self.strategy)
        return (
            f"[{self.strategy}] target {self.target.describe()}: B_crit = {c.b_crit:.3g}{ci}{flag}; "
            f"CBS = {c.cbs:.3g} (batch size where steps exceed linear scaling from "
            f"B_ref = {c.reference_batch_size:g} by {c.overhead:.0%}); "
            f"S_min = {c.fit.s_min:.3g} steps, E_min = {c.fit.e_min:.3g} examples"
            + (f"; {bsimple_text(b)}" if b else "")
        )

    def steps_table(self, strategy: str | None = None) -> pd.DataFrame:
        t = self.table[self.table["strategy"] == (strategy or self.strategy)]
        return t.drop(columns=["strategy"]).reset_index(drop=True)

    def sections(self) -> list[tuple[str, str]]:
        """(title, plain text) in reading order: what the terminal prints and the report heads
        with. Extend here."""
        t = self.steps_table()
        cols = [c for c in ("batch_size", "steps", "steps_lo", "steps_hi", "n_runs", "lr",
                            "n_trials", "n_reached", "regime") if c in t]  # fmt: skip
        return [
            ("Result", self.headline()),
            ("Verdict", self.verdict.text() if self.verdict else "Verdict: none (no fit)"),
            ("Estimator", f"steps to target: {self.estimator}; CI: {self.ci_method}"),
            (
                "Steps per batch size",
                t[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"),
            ),
        ]

    def text(self) -> str:
        return "\n\n".join(body for _, body in self.sections())

    def to_dict(self) -> dict:
        return {
            "headline": self.headline(),
            "strategy": self.strategy,
            "estimator": self.estimator,
            "ci_method": self.ci_method,
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "fits_per_strategy": {name: c.to_dict() for name, c in self.fits.items()},
            "b_simple": self.bsimple.get(self.strategy),  # None: not logged
            "b_simple_per_strategy": self.bsimple,
            "per_batch_size": self.table.to_dict(orient="records"),
            "notes": list(self.notes),
        }


def bsimple_text(b: dict) -> str:
    return (
        f"B_simple at target = {b['median']:.3g} (median of {b['n_batch_sizes']} batch sizes, "
        f"range {b['min']:.3g}-{b['max']:.3g}; a predictor of B_crit, not an estimate of it)"
    )


def primary_strategy(strategies, strategy: str | None) -> str:
    names = sorted(set(strategies))
    if strategy is not None:
        if strategy not in names:
            raise AnalysisError(f"strategy {strategy!r} not in the sweep; it has {names}")
        return strategy
    return "tuned" if "tuned" in names else names[0]


def _estimate(df, per_trial, best, strategy, target, ema, n_boot, seed) -> StepsEstimate:
    runs = estimation_runs(df, strategy)
    if runs is not None:
        return mean_curve_steps(runs[0], target, ema, n_boot, seed, runs[1])
    b = best[best["strategy"] == strategy][["batch_size", "steps"]].reset_index(drop=True)
    return StepsEstimate(strategy, FASTEST, b.assign(n_runs=1), None, "")


def _search_rows(df: pd.DataFrame) -> pd.DataFrame:
    if PHASE_COLUMN not in df:
        return df
    return df[df[PHASE_COLUMN] != "confirm"]


def _confirmed_lr(best: pd.DataFrame, estimates: dict[str, StepsEstimate]) -> pd.DataFrame:
    """Where confirmation runs were recorded, the LR of a batch size is the one whose runs gave
    its steps (the search's choice or the LR below it, :mod:`analysis.estimate`), not the
    fastest search trial by this analysis's reading of the curves: the table's LR and its
    steps then come from the same runs."""
    out = best.copy()
    if out.empty:
        return out
    for name, est in estimates.items():
        if est.method != MEAN_CURVE or "lr" not in est.table:
            continue
        for row in est.table.itertuples():
            at = (out["strategy"] == name) & (out["batch_size"] == row.batch_size)
            out.loc[at, "lr"] = float(row.lr)
            out.loc[at, "lr_basis"] = "chosen by the search, trained by the confirmation runs"
    return out


def summarize(
    df: pd.DataFrame,
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
    strategy: str | None = None,
) -> SweepSummary:
    """The sweep's result from its tidy frame (see the module docstring).

    target: a fixed goal; None = the seed paper's rule on `paper_metric`. ema: EMA beta per
    eval point applied to the metric before thresholding (default: the raw metric; the
    mean over confirmation seeds is what smooths). Raises AnalysisError when the primary
    strategy has fewer than 3 batch sizes that reach the target.
    """
    validate_frame(df, [target.metric] if target else [paper_metric])
    if target is None:
        target = paper_threshold(_search_rows(df), paper_metric, ema=ema)
    per_trial = steps_to_target(df, target, ema)
    phase = df.groupby("trial")[PHASE_COLUMN].first() if PHASE_COLUMN in df else None
    search = per_trial if phase is None else per_trial[per_trial["trial"].map(phase) != "confirm"]
    best = best_per_batch_size(search, direction=target.direction)
    primary = primary_strategy(per_trial["strategy"], strategy)
    notes: list[str] = []
    estimates: dict[str, StepsEstimate] = {}
    fits: dict[str, CriticalBatchSize] = {}
    for name in sorted(set(per_trial["strategy"])):
        est = estimates[name] = _estimate(df, per_trial, best, name, target, ema, n_boot, seed)
        try:
            if est.method == FASTEST:
                trials = search[search["strategy"] == name]
                fits[name] = critical_batch_size(
                    trials, overhead, reference_batch_size, n_boot, level, seed
                )
            else:
                fits[name] = critical_batch_size_from_steps(
                    est.table, est.replicates, est.ci_method, overhead, reference_batch_size,
                    n_boot, level, seed,
                )  # fmt: skip
        except AnalysisError as e:
            if name == primary:
                raise AnalysisError(f"strategy {name!r}: {e}") from e
            notes.append(f"no fit for strategy {name!r}: {e}")
    best = _confirmed_lr(best, estimates)
    if estimates[primary].method == FASTEST:
        notes.append(f"steps to target: {FASTEST}")
    missed = estimates[primary].table.query("steps != steps")["batch_size"].tolist()
    if missed and estimates[primary].method != FASTEST:
        notes.append(
            f"batch size(s) {missed}: the mean curve of the runs did not reach the target "
            "within their horizon, so they are left out of the fit; for confirmation runs "
            "this means the LR the search chose was lucky (its expected curve levels off near "
            "the target): widen the search there (more trials) or raise the step budget"
        )

    parts = []
    for name, est in estimates.items():
        t = est.table.drop(columns="lr", errors="ignore").assign(strategy=name)  # LR: `best`
        if est.replicates is not None:
            with warnings.catch_warnings():  # a batch size no replicate crossed: NaN, said
                warnings.simplefilter("ignore", RuntimeWarning)
                q = 50.0 * (1.0 - level)
                lo, hi = np.nanpercentile(est.replicates, [q, 100 - q], axis=0)
            off = t["steps"].isna().to_numpy()  # no estimate: no interval either
            t = t.assign(steps_lo=np.where(off, np.nan, lo), steps_hi=np.where(off, np.nan, hi))
        sel = best[best["strategy"] == name][
            ["batch_size", "lr", "trial", "lr_basis", "n_trials", "n_reached"]
        ]
        t = t.merge(sel, on="batch_size", how="left")
        if t["steps"].notna().any():
            sp = speedup_table(t, b_crit=fits[name].b_crit if name in fits else None)
            t = t.merge(sp[[c for c in sp.columns if c not in t.columns or c == "batch_size"]],
                        on="batch_size", how="left")  # fmt: skip
        parts.append(t)
    table = pd.concat(parts, ignore_index=True)
    first = ["strategy", "batch_size", "steps"]
    table = table[first + [c for c in table.columns if c not in first]]

    lr: LrFit | None = None
    try:
        lr = fit_best_lr(best[best["strategy"] == primary], lr_range)
        edge = lr.table[["batch_size", "at_edge"]].assign(strategy=primary)
        table = table.merge(edge.rename(columns={"at_edge": "lr_at_search_edge"}),
                            on=["strategy", "batch_size"], how="left")  # fmt: skip
        notes.append(lr.verdict())
    except AnalysisError as e:
        notes.append(f"no best-LR fit: {e}")
    logged = has_noise_scale(df)
    bsimple: dict[str, dict] = {}
    if logged:
        at_target = bsimple_at_target(df, best)
        table = table.merge(at_target[["strategy", "batch_size", "b_simple"]],
                            on=["strategy", "batch_size"], how="left")  # fmt: skip
        for name, g in at_target.groupby("strategy"):
            got = bsimple_summary(g, fits[name].b_crit if name in fits else None)
            if got is not None:
                bsimple[name] = got
        if primary not in bsimple:
            notes.append(
                "B_simple was logged but no batch size of the primary strategy has a finite value "
                "at the step it reached the target"
            )
    verdict = _verdict(fits[primary], estimates[primary], table[table["strategy"] == primary], df)
    return SweepSummary(target, primary, ema, level, per_trial, table, estimates, fits, verdict,
                        lr, bsimple, logged, notes)  # fmt: skip


def _verdict(cbs: CriticalBatchSize, est: StepsEstimate, table: pd.DataFrame, df) -> Verdict:
    reached = table.dropna(subset=["steps"])
    se = None
    if est.replicates is not None:
        se = log_spread(est.replicates[:, est.table["steps"].notna().to_numpy()])
    largest = reached["batch_size"].max()
    spacing = (
        reached.loc[reached["batch_size"] == largest, "eval_every"]
        if "eval_every" in reached
        else None
    )
    if spacing is None or spacing.isna().all():
        steps = np.sort(df.loc[df["batch_size"] == largest, "step"].unique())
        spacing = pd.Series([float(np.median(np.diff(steps))) if steps.size > 1 else np.nan])
    return judge(
        cbs.b_crit, cbs.b_crit_ci, cbs.fit.s_min, reached,
        cbs.fit.steps(reached["batch_size"].to_numpy(float)), se,
        float(spacing.iloc[0]), cbs.level,
    )  # fmt: skip
