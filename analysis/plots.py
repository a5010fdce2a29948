"""Figures of a sweep (matplotlib, Agg). Each function writes `<name>.png` and `<name>.svg`
into `out_dir` and returns their paths.

- loss_contours:   metric over (log2 batch size, steps) at the best LR (seed paper Fig 1, 5)
- speedup:         s(B; B0) per strategy with the ideal line (Fig 2-4)
- steps_fit:       steps to target with the McCandlish fit, bootstrap band, regimes, B_crit, CBS
- best_lr:         best LR vs batch size with power-law, saturating and surge fits, LSR / SRSR lines
- final_metric:    final eval metric per batch size and strategy (Table 2 as a plot + table)
- loss_curves:     the metric against steps per batch size at the best LR
- noise_scale:     B_simple against the target metric per batch size, beside B_crit
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.fits import CriticalBatchSize
from analysis.frame import AnalysisError
from analysis.lr_fit import LrFit
from analysis.speedup import regime_bounds

BATCH_LABEL = "batch size B (examples per step)"
STEPS_LABEL = "optimizer steps"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "legend.frameon": False, "font.size": 10}
    )  # fmt: skip
    return plt


def _save(fig, out_dir: str | Path, name: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for p in paths:
        fig.savefig(p, dpi=150 if p.suffix == ".png" else None)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def _log2_axis(ax, values) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted({int(v) for v in values})
    ax.set_xticks(ticks, [str(t) for t in ticks], rotation=45 if len(ticks) > 8 else 0)
    ax.minorticks_off()


def best_trials(df: pd.DataFrame, metric: str, best: pd.DataFrame | None = None) -> pd.Series:
    """The trial id to show per (strategy, batch_size): best['trial'] if given, else the trial
    with the lowest minimum of `metric`."""
    if best is not None:
        return best.set_index(["strategy", "batch_size"])["trial"]
    mins = df.groupby(["strategy", "batch_size", "trial"])[metric].min().dropna().reset_index()
    i = mins.groupby(["strategy", "batch_size"])[metric].idxmin()
    return mins.loc[i].set_index(["strategy", "batch_size"])["trial"]


def loss_contours(
    df: pd.DataFrame, out_dir, metric: str = "train_loss", best: pd.DataFrame | None = None,
    name: str = "loss_contours",
) -> list[Path]:  # fmt: skip
    """Filled contours of `metric` over (batch size, steps), one panel per strategy."""
    from matplotlib import colors

    plt = _pyplot()
    chosen = best_trials(df, metric, best)
    strategies = sorted(chosen.index.get_level_values(0).unique())
    curves = df[df["trial"].isin(set(chosen)) & df[metric].notna() & (df["step"] > 0)]
    if curves["batch_size"].nunique() < 2:
        raise AnalysisError("loss contours need curves at 2 or more batch sizes")
    values = curves[metric].to_numpy(float)
    positive = bool((values[np.isfinite(values)] > 0).all())
    finite = values[np.isfinite(values)]
    norm = colors.LogNorm(finite.min(), finite.max()) if positive else None
    y = np.geomspace(curves["step"].min(), curves["step"].max(), 200)
    levels = np.geomspace(finite.min(), finite.max(), 17) if positive else 16
    fig, axes = plt.subplots(
        1, len(strategies), figsize=(5.2 * len(strategies), 4.2), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for ax, strategy in zip(axes[0], strategies, strict=True):
        sizes = sorted(chosen.loc[strategy].index)
        z = np.full((y.size, len(sizes)), np.nan)
        for j, b in enumerate(sizes):
            c = curves[curves["trial"] == chosen.loc[(strategy, b)]].sort_values("step")
            if len(c) >= 2:
                v = np.interp(y, c["step"], c[metric], left=np.nan, right=np.nan)
                z[:, j] = np.where(np.isfinite(v), v, np.nan)
        zm = np.ma.masked_invalid(np.clip(z, finite.min(), finite.max()))
        kw = dict(levels=levels, norm=norm) if positive else {"levels": levels}
        cs = ax.contourf(sizes, y, zm, cmap="viridis_r", **kw)  # lighter = lower, as in the paper
        ax.set_yscale("log")
        _log2_axis(ax, sizes)
        ax.set(
            xlabel=BATCH_LABEL, ylabel=STEPS_LABEL, title=f"{metric} at the best LR ({strategy})"
        )
        ax.grid(False)
    bar = fig.colorbar(cs, ax=axes[0].tolist(), label=metric + (" (log scale)" if positive else ""))
    if positive:  # label every other level, 3 significant digits, not 2.99726 x 10^0
        bar.set_ticks(levels[::2], labels=[f"{v:.3g}" for v in levels[::2]])
        bar.minorticks_off()
    return _save(fig, out_dir, name)


def speedup(table: pd.DataFrame, out_dir, cbs: CriticalBatchSize | None = None) -> list[Path]:
    """Speedup s(B; B0) per strategy against the ideal m/m0, with the fitted curve if given."""
    plt = _pyplot()
    fig, ax = plt.subplots(layout="constrained", figsize=(6.2, 4.4))
    m0 = table["base_batch_size"].min()
    b = np.sort(table["batch_size"].unique()).astype(float)
    ax.plot(b, b / m0, "k--", lw=1, label="ideal (linear) B/B0")
    for strategy, g in table.groupby("strategy"):
        g = g.dropna(subset=["speedup"])
        ax.plot(
            g["batch_size"],
            g["speedup"],
            "o-",
            label=f"{strategy} (B0={g['base_batch_size'].iloc[0]})",
        )
    if cbs is not None:
        dense = np.geomspace(b.min(), b.max(), 200)
        ax.plot(dense, cbs.fit.steps(m0) / cbs.fit.steps(dense), ":", color="0.3",
                label=f"McCandlish fit, B_crit = {cbs.b_crit:.3g}")  # fmt: skip
    ax.set_yscale("log", base=2)
    _log2_axis(ax, b)
    ax.set(xlabel=BATCH_LABEL, ylabel="speedup S(B0) / S(B)", title="Speedup to target")
    ax.legend()
    return _save(fig, out_dir, "speedup")


def steps_fit(
    studies: pd.DataFrame, best: pd.DataFrame, cbs: CriticalBatchSize, out_dir,
    target_label: str = "target",
) -> list[Path]:  # fmt: skip
    """Steps to target vs batch size on log-log axes: per-study points, best per batch size,
    the fit with its bootstrap band, regime shading, B_crit and the overhead CBS."""
    plt = _pyplot()
    fig, ax = plt.subplots(layout="constrained", figsize=(9.5, 4.8))
    allb = best["batch_size"].to_numpy(float)
    lo_b, hi_b = allb.min() / 1.4, allb.max() * 1.4
    b_lin, b_stag = regime_bounds(cbs.b_crit)
    for (a, z), color, label in (
        ((lo_b, b_lin), "tab:green", "linear"),
        ((b_lin, b_stag), "tab:orange", "diminishing returns"),
        ((b_stag, hi_b), "tab:red", "stagnation"),
    ):
        if min(z, hi_b) > max(a, lo_b):
            ax.axvspan(max(a, lo_b), min(z, hi_b), color=color, alpha=0.08, lw=0, label=label)
    dense = np.geomspace(lo_b, hi_b, 300)
    if cbs.boot is not None:
        band = cbs.boot.steps_band(dense)
        ax.fill_between(dense, *band, color="tab:blue", alpha=0.2, lw=0,
                        label=f"{cbs.level:.0%} bootstrap band")  # fmt: skip
    f = cbs.fit
    ax.plot(dense, f.steps(dense), color="tab:blue",
            label=f"S_min(1 + B_crit/B): S_min={f.s_min:.3g}, B_crit={f.b_crit:.3g}")  # fmt: skip
    ax.plot(dense, f.steps(cbs.reference_batch_size) * cbs.reference_batch_size / dense, "k--",
            lw=0.8, label=f"linear scaling from B_ref={cbs.reference_batch_size:g}")  # fmt: skip
    s = studies.dropna(subset=["steps"])
    if len(s) > s["batch_size"].nunique():
        ax.plot(s["batch_size"], s["steps"], ".", color="0.5", ms=4, label="per seed")
    r = best.dropna(subset=["steps"])
    ax.plot(r["batch_size"], r["steps"], "o", color="tab:blue", mec="white", label="best per B")
    missed = best[best["steps"].isna()]["batch_size"]
    if len(missed):
        ax.plot(missed, np.full(len(missed), 0.97), "v", color="tab:red", ms=8,
                transform=ax.get_xaxis_transform(), label="target not reached")  # fmt: skip
    ax.axvline(f.b_crit, color="tab:purple", lw=1.2, label=f"B_crit = {f.b_crit:.3g}")
    ax.axvline(cbs.cbs, color="tab:brown", lw=1.2, ls="-.",
               label=f"CBS ({cbs.overhead:.0%} overhead) = {cbs.cbs:.3g}")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlim(lo_b, hi_b)
    ax.set(xlabel=BATCH_LABEL, ylabel=f"steps to {target_label}", title="Steps to target")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out_dir, "steps_fit")


def best_lr(fit: LrFit, out_dir) -> list[Path]:
    """Measured best LR per batch size with both fits and the LSR / SRSR reference lines."""
    plt = _pyplot()
    t = fit.table
    fig, ax = plt.subplots(layout="constrained", figsize=(6.2, 4.4))
    b = t["batch_size"].to_numpy(float)
    dense = np.geomspace(b.min(), b.max(), 200)
    ax.plot(dense, fit.power_law.lr(dense), color="tab:blue",
            label=f"power law, alpha = {fit.power_law.alpha:.2f}")  # fmt: skip
    if fit.saturating is not None:
        s = fit.saturating
        ax.plot(dense, s.lr(dense), color="tab:orange",
                label=f"eta_max/(1+B_noise/B): eta_max={s.eta_max:.3g}, B_noise={s.b_noise:.3g}")  # fmt: skip
    if fit.surge is not None:
        g = fit.surge
        ax.plot(dense, g.lr(dense), color="tab:green",
                label=f"surge (Li et al. 2024): eta_max={g.eta_max:.3g} at B_noise={g.b_noise:.3g}")  # fmt: skip
    ratio = dense / b[0]
    ax.plot(dense, t["lr"].iloc[0] * ratio, "k--", lw=0.8, label="LSR (alpha = 1)")
    ax.plot(dense, t["lr"].iloc[0] * np.sqrt(ratio), "k:", lw=0.8, label="SRSR (alpha = 0.5)")
    ax.plot(b, t["lr"], "o", color="black", label="best LR measured")
    edge = t[t["at_edge"].astype(bool)]
    if len(edge):
        ax.plot(edge["batch_size"], edge["lr"], "o", mfc="none", mec="red", ms=12, mew=1.5,
                label="at the edge of the search range")  # fmt: skip
    if fit.lr_range:
        for i, v in enumerate(fit.lr_range):
            ax.axhline(v, color="red", lw=0.6, alpha=0.5, label="LR search range" if i else None)
    ax.set_yscale("log")
    _log2_axis(ax, b)
    title = "Best LR vs batch size" + (
        f"; best fit: {fit.best_form.replace('_', ' ')}" if fit.rms else ""
    )
    ax.set(xlabel=BATCH_LABEL, ylabel="best learning rate (peak)", title=title)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "best_lr")


def final_metric_table(df: pd.DataFrame, metric: str, direction: str = "max") -> pd.DataFrame:
    """Final `metric` per (strategy, batch_size): best over each study's trials, then mean and
    std over seeds. Columns: strategy, batch_size, mean, std, n_seeds."""
    last = df.dropna(subset=[metric]).sort_values("step").groupby("trial").tail(1)
    agg = "max" if direction == "max" else "min"
    per_study = last.groupby(["strategy", "batch_size", "seed"])[metric].agg(agg).reset_index()
    out = per_study.groupby(["strategy", "batch_size"])[metric].agg(["mean", "std", "count"])
    return out.rename(columns={"count": "n_seeds"}).reset_index()


def final_metric(
    df: pd.DataFrame, out_dir, metric: str = "eval_accuracy", direction: str = "max"
) -> tuple[list[Path], pd.DataFrame]:
    """The seed paper's Table 2 as a plot: final metric per batch size, one line per strategy."""
    if metric not in df:
        raise AnalysisError(f"no {metric} column for the final-metric table")
    table = final_metric_table(df, metric, direction)
    plt = _pyplot()
    fig, ax = plt.subplots(layout="constrained", figsize=(6.2, 4.2))
    for strategy, g in table.groupby("strategy"):
        ax.errorbar(g["batch_size"], g["mean"], yerr=g["std"].fillna(0), fmt="o-", capsize=3,
                    label=strategy)  # fmt: skip
    _log2_axis(ax, table["batch_size"])
    ax.set(xlabel=BATCH_LABEL, ylabel=f"final {metric} (best LR; mean +- sd over seeds)",
           title=f"Final {metric} per batch size")  # fmt: skip
    ax.legend(title="strategy")
    return _save(fig, out_dir, "final_metric"), table


def loss_curves(
    df: pd.DataFrame, out_dir, metric: str = "train_loss", best: pd.DataFrame | None = None,
    target: float | None = None, strategy: str | None = None,
) -> list[Path]:  # fmt: skip
    """`metric` against steps, one curve per batch size at its best LR (log-log axes)."""
    plt = _pyplot()
    chosen = best_trials(df, metric, best)
    strategy = strategy or sorted(chosen.index.get_level_values(0))[0]
    chosen = chosen.loc[strategy]
    fig, ax = plt.subplots(layout="constrained", figsize=(6.6, 4.4))
    cmap = plt.get_cmap("viridis")
    sizes = sorted(chosen.index)
    for i, b in enumerate(sizes):
        c = df[(df["trial"] == chosen.loc[b]) & df[metric].notna() & (df["step"] > 0)]
        c = c.sort_values("step")
        ax.plot(
            c["step"], c[metric], color=cmap(i / max(len(sizes) - 1, 1)), lw=1.3, label=f"B={b}"
        )
    if target is not None:
        ax.axhline(target, color="red", ls="--", lw=1, label=f"target {target:.3g}")
    ax.set_xscale("log")
    if (df[metric].dropna() > 0).all():
        ax.set_yscale("log")
    ax.set(xlabel=STEPS_LABEL, ylabel=metric, title=f"{metric} at the best LR ({strategy})")
    ax.legend(fontsize=7.5, ncol=2)
    return _save(fig, out_dir, "loss_curves")


def noise_scale(
    df: pd.DataFrame, best: pd.DataFrame, cbs: CriticalBatchSize, out_dir, metric: str,
    target: float, direction: str = "min", strategy: str | None = None,
) -> list[Path]:  # fmt: skip
    """B_simple (`noise_scale_bsimple`) against `metric` along the best trial of each batch
    size, training progress to the right; B_crit (and its bootstrap interval) as a horizontal
    line, the target as a vertical one, and each trial's B_simple at the target (the column
    `b_simple` of `best`, from `analysis.noise_scale.bsimple_at_target`) as a dot."""
    from analysis.noise_scale import BSIMPLE

    if BSIMPLE not in df.columns or metric not in df.columns:
        raise AnalysisError(f"no {BSIMPLE} or {metric} column: the sweep did not log B_simple")
    plt = _pyplot()
    rows = best if strategy is None else best[best["strategy"] == strategy]
    fig, ax = plt.subplots(layout="constrained", figsize=(7.6, 4.6))
    cmap = plt.get_cmap("viridis")
    sizes = sorted(rows["batch_size"].unique())
    drawn = 0
    for i, b in enumerate(sizes):
        pick = rows[rows["batch_size"] == b].iloc[0]
        c = df[(df["trial"] == pick["trial"]) & (df["step"] > 0)].sort_values("step")
        c = c[np.isfinite(c[BSIMPLE].to_numpy(float)) & np.isfinite(c[metric].to_numpy(float))]
        c = c[c[BSIMPLE] > 0]
        if c.empty:
            continue
        color = cmap(i / max(len(sizes) - 1, 1))
        ax.plot(c[metric], c[BSIMPLE], color=color, lw=1.3, label=f"B={b}")
        at = pick.get("b_simple", np.nan)
        if np.isfinite(at) and at > 0:
            ax.plot([target], [at], "o", color=color, mec="black", ms=6)
        drawn += 1
    if not drawn:
        raise AnalysisError(f"no finite, positive {BSIMPLE} values on the best trials")
    if cbs.boot is not None and np.all(np.isfinite(cbs.b_crit_ci)):
        ax.axhspan(*cbs.b_crit_ci, color="tab:purple", alpha=0.12, lw=0,
                   label=f"B_crit {cbs.level:.0%} CI")  # fmt: skip
    ax.axhline(cbs.b_crit, color="tab:purple", lw=1.4, label=f"B_crit (fit) = {cbs.b_crit:.3g}")
    ax.axvline(target, color="red", ls="--", lw=1, label=f"target {target:.3g}")
    ax.set_yscale("log")
    if (df[metric].dropna() > 0).all():
        from matplotlib import ticker

        ax.set_xscale("log")  # plain numbers (0.6, 2), not 6 x 10^-1, on a short log range
        ax.xaxis.set_major_formatter(ticker.LogFormatter())
        ax.xaxis.set_minor_formatter(
            ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4))
        )
    if direction == "min":
        ax.invert_xaxis()  # the loss falls as training goes on: progress to the right
    ax.set(xlabel=f"{metric} (training progress ->)", ylabel="B_simple (examples)",
           title="Gradient noise scale B_simple at the best LR" + (f" ({strategy})" if strategy else ""))  # fmt: skip
    ax.legend(fontsize=7.5, ncol=2)
    return _save(fig, out_dir, "noise_scale")
