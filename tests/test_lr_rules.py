"""The LR search's numerical rules alone (no Optuna): each against a value worked by hand."""

from __future__ import annotations

import math

import pytest

from tune_jobs.lr_rules import (
    OBSOLETE,
    SEED_STEP,
    TRUST,
    bracket_converged,
    bracket_lr,
    cross_bound,
    fit_error,
    fit_trusted,
    fresh,
    golden_step,
    nearest,
    off_fit,
    one_sided_gain,
    parabola_gain,
    parabola_vertex,
    saturating_lr,
    seed_lrs,
    step_out,
    widest_gap,
)


def test_fresh_means_more_than_a_hundredth_in_log_lr_from_every_lr_tried():
    assert fresh(0.0, []) and fresh(0.0, [0.02, -0.5])
    assert not fresh(0.0, [0.02, 0.005])


def test_nearest_is_closest_in_log_batch_size_first_listed_on_a_tie():
    bests = [(16, 0.1), (64, 0.3)]
    assert nearest(bests, 32) == (16, 0.1)  # 16 and 64 both a factor 2 away
    assert nearest(bests, 40) == (64, 0.3)  # 40 / 16 = 2.5 > 64 / 40 = 1.6


def test_step_out_doubles_the_lr_or_follows_a_slope_up_to_an_e_fold_gap():
    x = math.log(0.1)
    assert step_out(x, math.log(2), up=True) == pytest.approx(0.2)
    assert step_out(x, math.log(2), up=False) == pytest.approx(0.05)
    # gap 0.5 (log LR): twice it, 1.0, beats log 2 = 0.69
    assert step_out(x, math.log(2), up=True, slope_gap=0.5) == pytest.approx(0.1 * math.e)
    # gap 0.2: twice it, 0.4, is below log 2: the plain step
    assert step_out(x, math.log(2), up=True, slope_gap=0.2) == pytest.approx(0.2)
    # gap 1.5 > 1: too far apart to be a slope worth following
    assert step_out(x, math.log(2), up=True, slope_gap=1.5) == pytest.approx(0.2)


def test_widest_gap_splits_the_widest_stretch_of_the_range_not_tried():
    lo, hi = math.log(0.003), math.log(3.0)
    # the quickstart's B = 16: 3.0 and 2.05 failed high, 0.003 ran out of steps
    x = widest_gap([math.log(3.0), math.log(2.05), math.log(0.003)], lo, hi)
    assert x == pytest.approx(math.log(math.sqrt(0.003 * 2.05)))
    # one failure at the top: the stretch below it, the range's bottom as its other end
    assert widest_gap([math.log(3.0)], lo, hi) == pytest.approx(math.log(math.sqrt(0.009)))
    assert widest_gap([math.log(0.01)], lo, hi) == pytest.approx(math.log(math.sqrt(0.03)))
    assert widest_gap([], lo, hi) is None  # nothing tried: TPE's first proposal
    used_up = [lo + i * 1.5 * math.log(SEED_STEP) for i in range(100)]
    assert widest_gap([t for t in used_up if t <= hi], lo, hi) is None


def test_parabola_vertex_of_three_points_on_a_known_parabola():
    def f(x):
        return 2 * (x - 1) ** 2 + 3  # vertex at x = 1

    pts = [(x, f(x)) for x in (0.0, 0.5, 3.0)]  # (0, 5), (0.5, 3.5), (3, 11)
    assert parabola_vertex(*pts) == pytest.approx(1.0)
    assert parabola_vertex((0.0, 0.0), (1.0, 1.0), (2.0, 2.0)) is None  # collinear


def test_golden_step_goes_into_the_wider_side_capped_by_the_step():
    # wider side left (1 vs 0.5): 0.382 x 1 into it; the cap, 2 x 0.5 = 1, does not bind
    assert golden_step(0.0, 1.0, 1.5, step=0.1) == pytest.approx(1.0 - 0.382)
    # wider side 10 away: 3.82 capped at max(step 0.1, 2 x 0.1) = 0.2
    assert golden_step(-10.0, 0.0, 0.1, step=0.1) == pytest.approx(-0.2)
    # equal sides: goes right
    assert golden_step(-1.0, 0.0, 1.0, step=0.1) == pytest.approx(0.382)


def test_bracket_lr_takes_the_log_log_parabola_vertex_when_both_sides_reached():
    def steps(x):
        return 100 * math.exp((x - 0.25) ** 2)  # log steps: a parabola, vertex at x = 0.25

    left, best, right = ((x, steps(x)) for x in (-1.0, 0.0, 1.0))
    tried = [-1.0, 0.0, 1.0]
    assert bracket_lr(left, best, right, 1e4, 0.1, tried) == pytest.approx(math.exp(0.25))
    # the right side did not reach (above the cut): golden section instead, 0.382 to the right
    unreached = (1.0, 2e4)
    assert bracket_lr(left, best, unreached, 1e4, 0.1, tried) == pytest.approx(math.exp(0.382))
    # that point tried already: nothing to suggest
    assert bracket_lr(left, best, unreached, 1e4, 0.1, [*tried, 0.385]) is None


def test_parabola_gain_is_the_drop_from_the_best_point_to_the_vertex():
    # f = 2 (x - 1)^2 + 3 through x = 0, 0.5, 3: from f(0.5) = 3.5 down to 3
    assert parabola_gain((0.0, 5.0), (0.5, 3.5), (3.0, 11.0)) == pytest.approx(0.5)
    assert parabola_gain((-1.0, 1.0), (0.0, 1.0), (1.0, 1.0)) is None  # flat: no curvature
    assert parabola_gain((-1.0, -1.0), (0.0, 0.0), (1.0, -1.0)) is None  # concave


def test_one_sided_gain_puts_the_optimum_halfway_to_the_unreached_side():
    # a = (1 - 0) / (0 - 1)^2 = 1 through the near point; optimum at (1 + 3) / 2 = 2
    assert one_sided_gain((0.0, 1.0), (1.0, 0.0), 3.0) == pytest.approx(1.0)


def test_bracket_converged_both_sides_reached():
    def pt(x):
        return x, 100 * math.exp(0.1 * (x - 0.1) ** 2)  # gain 0.1 x 0.1^2 = 0.001 (log)

    left, best, right = pt(-1.0), pt(0.0), pt(1.0)
    assert bracket_converged(left, best, right, 1e4, tol=0.01, side_diverged=False)
    assert not bracket_converged(left, best, right, 1e4, tol=0.0005, side_diverged=False)
    flat = (-1.0, 100.0), (0.0, 100.0), (1.0, 100.0)
    assert not bracket_converged(*flat, 1e4, tol=0.5, side_diverged=False)


def test_bracket_converged_with_an_unreached_side_needs_a_narrow_bracket():
    # left 1% slower than the best, 0.09 away; right not reached (2e4 > cut 1e4).
    # gain = log(1.01) / 0.09^2 x (0.09 / 2)^2 = log(1.01) / 4: 0.25% steps
    left, best, right = (-0.09, 101.0), (0.0, 100.0), (0.09, 2e4)
    assert 2 * math.log(SEED_STEP) > 0.18  # narrow enough: SEED_STEP squared spans 0.19
    assert bracket_converged(left, best, right, 1e4, tol=0.003, side_diverged=False)
    assert not bracket_converged(left, best, right, 1e4, tol=0.002, side_diverged=False)
    wide = (-0.15, 101.0), best, (0.15, 2e4)  # 0.3 > 0.19: same gain, too little known
    assert not bracket_converged(*wide, 1e4, tol=0.5, side_diverged=False)


def test_bracket_converged_with_both_sides_unreached_unless_one_diverged():
    left, best, right = (-0.09, 2e4), (0.0, 100.0), (0.09, 3e4)
    assert bracket_converged(left, best, right, 1e4, tol=0.01, side_diverged=False)
    assert not bracket_converged(left, best, right, 1e4, tol=0.01, side_diverged=True)
    wide = (-0.15, 2e4), best, (0.15, 3e4)
    assert not bracket_converged(*wide, 1e4, tol=0.01, side_diverged=False)


def test_saturating_lr_recovers_one_over_lr_linear_in_one_over_b():
    def lr(b):
        return 1 / (2 + 64 / b)  # a = 2, c = 64: LR saturates at 1/2, B_noise = 32

    p16, p64 = (math.log(16), math.log(lr(16))), (math.log(64), math.log(lr(64)))
    for b in (4, 32, 256, 4096):
        assert saturating_lr(p16, p64, b) == pytest.approx(lr(b))
    assert saturating_lr(p16, p64, 256) == pytest.approx(1 / 2.25)


def test_saturating_lr_falls_back_to_the_power_law():
    # 1 / LR = 2.5 at 16, 10 at 64: c < 0 (LR falls with B); LR = 6.4 / B through both
    falling = (math.log(16), math.log(0.4)), (math.log(64), math.log(0.1))
    assert saturating_lr(*falling, 256) == pytest.approx(0.025)
    # 1 / LR = -1 + 64 / B: 3 at 16, 1 at 32, negative at 128; LR = (B / 16)^log2(3) / 3
    rising = (math.log(16), math.log(1 / 3)), (math.log(32), math.log(1.0))
    assert saturating_lr(*rising, 128) == pytest.approx(9.0)


def test_seed_lrs_fit_then_linear_square_root_and_flat_from_the_nearest():
    bests = [(16, 1 / 6), (64, 1 / 3)]  # on 1 / LR = 2 + 64 / B
    expected = [0.25, 1 / 3, math.sqrt(2) / 6, 1 / 6]  # fit at 32, then from 16 (nearest)
    assert seed_lrs(bests, 32) == pytest.approx(expected)
    # one neighbour: no fit; linear, square root, flat from 64 down to 16
    assert seed_lrs([(64, 0.4)], 16) == pytest.approx([0.1, 0.2, 0.4])
    assert seed_lrs([], 16) == []


def test_seed_lrs_fit_the_nearest_two_one_on_each_side_when_there_are():
    expected = [0.25, 1 / 3, math.sqrt(2) / 6, 1 / 6]
    # 8 and 256 are off the curve: the fit must go through 16 and 64 only
    assert seed_lrs([(8, 0.05), (16, 1 / 6), (64, 1 / 3), (256, 1.0)], 32) == pytest.approx(
        expected
    )
    # all below: the two nearest, 8 (1 / LR = 10) and 16, not 4
    assert seed_lrs([(4, 0.01), (8, 0.1), (16, 1 / 6)], 32) == pytest.approx(expected)


def test_seed_lrs_keeps_the_fit_between_flat_and_linear_scaling():
    # 1 / LR = 10 at 64, 2.5 at 128: the line gives 1 / 25 at 32, below linear (0.05)
    bests = [(64, 0.1), (128, 0.4)]
    assert seed_lrs(bests, 32) == pytest.approx([0.05, 0.05, 0.1 * math.sqrt(0.5), 0.1])


def test_seed_lrs_stay_below_an_lr_that_diverged():
    bests = [(16, 1 / 6), (64, 1 / 3)]
    # 1/3 diverged here or below: the nearest neighbour's own LR instead
    assert seed_lrs(bests, 32, 0.3) == pytest.approx([0.25, 1 / 6, math.sqrt(2) / 6, 1 / 6])
    # even that diverged: half the smallest diverged LR
    assert seed_lrs(bests, 32, 0.1) == pytest.approx([0.05] * 4)


def test_cross_bound_from_smaller_steps_and_larger_examples():
    best = {8: 1000.0, 16: 1.0, 32: 300.0, 64: 100.0, 128: math.inf}
    # at 16 (its own 1.0 ignored): 8 gives 1000 steps; 32 and 64 give 2 x 300 and 4 x 100
    assert cross_bound(best, 16, slack=1.5) == pytest.approx(1.5 * 400)
    assert cross_bound(best, 16, slack=1.5, examples=False) == pytest.approx(1.5 * 1000)
    assert cross_bound(best, 8, slack=1.0, examples=False) == math.inf  # nothing smaller
    assert cross_bound({8: math.inf}, 16, slack=1.0) == math.inf


def test_bracket_converged_survives_two_lrs_one_float_step_apart():
    """Two tried LRs one float step apart in log LR give the parabola a huge curvature and a
    gain far beyond exp's range: not converged, not an OverflowError out of the search."""
    x = 0.3
    left, best, right = (x, 120.0), (math.nextafter(x, 1.0), 100.0), (x + 0.5, 130.0)
    assert not bracket_converged(left, best, right, 1e4, tol=0.02, side_diverged=False)
    near = (math.nextafter(x, 1.0), 101.0)
    assert not bracket_converged(near, (x, 100.0), (x + 1e-9, 2e4), 1e4, 0.02, False)


def test_off_fit_needs_a_nearer_basis_and_a_prediction_past_the_factor():
    far = 1.01 * OBSOLETE
    assert off_fit(1.0, far, basis=math.inf, nearest=2.0)  # first fit, far off: withdraw
    assert off_fit(far, 1.0, basis=3.0, nearest=1.0)  # either way
    assert not off_fit(1.0, 0.99 * OBSOLETE, basis=math.inf, nearest=2.0)  # close enough
    assert not off_fit(1.0, 10.0, basis=1.0, nearest=1.0)  # no nearer batch size finished
    # within the fit's own error on this problem: as good a start as the fit's, kept
    assert not off_fit(1.0, 1.9, basis=math.inf, nearest=2.0, error=math.log(2))
    assert off_fit(1.0, 2.1, basis=math.inf, nearest=2.0, error=math.log(2))


def test_fit_error_is_the_median_leave_one_out_miss_of_the_finished_best_lrs():
    def curve(b):  # McCandlish's eps_max / (1 + B_noise / B): the fit's own form
        return 0.5 / (1 + 64 / b)

    exact = [(b, curve(b)) for b in (16, 64, 256)]
    assert fit_error(exact) < 1e-12  # two points of the curve predict the third exactly
    assert fit_error(exact[:2]) is None  # too few to tell
    # the middle best LR 2x off: predicted 2x low from the ends; each end, from the middle
    # and the other end (an LR falling with B: the power law, kept at the nearest one's LR),
    # 5x high: median 5x
    scattered = [(16, curve(16)), (64, 2 * curve(64)), (256, curve(256))]
    assert fit_error(scattered) == pytest.approx(math.log(5))


def test_fit_trusted_near_bracketed_or_on_the_linear_part():
    assert fit_trusted(TRUST, False) and not fit_trusted(1.01 * TRUST, False)
    assert fit_trusted(10.0, True)  # finished on both sides: an interpolation
    linear = [(256, 0.74), (512, 1.28)]  # slope 0.79 (the NQM reference's best LRs)
    flat = [(1024, 1.63), (2048, 1.79)]  # slope 0.13: the stability edge
    assert fit_trusted(math.log(64), False, linear)
    assert not fit_trusted(math.log(64), False, flat)
    assert not fit_trusted(math.log(64), False, linear[:1])
