"""The table a sweep ends with: per batch size, the best LR and its steps to target.

Pure: takes the per-trial rows of :class:`tune_jobs.sweep.SweepResult` and returns rows and a
fit; the printing is plain text, so two runs with the same seed print byte-identical tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BatchSizeRow:
    batch_size: int
    best_lr: float | None
    steps_to_target: float | None
    trials: int
    reached: int
    diverged: int
    stopped_early: int


def per_batch_size(trials: list[dict[str, Any]]) -> list[BatchSizeRow]:
    """Steps-to-result per batch size: the minimum over its LR search (Shallue et al.)."""
    rows = []
    for b in sorted({t["batch_size"] for t in trials}):
        ts = [t for t in trials if t["batch_size"] == b]
        reached = [t for t in ts if t.get("steps_to_target") is not None]
        best = min(reached, key=lambda t: (t["steps_to_target"], t["lr"])) if reached else None
        rows.append(
            BatchSizeRow(
                batch_size=b,
                best_lr=best["lr"] if best else None,
                steps_to_target=best["steps_to_target"] if best else None,
                trials=len(ts),
                reached=len(reached),
                diverged=sum(t["status"] == "diverged" for t in ts),
                stopped_early=sum(t["status"] == "stopped_early" for t in ts),
            )
        )
    return rows


def fit_rows(rows: list[BatchSizeRow]):
    """McCandlish fit S(B) = S_min (1 + B_crit / B) over the batch sizes that reached the
    target; None when fewer than 3 did."""
    pts = [(r.batch_size, r.steps_to_target) for r in rows if r.steps_to_target]
    if len(pts) < 3:
        return None
    from analysis.fits import fit_mccandlish

    b, s = zip(*pts, strict=True)
    return fit_mccandlish(list(b), list(s))


def format_table(rows: list[BatchSizeRow], target: str) -> str:
    head = f"{'batch size':>10}  {'best LR':>9}  {'steps to target':>15}  {'trials':>6}  {'reached':>7}  {'diverged':>8}  {'stopped early':>13}"
    lines = [
        f"Steps to reach {target}, best over the LR search at each batch size:",
        head,
        "-" * len(head),
    ]
    for r in rows:
        lr = f"{r.best_lr:.4g}" if r.best_lr is not None else "-"
        st = f"{r.steps_to_target:.0f}" if r.steps_to_target is not None else "not reached"
        lines.append(
            f"{r.batch_size:>10}  {lr:>9}  {st:>15}  {r.trials:>6}  {r.reached:>7}  {r.diverged:>8}  {r.stopped_early:>13}"
        )
    return "\n".join(lines)


def format_fit(fit) -> str:
    if fit is None:
        return "Fit S(B) = S_min (1 + B_crit / B): fewer than 3 batch sizes reached the target; no fit."
    note = "" if fit.identified else " (not identified: a bound, the data show no bend)"
    return (
        f"Fit S(B) = S_min (1 + B_crit / B): B_crit = {fit.b_crit:.4g} examples{note}, "
        f"S_min = {fit.s_min:.4g} steps, E_min = {fit.e_min:.4g} examples "
        f"(rms log residual {math.sqrt(fit.rss / max(fit.n_points, 1)):.3f})"
    )
