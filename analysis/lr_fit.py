"""Best learning rate versus batch size: power law, saturating form, LSR / SRSR references.

- Power law eta*(B) = c * B^alpha, fitted as a straight line on (log B, log eta).
  Linear scaling (LSR) is alpha = 1, square-root scaling (SRSR) alpha = 0.5.
- Saturating eta*(B) = eta_max / (1 + B_noise / B) (McCandlish et al., eq. for the optimal
  step size). 1/eta = 1/eta_max + (B_noise/eta_max) / B has the very form S_min + E_min / B,
  so it is fitted with the same least squares on logs as `analysis.fits`.
- Surge (Adam-style optimizers): eta*(B) = eta_max / (1/2 (sqrt(B_noise/B) + sqrt(B/B_noise)))
  (Li et al. 2024, "Surge phenomenon in optimal learning rate and batch size scaling",
  arXiv 2405.14578, eq. 2): rises like sqrt(B) below B_noise, peaks at eta_max at
  B = B_noise, falls like 1/sqrt(B) above. For a fixed B_noise, log eta_max is the mean of the
  residuals, so the fit is a 1-D search over log B_noise.
- Every form is scored by the RMS of its residuals in log LR; all have two parameters, so the
  smallest RMS is the best fit (`LrFit.best_form`).
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


@dataclass(frozen=True)
class SurgeFit:
    """eta = eta_max / (0.5 (sqrt(b_noise/B) + sqrt(B/b_noise))) (Li et al. 2024, eq. 2)."""

    eta_max: float  # the peak best LR, reached at B = b_noise
    b_noise: float  # batch size of the peak, examples
    peak_inside: bool  # the peak lies within the measured batch sizes (else a bound)

    def lr(self, batch_size) -> np.ndarray:
        b = np.asarray(batch_size, dtype=float)
        return self.eta_max / (0.5 * (np.sqrt(self.b_noise / b) + np.sqrt(b / self.b_noise)))


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


def fit_surge(batch_size, lr) -> SurgeFit:
    """Li et al.'s surge form by least squares on log eta: a bounded 1-D search over
    log B_noise (1000x beyond the measured range on either side), eta_max in closed form."""
    from scipy.optimize import minimize_scalar

    b, eta = _check(batch_size, lr)
    x, y = np.log(b), np.log(eta)

    def shape(log_bn: float) -> np.ndarray:  # log of 1 / (0.5 (sqrt(Bn/B) + sqrt(B/Bn)))
        half = 0.5 * (x - log_bn)  # sqrt(B/Bn) = exp(half): the shape is 1 / cosh(half)
        return np.log(2.0) - np.logaddexp(half, -half)

    def sse(log_bn: float) -> float:
        r = y - shape(log_bn)
        return float(((r - r.mean()) ** 2).sum())

    lo, hi = x.min() - np.log(1000.0), x.max() + np.log(1000.0)
    grid = np.linspace(lo, hi, 241)
    start = grid[int(np.argmin([sse(g) for g in grid]))]
    step = grid[1] - grid[0]
    res = minimize_scalar(
        sse, bounds=(max(lo, start - step), min(hi, start + step)), method="bounded"
    )
    log_bn = float(res.x)
    eta_max = float(np.exp((y - shape(log_bn)).mean()))
    return SurgeFit(eta_max, float(np.exp(log_bn)), bool(x.min() <= log_bn <= x.max()))


def rms_log_residual(lr, predicted) -> float:
    """Root mean square of log(measured / fitted): how far a form is from the best LRs."""
    r = np.log(np.asarray(lr, dtype=float)) - np.log(np.asarray(predicted, dtype=float))
    return float(np.sqrt(np.mean(r**2)))


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
    table: pd.DataFrame  # batch_size, lr, at_edge, power_law, saturating, surge, lsr, srsr
    power_law: PowerLawFit
    saturating: SaturatingFit | None
    saturating_error: str | None
    lr_range: tuple[float, float] | None
    surge: SurgeFit | None = None
    rms: dict[str, float] | None = None  # form -> RMS log residual (power_law, saturating, surge)

    @property
    def best_form(self) -> str:
        """The fitted form closest to the measured best LRs (smallest RMS log residual)."""
        return min(self.rms, key=self.rms.get) if self.rms else "power_law"

    def verdict(self) -> str:
        """One sentence naming the best form, with every form's RMS log residual."""
        names = {"power_law": "power law", "saturating": "saturating (McCandlish)",
                 "surge": "surge (Li et al. 2024)"}  # fmt: skip
        scores = ", ".join(
            f"{names[k]} {v:.3f}" for k, v in sorted((self.rms or {}).items(), key=lambda kv: kv[1])
        )
        return f"best fit of the best LRs: {names[self.best_form]} (RMS log residual: {scores})"


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
    surge = fit_surge(t["batch_size"], t["lr"])
    t["surge"] = surge.lr(t["batch_size"])
    refs = reference_lines(t["batch_size"], t["batch_size"].iloc[0], t["lr"].iloc[0])
    t["lsr"], t["srsr"] = refs["lsr"], refs["srsr"]
    rms = {k: rms_log_residual(t["lr"], t[k]) for k in ("power_law", "surge")}
    if sat is not None:
        rms["saturating"] = rms_log_residual(t["lr"], t["saturating"])
    return LrFit(t, power, sat, err, lr_range, surge, rms)
