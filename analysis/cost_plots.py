"""Figures of one or several sweeps on shared axes (``analysis.compare.SweepNumbers``).

- steps_compare:  steps to target versus B for every sweep, each with its McCandlish fit
- time_compare:   time to target versus B (steps x step time), the recommended B starred
- pareto_compare: time against device-hours per batch size, each sweep's Pareto front joined

Each writes ``<name>.png`` and ``<name>.svg`` into ``out_dir`` and returns their paths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.cost import pareto_front
from analysis.plots import BATCH_LABEL, _log2_axis, _pyplot, _save


def _colors(n: int) -> list:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def steps_compare(sweeps, out_dir: str | Path, target_label: str) -> list[Path]:
    plt = _pyplot()
    fig, ax = plt.subplots(layout="constrained", figsize=(9.5, 5))
    every_b = np.concatenate([s.best["batch_size"].to_numpy(float) for s in sweeps])
    dense = np.geomspace(every_b.min() / 1.3, every_b.max() * 1.3, 300)
    for s, color in zip(sweeps, _colors(len(sweeps)), strict=True):
        r = s.best.dropna(subset=["steps"])
        ax.plot(r["batch_size"], r["steps"], "o", mfc="none", color=color, ms=7)
        if s.fit is not None:
            f = s.fit.fit
            ax.plot(dense, f.steps(dense), color=color,
                    label=f"{s.label}: B_crit = {f.b_crit:.3g}, S_min = {f.s_min:.3g}")  # fmt: skip
        else:
            ax.plot([], [], "o", color=color, label=f"{s.label}: no fit")
    ax.set_yscale("log")
    _log2_axis(ax, every_b)
    ax.set(xlabel=BATCH_LABEL, ylabel=f"steps to {target_label}", title="Steps to target")
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "compare_steps")


def time_compare(sweeps, out_dir: str | Path) -> list[Path]:
    plt = _pyplot()
    fig, ax = plt.subplots(layout="constrained", figsize=(9.5, 5))
    every_b = np.concatenate([s.cost.table["batch_size"].to_numpy(float) for s in sweeps])
    for s, color in zip(sweeps, _colors(len(sweeps)), strict=True):
        t = s.cost.table.dropna(subset=["time_to_target_h"])
        ax.plot(t["batch_size"], t["time_to_target_h"] * 3600, "o-", color=color, label=s.label)
        if s.recommendation is not None:
            r = s.recommendation.recommended
            ax.plot([r.batch_size], [r.time_h * 3600], "*", color=color, ms=16, mec="k")
    ax.set_yscale("log")
    _log2_axis(ax, every_b)
    ax.set(xlabel=BATCH_LABEL, ylabel="time to target (s)", title="Time to target")
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "compare_time")


def pareto_compare(sweeps, out_dir: str | Path) -> list[Path]:
    plt = _pyplot()
    fig, ax = plt.subplots(layout="constrained", figsize=(9.5, 5))
    kinds = {s.cost.device_kind for s in sweeps}
    kind = kinds.pop() if len(kinds) == 1 else "device"
    for s, color in zip(sweeps, _colors(len(sweeps)), strict=True):
        t = s.cost.table.dropna(subset=["time_to_target_h", "device_hours"])
        if t.empty:
            continue
        front = t[pareto_front(t)].sort_values("time_to_target_h")
        ax.plot(t["time_to_target_h"] * 3600, t["device_hours"], "o", color=color, alpha=0.5)
        ax.plot(front["time_to_target_h"] * 3600, front["device_hours"], "o-", color=color,
                label=f"{s.label} (Pareto front)")  # fmt: skip
        for _, r in t.iterrows():
            ax.annotate(f"{int(r['batch_size'])}", (r["time_to_target_h"] * 3600,
                        r["device_hours"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points", color=color)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="time to target (s)", ylabel=f"{kind}-hours to target",
           title="Time against cost per batch size (labels: B)")  # fmt: skip
    if ax.get_legend_handles_labels()[0]:  # nothing to show when no batch size was timed
        ax.legend(fontsize=8)
    return _save(fig, out_dir, "compare_pareto")
