"""Is B_crit determined by the data? Four checks, and plain advice for each that fails.

1. Bracketing: B_crit must lie inside the measured batch sizes with at least two of them
   on each side (the fit needs the linear part and the plateau to place the bend).
2. Precision: the CI must span at most ``MAX_CI_RATIO`` (upper / lower bound).
3. Fit: the residuals of log S against the fit must be of the size of the seed scatter
   (the bootstrap spread of each batch size's log S): a reduced chi-square above
   ``MAX_CHI2`` says the form S = S_min (1 + B_crit / B) does not describe the data.
4. Resolution: the steps between eval points of the estimate's runs at the largest batch
   size reached must be at most ``MAX_EVAL_FRACTION`` of S_min.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MAX_CI_RATIO = 4.0  # CI upper / lower bound beyond which B_crit is not determined
MAX_CHI2 = 4.0  # reduced chi-square of the fit (residuals over seed scatter) beyond: misfit
# Eval interval over S_min beyond which steps are too coarse. The crossing is interpolated
# linearly between two eval points of the seeds' mean curve (analysis.estimate); on a
# power-law curve f ~ t^-a an interval h moves the interpolated crossing by about
# (1 + a) h^2 / (8 t), 0.3% of t at h = 0.1 t, so the interval need not be small against the
# precision wanted, only against the curvature: at most 10% of S_min.
MAX_EVAL_FRACTION = 0.10
MIN_EACH_SIDE = 2  # measured batch sizes needed below and above B_crit


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Verdict:
    """``determined``: every check passed. ``advice``: what to do, one line per failed check."""

    checks: list[Check] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    @property
    def determined(self) -> bool:
        return all(c.ok for c in self.checks)

    def text(self) -> str:
        head = (
            "Verdict: B_crit is determined by the data."
            if self.determined
            else "Verdict: B_crit is NOT determined by the data."
        )
        lines = [head] + [f"  [{'ok' if c.ok else '!!'}] {c.name}: {c.detail}" for c in self.checks]
        lines += [f"  advice: {a}" for a in self.advice]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "determined": self.determined,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "advice": list(self.advice),
        }


def _pow2_near(x: float) -> int:
    return int(2 ** max(0, round(math.log2(max(x, 1.0)))))


def judge(
    b_crit: float,
    ci: tuple[float, float],
    s_min: float,
    table: pd.DataFrame,
    fitted_steps: np.ndarray,
    log_se: np.ndarray | None,
    eval_every_at_largest: float | None,
    level: float = 0.95,
) -> Verdict:
    """The verdict on one fit. ``table``: batch_size, steps (reached rows only),
    ``regime`` per row; ``fitted_steps``: the fit at those batch sizes; ``log_se``: bootstrap
    standard deviation of log steps per row (None: no seeds to compare with)."""
    v = Verdict()
    sizes = np.sort(table["batch_size"].to_numpy(float))
    below, above = int((sizes < b_crit).sum()), int((sizes > b_crit).sum())
    regimes = table["regime"].value_counts().to_dict() if "regime" in table else {}
    counts = ", ".join(
        f"{regimes.get(r, 0)} {r}" for r in ("linear", "diminishing returns", "stagnation")
    )
    detail = f"{below} measured batch size(s) below B_crit, {above} above ({counts})"
    ok = below >= MIN_EACH_SIDE and above >= MIN_EACH_SIDE
    v.checks.append(Check("bracketing", ok, detail))
    if below == 0:
        v.advice.append(
            f"B_crit is below your smallest batch size: add {_pow2_near(sizes[0] / 4)} and "
            f"{_pow2_near(sizes[0] / 2)}"
        )
    elif below < MIN_EACH_SIDE:
        v.advice.append(
            f"only {below} batch size below B_crit (~{b_crit:.3g}): add "
            f"{_pow2_near(sizes[0] / 2)} and {_pow2_near(sizes[0] / 4)} to see the linear regime"
        )
    if above == 0:
        v.advice.append(
            f"B_crit is above your largest batch size: add {_pow2_near(sizes[-1] * 2)} and "
            f"{_pow2_near(sizes[-1] * 4)}"
        )
    elif above < MIN_EACH_SIDE:
        v.advice.append(
            f"only {above} batch size above B_crit (~{b_crit:.3g}): add "
            f"{_pow2_near(sizes[-1] * 2)} and {_pow2_near(sizes[-1] * 4)} to see the plateau"
        )

    lo, hi = ci
    if math.isfinite(lo) and math.isfinite(hi) and lo > 0:
        ratio = hi / lo
        ok = ratio <= MAX_CI_RATIO
        v.checks.append(
            Check("precision", ok, f"{level:.0%} CI {lo:.3g}-{hi:.3g} spans {ratio:.2g}x")
        )
        if not ok:
            v.advice.append(
                f"CI spans {ratio:.2g}x: add seeds (lr_search.confirm_seeds) or batch sizes near "
                f"{_pow2_near(b_crit)} (e.g. {_pow2_near(b_crit / 2)} and {_pow2_near(b_crit * 2)})"
            )
    else:
        v.checks.append(Check("precision", False, "no finite confidence interval"))
        v.advice.append("no CI: measure more than one seed per batch size (confirmation runs)")

    y = np.log(table["steps"].to_numpy(float))
    resid = y - np.log(np.asarray(fitted_steps, dtype=float))
    dof = max(len(y) - 2, 1)
    if log_se is not None and np.all(np.isfinite(log_se)) and np.all(log_se > 0) and len(y) > 2:
        z = resid / log_se
        chi2 = float((z**2).sum() / dof)
        worst = int(np.argmax(np.abs(z)))
        ok = chi2 <= MAX_CHI2
        v.checks.append(
            Check(
                "fit",
                ok,
                f"residuals are {math.sqrt(chi2):.2g}x the seeds' scatter (reduced chi-square "
                f"{chi2:.3g}; worst at B = {int(table['batch_size'].iloc[worst])})"
                + ("; the CI is widened by that factor" if chi2 > 1 else ""),
            )
        )
        if not ok:
            v.advice.append(
                f"S(B) does not follow S_min (1 + B_crit/B) within the seeds' scatter (worst at "
                f"B = {int(table['batch_size'].iloc[worst])}): check that batch size's LR search "
                "converged and that every batch size can reach the target comfortably"
            )
    else:
        rms = float(np.sqrt((resid**2).sum() / dof)) if len(y) else float("nan")
        v.checks.append(
            Check("fit", True, f"rms log residual {rms:.3f} (no seed scatter to compare with)")
        )

    if eval_every_at_largest is not None and math.isfinite(eval_every_at_largest) and s_min > 0:
        frac = eval_every_at_largest / s_min
        ok = frac <= MAX_EVAL_FRACTION
        v.checks.append(
            Check(
                "resolution",
                ok,
                f"eval every {eval_every_at_largest:.3g} steps = {frac:.1%} of S_min",
            )
        )
        if not ok:
            v.advice.append(
                f"eval_every {eval_every_at_largest:.3g} is {frac:.0%} of S_min: evaluate more often "
                f"(eval_every <= {max(1, int(s_min * MAX_EVAL_FRACTION))})"
            )
    return v
