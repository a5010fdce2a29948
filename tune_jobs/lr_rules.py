"""The numerical rules of the learning-rate search, as pure functions of floats.

:class:`tune_jobs.lr_search.LRSearch` keeps the bookkeeping (studies, rounds, what was tried
and told) and asks these where to go next and when to stop. Nothing here knows Optuna, Ray
or MLflow, so each rule can be tested alone.

Units: ``x`` is log LR; a point is ``(x, objective)``, the objective being steps to target
for a trial that reached it (at most ``reached_cut``, the steps budget) and more than the
budget for one that did not (:func:`tune_jobs.lr_search.objective`); ``f`` is its log. The
line search assumes steps to target unimodal in log LR, roughly a parabola in (log LR, log
steps) near the optimum.
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_right
from collections.abc import Iterable, Sequence

SEED_STEP = 1.1  # first step out (LR factor) from a seed the neighbours predicted
FRESH = 0.01  # log LR: a proposal closer than this to an LR tried is a repeat
EXPAND_MAX = 1.0  # log LR: an expanding step follows a slope only from a gap this small
GOLDEN = 0.382  # golden-section fraction of the wider side of a bracket
OBSOLETE = 1.1  # LR factor: a seeding trial this far from a nearer fit's best LR is withdrawn
TRUST = math.log(4)  # log batch size: a fit predicts a best LR this far from a finished one
FAR_MISS = math.log(4)  # log LR: an unreached trial further from the best brackets nothing
COARSE_TRIALS = 2  # parallel: first trials of a study, down from the top of the range
COARSE_STEP = SEED_STEP**2  # LR factor between them
FEASIBLE_MARGIN = 1.25  # parallel: a placeholder LR at least this x the least time seen / max_steps
LINEAR_SLOPE = 0.75  # log-log slope of best LR vs B from which the fit extrapolates down
FIT_CHECK = 3  # parallel: finished batch sizes from which the fit's own error is measured
STEP_MAX = 2.0  # parallel: the largest step out of a line search (LR factor), expanding or not

Point = tuple[float, float]  # (log LR, objective)


def fresh(x: float, tried: Iterable[float]) -> bool:
    """Is log LR ``x`` more than :data:`FRESH` from every log LR ``tried``?"""
    return all(abs(x - t) > FRESH for t in tried)


def nearest(neighbours: Sequence[tuple[int, float]], batch_size: int) -> tuple[int, float]:
    """The (batch size, best LR) of ``neighbours`` closest to ``batch_size`` in log batch
    size; on a tie the first listed."""
    return min(neighbours, key=lambda x: abs(math.log(x[0] / batch_size)))


# ---- line search in log LR -------------------------------------------------------------------
def step_out(x_best: float, step: float, up: bool, slope_gap: float | None = None) -> float:
    """LR one ``step`` (log LR) past the best trial, which is the largest (``up``) or the
    smallest LR tried. ``slope_gap``: distance (log LR) from the best to its inner
    neighbour when the search is following a slope (the best is the newest trial and
    improved on that neighbour, tried just before it and reached too); the step then
    doubles that gap if larger (an expanding search), unless the gap exceeds
    :data:`EXPAND_MAX`."""
    if slope_gap is not None and slope_gap <= EXPAND_MAX:
        step = max(step, 2 * slope_gap)
    return math.exp(x_best + step if up else x_best - step)


def widest_gap(tried: Sequence[float], lo: float, hi: float) -> float | None:
    """Log LR at the middle of the widest stretch of ``[lo, hi]`` (log LRs) that no trial in
    ``tried`` has sampled: where to look next when nothing reached the target and the
    neighbours have nothing to suggest. A bisection of what is left of the range, which does
    not land beside an LR that failed (random or TPE proposals there, with two or three trials
    told, can: the quickstart's B = 16 tried 2.81 between failures at 3.0 and 2.05). ``None``
    with nothing tried (no gap to split: the first proposal is TPE's) or when every stretch is
    narrower than two first steps (:data:`SEED_STEP`), i.e. the range is used up. Of
    stretches as wide, the highest."""
    if not tried:
        return None
    pts = sorted({lo, hi, *(min(max(t, lo), hi) for t in tried)})
    gaps = [(b - a, a) for a, b in zip(pts, pts[1:], strict=False)]
    width = max(w for w, _ in gaps)
    # of stretches as wide (to rounding), the highest: a too low LR runs long, a too high
    # one fails fast
    left = max(a for w, a in gaps if w >= width - 1e-9)
    return left + width / 2 if width > 2 * math.log(SEED_STEP) else None


def parabola_vertex(left: Point, best: Point, right: Point) -> float | None:
    """Abscissa of the vertex of the parabola through three ``(x, f)`` points (successive
    parabolic interpolation); ``None`` when they are collinear. Not checked for convexity:
    the caller keeps the result only strictly inside ``(left x, right x)``."""
    (xl, fl), (xb, fb), (xr, fr) = left, best, right
    den = (xb - xl) * (fb - fr) - (xb - xr) * (fb - fl)
    if den == 0:
        return None
    return xb - 0.5 * ((xb - xl) ** 2 * (fb - fr) - (xb - xr) ** 2 * (fb - fl)) / den


def golden_step(xl: float, xb: float, xr: float, step: float) -> float:
    """Golden-section point into the wider side of the bracket ``xl < xb < xr``, but no
    further than ``max(step, 2 x the narrower side)`` from ``xb``: a far unreached side (a
    first random trial, a seed past the noise floor) says little about where the optimum
    is."""
    far, near = (xl, xr) if xb - xl > xr - xb else (xr, xl)
    cap = max(step, 2 * abs(xb - near))
    return xb + math.copysign(min(GOLDEN * abs(far - xb), cap), far - xb)


def bracket_lr(
    left: Point, best: Point, right: Point, reached_cut: float, step: float, tried: list[float]
) -> float | None:
    """Next LR inside the bracket ``left < best < right`` (both sides worse): the vertex of
    the parabola in (log LR, log steps) when both sides reached (objective <= ``reached_cut``)
    and the vertex lies strictly inside and is fresh, else :func:`golden_step`. ``None``
    when that point was tried already (:func:`fresh`)."""
    (xl, vl), (xb, vb), (xr, vr) = left, best, right
    x_new = None
    if vl <= reached_cut and vr <= reached_cut:
        x_new = parabola_vertex((xl, math.log(vl)), (xb, math.log(vb)), (xr, math.log(vr)))
    if x_new is None or not (xl < x_new < xr) or not fresh(x_new, tried):
        x_new = golden_step(xl, xb, xr, step)
    return math.exp(x_new) if fresh(x_new, tried) else None


# ---- convergence -----------------------------------------------------------------------------
def parabola_gain(left: Point, best: Point, right: Point) -> float | None:
    """Log steps still to gain from ``best``: f(best) - f(vertex) of the parabola through
    three ``(x, f)`` points, the vertex clamped to ``[left x, right x]``; ``None`` when the
    parabola is not convex (no minimum to gain towards)."""
    (xl, fl), (xb, fb), (xr, fr) = left, best, right
    # f = a (x - xv)^2 + fv through the three points
    d1, d2 = (fl - fb) / (xl - xb), (fr - fb) / (xr - xb)
    a = (d2 - d1) / (xr - xl)
    if a <= 0:
        return None
    xv = min(max(0.5 * (xb + xl) - d1 / (2 * a), xl), xr)
    return a * (xb - xv) ** 2


def one_sided_gain(near: Point, best: Point, x_far: float) -> float:
    """Log steps still to gain from ``best`` when only the ``near`` side (an ``(x, f)``
    point) reached: the curvature of ``f = a (x - x_best)^2`` through ``near``, the optimum
    put halfway towards the unreached side at ``x_far`` (steep: noise floor or divergence)."""
    (xn, fn), (xb, fb) = near, best
    a = (fn - fb) / (xn - xb) ** 2
    return a * (0.5 * (x_far - xb)) ** 2


def bracket_converged(
    left: Point,
    best: Point,
    right: Point,
    reached_cut: float,
    tol: float,
    side_diverged: bool,
    max_width: float = 2 * math.log(SEED_STEP),
) -> bool:
    """Has a line search whose best trial ``best`` has a worse trial on each side
    (``left``, ``right``) converged: are the steps still to gain in that bracket below
    ``tol`` (relative)?

    Both sides reached (objective <= ``reached_cut``): the gain is :func:`parabola_gain` in
    (log LR, log steps); not convex: no. One side did not: the bracket must span at most
    ``max_width`` (log LR), and the gain is :func:`one_sided_gain`. Neither did (both
    stopped by the steps bound: they needed more steps than the best): a narrow bracket of
    worse trials suffices, unless a side diverged (``side_diverged``): divergence says
    nothing of how steep the curve is short of the stability edge, where large batches find
    their best LR.
    """
    (xl, vl), (xb, vb), (xr, vr) = left, best, right
    fb = math.log(vb)
    ok_l, ok_r = vl <= reached_cut, vr <= reached_cut
    if ok_l and ok_r:
        gain = parabola_gain((xl, math.log(vl)), (xb, fb), (xr, math.log(vr)))
        if gain is None:
            return False
    elif xr - xl > max_width + 1e-9:
        return False  # a wide bracket with an unreached side: too little known
    elif ok_l or ok_r:
        xn, fn, xf = (xl, math.log(vl), xr) if ok_l else (xr, math.log(vr), xl)
        gain = one_sided_gain((xn, fn), (xb, fb), xf)
    else:
        return not side_diverged
    return gain <= math.log1p(tol)  # expm1(gain) <= tol, without overflow for a huge gain


# ---- cascade seeds and bounds from the other batch sizes -------------------------------------
def saturating_lr(p1: Point, p2: Point, batch_size: int) -> float:
    """Best LR at ``batch_size`` from two (log B, log best LR) points: 1 / LR = a + c / B
    through them (McCandlish et al.'s eps_max / (1 + B_noise / B)); where that line cannot
    give it (c < 0: the LR falls with B; or 1 / LR <= 0 at ``batch_size``) the power law
    through them."""
    (x1, y1), (x2, y2) = p1, p2
    u1, u2, v1, v2 = math.exp(-x1), math.exp(-x2), math.exp(-y1), math.exp(-y2)
    c = (v1 - v2) / (u1 - u2)
    inv = v1 + c * (1 / batch_size - u1)
    if c >= 0 and inv > 0:
        return 1 / inv
    return math.exp(y1 + (y2 - y1) * (math.log(batch_size) - x1) / (x2 - x1))


def seed_lrs(
    neighbours: list[tuple[int, float]], batch_size: int, diverged_below: float = math.inf
) -> list[float]:
    """First LRs to try at ``batch_size``, best guess first, from the (batch size, best LR)
    of other batch sizes' reached bests, sorted by batch size.

    Through the nearest two (one on each side when there are), :func:`saturating_lr` gives
    the first guess, kept between the nearest one's LR and its linearly scaled LR. Then
    that neighbour's LR scaled by the linear rule, the square-root rule, and unscaled.
    ``diverged_below``: the smallest LR that diverged at this or a smaller batch size; a
    guess at or above it becomes the neighbour's own LR (which reaches the target at a
    larger batch size no later than there), or half that LR if it is no lower either.
    """
    if not neighbours:
        return []
    b = batch_size
    below = [(math.log(bb), math.log(lr)) for bb, lr in neighbours if bb < b]
    above = [(math.log(bb), math.log(lr)) for bb, lr in neighbours if bb > b]
    nb, lr_nb = nearest(neighbours, b)
    guesses = []
    pair = None
    if below and above:
        pair = below[-1], above[0]
    elif len(below) >= 2 or len(above) >= 2:
        pair = tuple(below[-2:]) if below else tuple(above[:2])
    if pair is not None:
        lo, hi = sorted((lr_nb, lr_nb * b / nb))
        guesses.append(min(max(saturating_lr(pair[0], pair[1], b), lo), hi))
    guesses += [lr_nb * b / nb, lr_nb * math.sqrt(b / nb), lr_nb]
    cap = diverged_below
    return [(lr if lr < cap else lr_nb if lr_nb < cap else cap / 2) for lr in guesses]


def cross_bound(
    best_steps: dict[int, float], batch_size: int, slack: float, examples: bool = True
) -> float:
    """Steps ``batch_size`` needs at its best LR at most, from the best steps to target of
    the other batch sizes (``best_steps``; inf where none reached).

    A larger batch at the same LR has less gradient noise, so in expectation it needs no
    more steps: the best steps of a smaller batch size bound this one's. And a smaller
    batch needs no more examples (E(B) = B S(B) grows with B, McCandlish et al.; it is the
    premise of a critical batch size): bb > b bounds it by (bb / b) x its steps. ``slack``
    multiplies the bound (measured steps are noisy); ``examples=False``: the smaller batch
    sizes' bound only. inf when nothing bounds it.
    """
    b = batch_size
    other = [
        steps * (1.0 if bb < b else bb / b)
        for bb, steps in best_steps.items()
        if bb < b or (examples and bb > b)
    ]
    return slack * min(other, default=math.inf)


def fit_error(neighbours: Sequence[tuple[int, float]]) -> float | None:
    """How far the fit through the batch sizes' best LRs misses on this problem, in log LR:
    each of ``neighbours`` ((batch size, best LR) of finished batch sizes, sorted by batch
    size) predicted from the others (:func:`seed_lrs`'s first guess), the median of
    |log(predicted / found)|. None with fewer than :data:`FIT_CHECK`: too little to tell.

    On a smooth problem (the NQM) the best LR follows the fit to the line search's precision;
    on a noisy one (digits at a few hundred steps, steps to target counted at evals) the
    best LRs found scatter around it by 1.5-2x, and a search that trusts the fit to 10%
    spends its few trials on steps too small to find the optimum."""
    if len(neighbours) < FIT_CHECK:
        return None
    return statistics.median(
        abs(math.log(seed_lrs([*neighbours[:i], *neighbours[i + 1 :]], b)[0] / lr))
        for i, (b, lr) in enumerate(neighbours)
    )


def off_fit(lr: float, predicted: float, basis: float, nearest: float, error: float = 0.0) -> bool:
    """Is a running seeding trial at ``lr`` obsolete: proposed when the nearest finished batch
    size was ``basis`` away (log batch size; inf: none), a nearer one (``nearest``) has
    finished since, and the fit through the finished ones now predicts a best LR
    ``predicted`` more than :data:`OBSOLETE` from ``lr`` (either way), and more than the
    fit's own ``error`` (log LR, :func:`fit_error`: a trial within the fit's scatter is as
    good a start as the fit's)? Each withdrawal needs a strictly nearer basis, so a study
    withdraws at most once per batch size finishing."""
    far = max(math.log(OBSOLETE), error)
    return nearest < basis - 1e-9 and abs(math.log(lr / predicted)) > far


def fit_trusted(nearest: float, bracketed: bool, above: Sequence[tuple[int, float]] = ()) -> bool:
    """Does the fit through the finished batch sizes' best LRs predict a batch size's best
    LR: is the nearest finished one at most :data:`TRUST` away (log batch size), are there
    finished ones on both sides (an interpolation), or are the nearest two above it
    (``above``: (batch size, best LR), nearest first) on the linear part of the curve, where
    the best LR grows with B at a log-log slope of at least :data:`LINEAR_SLOPE`? Extrapolated
    further down from the flat part (the stability edge), the fit can be far off."""
    if nearest <= TRUST + 1e-9 or bracketed:
        return True
    if len(above) < 2:
        return False
    (b1, lr1), (b2, lr2) = above
    return math.log(lr2 / lr1) / math.log(b2 / b1) >= LINEAR_SLOPE


# ---- stopping a stalled trial ----------------------------------------------------------------
def plateaued(
    steps: Sequence[float],
    values: Sequence[float],
    target: float,
    minimize: bool,
    tol: float,
    beta: float,
) -> bool:
    """Has a trial stalled short of its target: over the last doubling of its steps, did its
    distance to the target shrink by less than ``tol`` of that distance? A trial at its noise
    floor above the target will not reach it; one still on its way closes a large part of the
    distance each time its steps double (on the NQM's power-law decay, 30% or more), and one
    far below its optimum LR is left to the lag rule and the steps bound. The distance, not
    the metric's own relative change, so that the rule reads the same on a loss, an accuracy
    or a metric near zero. False until the first point at or before half the last step, and
    once the target is met.

    ``values`` are the trial's raw metric at ``steps`` (ascending). The level compared at each
    end of the doubling (:func:`level`) is the metric smoothed as the stop rule smooths it
    (a bias-corrected EMA, ``beta`` per eval point, the target's ``smoothing``), but over the
    doubling of steps up to that point only. The stop rule's own EMA runs from the first eval:
    where reports thin out geometrically (the NQM workloads') it still carries the first, far
    higher losses long after the curve has levelled off (measured on ``nqm_small.yaml``: a
    stalled trial held 8x longer).
    """
    i = bisect_right(steps, steps[-1] / 2) - 1
    if i < 0:
        return False
    sign = 1.0 if minimize else -1.0
    before = sign * (level(steps, values, i, beta) - target)
    now = sign * (level(steps, values, len(steps) - 1, beta) - target)
    return before > 0 and now > (1.0 - tol) * before


def level(steps: Sequence[float], values: Sequence[float], end: int, beta: float) -> float:
    """The bias-corrected EMA (``beta`` per point) of ``values`` over the points in
    ``[steps[end] / 2, steps[end]]``: the metric's level at ``steps[end]``, smoothed over
    at most the doubling of steps that led there."""
    num = den = 0.0
    for j in range(bisect_right(steps, steps[end] / 2 - 1e-9, 0, end), end + 1):
        num, den = beta * num + values[j], beta * den + 1.0
    return num / den
