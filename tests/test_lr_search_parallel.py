"""The LR search's parallel mode (real Optuna, no Ray): every batch size in flight from the
start, a coarse pass, placeholders, withdrawals (``LRSearch(parallel=True)``). The sweep-level
tests (Ray Tune, the journal, resume) are in tests/test_parallel_search.py."""

from __future__ import annotations

import math

import pytest
from test_lr_search import best_lr

from tune_jobs.lr_search import WAIT, LRSearch, Outcome, Proposal


def _synthetic(s: LRSearch, p) -> Outcome:
    """The outcome run_to_end gives: reached near the best LR, stopped past 1.3x it."""
    opt = best_lr(p.batch_size)
    steps = 1000 * (1 + 64 / p.batch_size) * (1 + 2 * math.log(p.lr / opt) ** 2)
    if p.lr > 1.3 * opt:
        bound = s.steps_bound(p.study)
        run = bound if math.isfinite(bound) else 5000.0
        return Outcome("stopped_early", None, 0.3, int(run), run if math.isfinite(bound) else None)
    return Outcome("reached", steps, 0.1, int(steps))


def test_parallel_starts_every_batch_size_at_once_and_withdraws_trials_the_fit_moved_from():
    s = LRSearch([4, 64, 256], [0], 1e-3, 2.0, 8, converge_tol=0.01, parallel=True)
    first = {p.batch_size: p for p in iter(s.ask, WAIT)}
    assert set(first) == {4, 64, 256} and s.ask() == WAIT  # one trial per study, all in flight
    assert {p.lr for p in first.values()} == {2.0}  # the coarse pass: the top of the range
    for p in first.values():
        s.tell(p, _synthetic(s, p), 10**6, 0.2, "min")  # too large everywhere: fails fast
    second = {p.batch_size: p for p in iter(s.ask, WAIT)}
    assert second[256].lr == 1.0  # the largest halves, as in the cascade
    assert second[64].lr == second[4].lr == pytest.approx(2.0 / 1.1**2)  # coarse step down
    for b in (4, 64):
        s.tell(second[b], _synthetic(s, second[b]), 10**6, 0.2, "min")
    held = {p.batch_size: p for p in iter(s.ask, WAIT)}
    assert held[64].lr == held[4].lr == 1e-3  # nothing reached yet: low placeholders
    assert not s.obsolete(held[64]) and not s.obsolete(held[4])
    p = second[256]
    while not s.finished("bs256-seed0"):  # the cheap study finishes while the others run
        s.tell(p, _synthetic(s, p), 10**6, 0.2, "min")
        if not s.finished("bs256-seed0"):
            p = s.ask()
            assert p.batch_size == 256
    assert s.ask() is WAIT  # bs4 and bs64 still have their placeholders in flight
    # bs64 is two octaves from the finished bs256: the fit predicts it, far from 1e-3
    assert s.obsolete(held[64])
    # bs4 is too far for the fit, but the low guess (bs256's best, scaled linearly) rose
    assert s.obsolete(held[4])
    s.withdraw(held[64])
    assert s.asked["bs64-seed0"] == 2 and s.states["bs64-seed0"].withdrawn == 1
    assert s.studies["bs64-seed0"].trials[held[64].number].state.name == "FAIL"
    again = s.ask()
    assert again.batch_size == 64 and again.lr == s._seed_lrs(64, 0)[0]  # follows the fit
    assert abs(math.log(again.lr / best_lr(64))) < math.log(2)
    assert not s.obsolete(again)  # proposed from the fit as it stands
    s.withdraw(held[4])
    low = s.ask()
    assert low.batch_size == 4 and low.lr == s.best_lr("bs256-seed0") * 4 / 256
    assert not s.obsolete(low) and s.ask() == WAIT
    # a reached trial of its own: the study's line search leads, nothing is withdrawn
    s.tell(again, _synthetic(s, again), 10**6, 0.2, "min")
    nxt = s.ask()
    assert nxt.batch_size == 64
    s.states["bs256-seed0"].best = (1000.0, 100.0)  # even if the fit moved far
    assert not s.obsolete(nxt)


def test_parallel_line_search_ignores_far_failures_of_the_coarse_pass():
    pts = [(math.log(0.014), 1.5e6), (math.log(1.65), 2e7), (math.log(2.0), 3e7)]
    par = LRSearch([4, 64], [0], 1e-3, 2.0, 8, parallel=True)
    par.reached_cut = 1e7
    assert par._near_best(pts) == pts[:1]  # 1.65 and 2.0 bracket nothing near 0.014
    near = [(math.log(0.014), 1.5e6), (math.log(0.02), 2e7)]
    assert par._near_best(near) == near  # within FAR_MISS: a bracket side
    cas = LRSearch([4, 64], [0], 1e-3, 2.0, 8, cascade=True)
    cas.reached_cut = 1e7
    assert cas._near_best(pts) == pts  # the cascade's line search is unchanged


def test_obsolete_is_off_in_the_other_modes():
    for kw in ({"cascade": True}, {"pipeline": 2}, {}):
        s = LRSearch([4, 64], [0], 1e-3, 2.0, 8, converge_tol=0.01, synchronous=False, **kw)
        p = s.ask_study("bs4-seed0")
        q = s.ask_study("bs64-seed0")
        s.tell(q, Outcome("reached", 100, 0.1, 100), 10**6, 0.2, "min")
        s.states["bs64-seed0"].converged = True
        assert not s.obsolete(p)


def test_parallel_basis_and_withdrawals_survive_a_resume():
    s = LRSearch([8, 32], [0], 1e-3, 2.0, 6, converge_tol=0.01, parallel=True)
    a, b = s.ask(), s.ask()
    s.withdraw(a)
    state = s.state()
    s2 = LRSearch([8, 32], [0], 1e-3, 2.0, 6, converge_tol=0.01, parallel=True)
    s2.load_state(state, {b.study: {b.number}})
    assert s2.states[b.study].basis == s.states[b.study].basis == {b.number: math.inf}
    assert s2.states[a.study].withdrawn == 1 and s2.asked == s.asked


def test_parallel_steps_out_finely_from_a_best_just_below_a_failure():
    s = LRSearch([4, 64], [0], 1e-3, 2.0, 8, converge_tol=0.01, parallel=True)
    top = s.ask_study("bs4-seed0")
    s.tell(top, Outcome("stopped_early", None, 0.3, 900, 900.0), 10**6, 0.2, "min")
    coarse = s.ask_study("bs4-seed0")
    assert coarse.lr == pytest.approx(2.0 / 1.1**2)
    s.tell(coarse, Outcome("reached", 8000, 0.1, 8000), 10**6, 0.2, "min")
    # the failure at 2.0 is one coarse step above: step down by SEED_STEP, not by 2x (as a
    # study with nothing finished nearby would: 0.83)
    assert s.ask_study("bs4-seed0").lr == pytest.approx(coarse.lr / 1.1)


def test_parallel_study_slower_than_a_smaller_batch_size_tries_the_neighbours_bests_so_far():
    s = LRSearch([64, 256], [0], 1e-3, 2.0, 8, converge_tol=0.01, parallel=True)
    top = s.ask_study("bs64-seed0")
    s.tell(top, Outcome("stopped_early", None, 0.3, 900, 900.0), 10**6, 0.2, "min")
    fast = s.ask_study("bs64-seed0")  # the coarse step: reaches fast (bs64 not finished)
    s.tell(fast, Outcome("reached", 5000, 0.1, 5000), 10**6, 0.2, "min")
    for steps in (None, 20000):  # bs256: 2.0 diverges, the coarse step reaches, slower
        p = s.ask_study("bs256-seed0")
        out = Outcome("reached", steps, 0.1, steps) if steps else Outcome("diverged", None, None, 9)
        s.tell(p, out, 10**6, 0.2, "min")
    assert p.lr == fast.lr and s.steps_bound("bs256-seed0") == 5000 * 1.5
    # no anchor (20000 steps > bs64's 5000 x slack) and nothing finished: bs64's best so far
    # points the way, but every guess from it is capped at its LR below the diverged 2.0, and
    # tried; the placeholder is then bs64's LR unscaled (not 4x it: above the stability edge)
    assert s._seed_lrs(256, 0) == []  # the finished-only fit has nothing yet
    assert set(s._seed_lrs(256, 0, finished_only=False)) == {fast.lr}
    assert s._low_guess("bs256-seed0", 256, 0) == fast.lr


@pytest.mark.parametrize(("steps", "factor"), [(6990, 2), (5000, 2)])
def test_parallel_steps_out_by_one_step_from_a_flat_bottom(steps, factor):
    # 2.0 fails; the coarse step (1.65) reaches in 8000, one step down (1.5) in 7000, a 2x
    # step down (0.75) in `steps`. A gain under converge_tol (0.1%) is the curve's flat
    # bottom, where doubling the step would overshoot the optimum: one step (2x) again. A
    # real gain (29%) is a slope, whose step would double the last gap (4x), but no step
    # goes past STEP_MAX (2x) in parallel mode (test_parallel_expanding_step_stops_at_step_max).
    s = LRSearch([4, 64], [0], 1e-3, 2.0, 8, converge_tol=0.01, parallel=True)
    top = s.ask_study("bs4-seed0")
    s.tell(top, Outcome("stopped_early", None, 0.3, 900, 900.0), 10**6, 0.2, "min")
    lr_steps = [8000, 7000, steps]
    for n in lr_steps:
        p = s.ask_study("bs4-seed0")
        s.tell(p, Outcome("reached", n, 0.1, n), 10**6, 0.2, "min")
    assert p.lr == pytest.approx(2.0 / 1.1**3 / 2)  # 1.65, 1.5, 0.75
    assert s.ask_study("bs4-seed0").lr == pytest.approx(p.lr / factor)


def test_parallel_coarse_pass_starts_below_a_larger_batch_sizes_failure():
    s = LRSearch([8, 64], [0], 1e-3, 2.0, 8, converge_tol=0.01, parallel=True)
    top = s.ask_study("bs64-seed0")
    assert top.lr == 2.0
    s.tell(top, Outcome("diverged", None, None, 9), 10**6, 0.2, "min")
    # 2.0 diverged at B = 64: the stability edge is no higher at B = 8, start a step below
    first = s.ask_study("bs8-seed0")
    assert first.lr == pytest.approx(2.0 / 1.1**2)
    # an ASHA stop says nothing about the LR (a lower one may be as slow early): not a failure
    s2 = LRSearch([8, 64], [0], 1e-3, 2.0, 8, converge_tol=0.01, parallel=True)
    top = s2.ask_study("bs64-seed0")
    s2.tell(top, Outcome("stopped_early", None, 0.3, 200, None), 10**6, 0.2, "min")
    assert s2.ask_study("bs8-seed0").lr == 2.0


def _two_coarse_failures(s, name, max_steps=1000):
    for _ in range(2):
        p = s.ask_study(name)
        s.tell(p, Outcome("stopped_early", None, 0.3, 400, 400.0), max_steps, 0.2, "min")


def test_parallel_placeholder_stays_where_the_step_budget_can_reach_the_target():
    # B = 64 reached at LR 1.0 in 200 steps: a "time" (LR x steps) of 200. Below
    # 1.25 x 200 / 1000 = 0.25 a trial at B = 8 cannot reach within max_steps = 1000 (noise
    # only adds to the time): the placeholder is 0.25, not the linearly scaled 0.125, which
    # would run to max_steps and cost a trial of the study's budget.
    s = LRSearch([8, 64], [0], 1e-3, 2.0, 8, converge_tol=0.01, parallel=True)
    top = s.ask_study("bs64-seed0")
    s.tell(top, Outcome("diverged", None, None, 9), 1000, 0.2, "min")
    half = s.ask_study("bs64-seed0")
    assert half.lr == 1.0
    s.tell(half, Outcome("reached", 200, 0.1, 200), 1000, 0.2, "min")
    _two_coarse_failures(s, "bs8-seed0")
    assert s.ask_study("bs8-seed0").lr == pytest.approx(0.25)
    # with an unbounded budget the linear rule's 0.125 stands
    s = LRSearch([8, 64], [0], 1e-3, 2.0, 8, converge_tol=0.01, parallel=True)
    s.tell(s.ask_study("bs64-seed0"), Outcome("diverged", None, None, 9), 10**7, 0.2, "min")
    s.tell(s.ask_study("bs64-seed0"), Outcome("reached", 200, 0.1, 200), 10**7, 0.2, "min")
    _two_coarse_failures(s, "bs8-seed0", max_steps=10**7)
    assert s.ask_study("bs8-seed0").lr == pytest.approx(0.125)


def test_parallel_placeholder_never_below_the_jobs_lr_min_nor_withdrawn_for_a_tried_one():
    s = LRSearch([8, 64], [0], 1e-3, 2.0, 8, converge_tol=0.01, parallel=True)
    _two_coarse_failures(s, "bs8-seed0")
    s.states["bs8-seed0"].range = (2.5e-4, 2.0)  # widened below lr.min by failures at its edge
    low = s.ask_study("bs8-seed0")
    assert low.lr == 1e-3  # the job's lr_search.min, not the widened range's bottom
    s.tell(low, Outcome("not_reached", None, 0.3, 1000), 1000, 0.2, "min")
    # the low guess is still 1e-3, tried: a trial the search proposed below it instead is not
    # withdrawn for it (1e-3 is not proposed again: it would be withdrawn forever)
    below = Proposal("bs8-seed0", 8, 0, 5e-4, 99)
    assert s._low_guess("bs8-seed0", 8, 0) == 1e-3
    assert not s.obsolete(below)


@pytest.mark.parametrize(
    "finished, scatter, step",
    [((64, 256, 1024), 1.0, 1.1), ((64, 256, 1024), 2.0, 2.0), ((64, 1024), 1.0, 2.0)],
)
def test_parallel_first_step_from_a_predicted_seed_is_the_fits_own_error(finished, scatter, step):
    """Finished batch sizes whose best LRs lie on the fit's curve: the line search steps out
    of its seed by SEED_STEP (the NQM); scattered 2x around it (digits): by 2x, as far as the
    fit is measured to miss (steps of 1.1x left digits' small batch sizes short of their
    optimum in three trials); two finished, the error not measured yet: 2x."""

    def curve(b):
        return 0.5 / (1 + 64 / b)

    s = LRSearch([16, 64, 256, 1024], [0], 1e-3, 2.0, 8, converge_tol=0.01, parallel=True)
    for b in finished:
        st = s.states[f"bs{b}-seed0"]
        st.best = (100.0, curve(b) * (scatter if b == 256 else 1.0))
        st.converged = True
    seed = s.ask_study("bs16-seed0")
    assert seed.lr == pytest.approx(s._seed_lrs(16, 0)[0])  # the fit, no coarse pass
    s.tell(seed, Outcome("reached", 500, 0.1, 500), 10**6, 0.2, "min")
    assert s.ask_study("bs16-seed0").lr == pytest.approx(seed.lr * step)


def test_parallel_failed_coarse_trials_do_not_count_against_the_budget():
    # A study of 3 trials: its two coarse-pass trials (down from the top of the range) fail
    # at a noise floor (on digits such a trial runs 400 steps at chance level before the
    # plateau rule stops it); the study still asks 3 line-search trials after them.
    s = LRSearch([8, 64], [0], 1e-3, 2.0, 3, converge_tol=0.01, parallel=True)
    _two_coarse_failures(s, "bs8-seed0")
    st = s.states["bs8-seed0"]
    assert st.free == 2 and len(st.coarse) == 2 and not s.finished("bs8-seed0")
    later = []
    for _ in range(3):
        p = s.ask_study("bs8-seed0")
        later.append(p.number)
        s.tell(p, Outcome("not_reached", None, 0.3, 1000), 1000, 0.2, "min")
    assert not set(later) & set(st.coarse) and st.free == 2  # later failures count
    assert s.finished("bs8-seed0") and st.told == 5
    nxt = s.ask()
    assert nxt.batch_size == 64 and s.ask() == WAIT  # bs8 asks no more
    # a coarse trial that reached counts as any other; the largest halves from the top,
    # a coarse pass of its own
    s = LRSearch([8, 64], [0], 1e-3, 2.0, 3, converge_tol=0.01, parallel=True)
    top = s.ask_study("bs64-seed0")
    s.tell(top, Outcome("diverged", None, None, 9), 1000, 0.2, "min")
    half = s.ask_study("bs64-seed0")
    s.tell(half, Outcome("reached", 200, 0.1, 200), 1000, 0.2, "min")
    st = s.states["bs64-seed0"]
    assert st.coarse == [top.number, half.number] and st.free == 1
    state = s.state()
    s2 = LRSearch([8, 64], [0], 1e-3, 2.0, 3, converge_tol=0.01, parallel=True)
    s2.load_state(state, {})
    assert s2.states["bs64-seed0"].coarse == st.coarse and s2.states["bs64-seed0"].free == 1


def test_no_trial_is_free_outside_the_parallel_mode():
    for kw in ({"cascade": True}, {"pipeline": 2}, {"synchronous": False}):
        s = LRSearch([8, 64], [0], 1e-3, 2.0, 3, converge_tol=0.01, **kw)
        for _ in range(2):
            p = s.ask_study("bs64-seed0")
            s.tell(p, Outcome("diverged", None, None, 9), 1000, 0.2, "min")
        assert s.states["bs64-seed0"].free == 0 and not s.states["bs64-seed0"].coarse


def test_parallel_expanding_step_stops_at_step_max():
    # 0.1 then 0.2 (a 2x step) gained 10%: a slope to follow. The other modes double the
    # step (0.8); the parallel search steps 2x again (STEP_MAX), which on digits would have
    # kept a trial of five that 4x past a gain lost to a failure.
    for kw, expect in (({"parallel": True}, 0.4), ({"synchronous": False}, 0.8)):
        s = LRSearch([8, 64], [0], 1e-3, 2.0, 8, converge_tol=0.01, **kw)
        s.reached_cut = 1000.0
        s.states["bs64-seed0"].results = {0.1: 200.0, 0.2: 180.0}
        assert s._next_lr("bs64-seed0", 64, 0) == pytest.approx(expect)


def test_parallel_tie_between_bests_and_a_flat_step_follow_the_neighbours():
    # bs16 tied at 0.094 and 0.103 (420 steps each, as on digits, seed 1); bs8 and bs32
    # reached fastest at 0.26 and 0.28. The parallel search takes the tied best nearer
    # their guess (0.103) and steps up from it; the other modes keep the lowest LR and step
    # down. Nor has the parallel study converged, its best at the top of what it tried.
    def search(**kw):
        s = LRSearch([8, 16, 32], [0], 1e-3, 2.0, 8, converge_tol=0.01, **kw)
        s.reached_cut = 1000.0
        for b, lr in ((8, 0.26), (32, 0.28)):
            s.states[f"bs{b}-seed0"].results = {lr: 300.0}
            s.states[f"bs{b}-seed0"].best = (300.0, lr)
        s.states["bs16-seed0"].results = {0.094: 420.0, 0.0894: 1e6, 0.103: 420.0}
        return s

    par = search(parallel=True)
    assert par._seed_lrs(16, 0, finished_only=False)[0] > 0.25
    # no gain from 0.094 to 0.103: its own trials say nothing of how far the optimum is,
    # the neighbours say 2.5x: a full STEP_MAX (2x), not the fit's error
    assert par._next_lr("bs16-seed0", 16, 0) == pytest.approx(0.206)
    assert not par.converged("bs16-seed0")
    other = search(synchronous=False)
    assert other._next_lr("bs16-seed0", 16, 0) < 0.103  # inside the bracket or below
    # no neighbours: of tied bests the highest LR
    lone = LRSearch([16], [0], 1e-3, 2.0, 8, converge_tol=0.01, parallel=True)
    pts = [(math.log(0.094), 420.0), (math.log(0.103), 420.0)]
    assert lone._best_index(pts, 16, 0) == 1
    assert LRSearch([16], [0], 1e-3, 2.0, 8)._best_index(pts, 16, 0) == 0
