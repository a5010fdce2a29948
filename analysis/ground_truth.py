"""The exact critical batch size of a noisy quadratic model problem.

:func:`trainables.nqm_truth.exact_curve` gives the exact minimal steps-to-target per batch size;
this module fits it with :func:`analysis.fits.fit_mccandlish`, the fitter every sweep's result
goes through, so a sweep's B_crit and the truth differ only by what the sweep measured.
"""

from __future__ import annotations

from analysis.fits import fit_mccandlish
from trainables.nqm_truth import NQM, REFERENCE_BATCH_SIZES, exact_curve


def ground_truth(
    nqm: NQM, batch_sizes=REFERENCE_BATCH_SIZES, target: float = 0.01, momentum: float = 0.0
) -> dict:
    """Exact best LR and steps per batch size, and the fitted ``b_crit``, ``s_min``, ``e_min``."""
    out = exact_curve(nqm, batch_sizes, target, momentum)
    fit = fit_mccandlish(out["batch_sizes"], out["steps"])
    out.update(b_crit=fit.b_crit, s_min=fit.s_min, e_min=fit.e_min)
    return out
