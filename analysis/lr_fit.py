"""Best learning rate versus batch size: power law, saturating form, LSR / SRSR references.

- Power law eta*(B) = c * B^alpha, fitted as a straight line on (log B, log eta).
  Linear scaling (LSR) is alpha = 1, square-root scaling (SRSR) alpha = 0.5.
- Saturating eta*(B) = eta_max / (1 + B_noise / B) (McCandlish et al., eq. for the optimal
  step size). 1/eta = 1/eta_max + (B_noise/eta_max) / B has the very form S_min + E_min / B,
  so it is fitted with the same least squares on logs as `analysis.fits`.
- A best LR within `edge_fraction` of either end of the (log) search range is flagged: the
  true optimum may lie outside it and the search range should be widened (McCandlish, App. A).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.fits import fit_mccandlish
from analysis.frame import AnalysisError


@dataclass(frozen=True)
class PowerLawFit:
    """eta = coef * B^alpha (coef: LR at B = 1)."""

    alpha: float
    coef: float
    r2: float  # of the straight line on log-log axes

    def lr(self, batch_size) -> np.ndarray:
        return self.coef * np.asarray(batch_size, dtype=float) ** self.alpha


@dataclass(frozen=True)
class SaturatingFit:
    """eta = eta_max / (1 + b_noise / B); b_noise in examples, eta_max in LR units."""

    eta_max: float
    b_noise: float
    identified: bool  # False when B_noise is beyond 1000x the measured range

    def lr(self, batch_size) -> np.ndarray:
        return self.eta_max / (1.0 + self.b_noise / np.asarray(batch_size, dtype=float))


def _check(batch_size, lr) -> tuple[np.ndarray, np.ndarray]:
    b, eta = np.asarray(batch_size, dtype=float), np.asarray(lr, dtype=float)
    keep = np.isfinite(b) & np.isfinite(eta) & (b > 0) & (eta > 0)
    b, eta = b[keep], eta[keep]
    if np.unique(b).size < 3:
        raise AnalysisError(
            f"an LR fit needs best LRs at 3 or more batch sizes, got {np.unique(b).size}"
        )
    return b, eta


def fit_power_law(batch_size, lr) -> PowerLawFit:
    """Least-squares line log eta = log coef + alpha log B."""
    b, eta = _check(batch_size, lr)
    x, y = np.log(b), np.log(eta)
    alpha, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + alpha * x)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else float("nan")
    return PowerLawFit(float(alpha), float(np.exp(intercept)), r2)


def fit_saturating(batch_size, lr) -> SaturatingFit:
    """eta_max / (1 + B_noise / B) by least squares on log eta (via the McCandlish fit of 1/eta)."""
    b, eta = _check(batch_size, lr)
    inv = fit_mccandlish(b, 1.0 / eta)  # 1/eta = a + c/B with a = 1/eta_max, c/a = B_noise
    return SaturatingFit(1.0 / inv.s_min, inv.b_crit, inv.identified)


def reference_lines(batch_size, base_batch_size: float, base_lr: float) -> dict[str, np.ndarray]:
    """LSR (eta0 * B/B0) and SRSR (eta0 * sqrt(B/B0)) anchored at (base_batch_size, base_lr)."""
    ratio = np.asarray(batch_size, dtype=float) / base_batch_size
    return {"lsr": base_lr * ratio, "srsr": base_lr * np.sqrt(ratio)}


def at_search_edge(lr, lr_range: tuple[float, float], edge_fraction: float = 0.05) -> np.ndarray:
    """True where lr lies within `edge_fraction` of the log search range of either end."""
    lo, hi = lr_range
    if not 0 < lo < hi:
        raise AnalysisError(f"LR search range must satisfy 0 < min < max, got {lr_range}")
    width = np.log(hi / lo)
    x = np.log(np.asarray(lr, dtype=float) / lo) / width  # 0 at min, 1 at max
    return (x <= edge_fraction) | (x >= 1.0 - edge_fraction)


@dataclass(frozen=True)
class LrFit:
    table: pd.DataFrame  # batch_size, lr, at_edge, power_law, saturating, lsr, srsr
    power_law: PowerLawFit
    saturating: SaturatingFit | None
    saturating_error: str | None
    lr_range: tuple[float, float] | None


def fit_best_lr(
    best: pd.DataFrame,
    lr_range: tuple[float, float] | None = None,
    edge_fraction: float = 0.05,
) -> LrFit:
    """Both fits, reference lines and edge flags for a table with batch_size and lr columns.

    The references are anchored at the best LR of the smallest batch size. `lr_range` is the
    search range (min, max) of the sweep; without it no edge is flagged.
    """
    t = best[["batch_size", "lr"]].dropna().sort_values("batch_size").reset_index(drop=True)
    power = fit_power_law(t["batch_size"], t["lr"])
    try:
        sat, err = fit_saturating(t["batch_size"], t["lr"]), None
    except AnalysisError as e:  # e.g. a best LR that falls with B: no saturating growth
        sat, err = None, str(e)
    t["at_edge"] = at_search_edge(t["lr"], lr_range, edge_fraction) if lr_range else False
    t["power_law"] = power.lr(t["batch_size"])
    t["saturating"] = sat.lr(t["batch_size"]) if sat else np.nan
    refs = reference_lines(t["batch_size"], t["batch_size"].iloc[0], t["lr"].iloc[0])
    t["lsr"], t["srsr"] = refs["lsr"], refs["srsr"]
    return LrFit(t, power, sat, err, lr_range)
