"""The LR search core (real Optuna, no Ray): objective ordering, rounds, resume."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tune_jobs.lr_search import WAIT, LRSearch, Outcome, objective


def test_objective_ranks_reached_before_not_reached_by_best_metric():
    reached_slow = objective(Outcome("reached", 1000, 0.1, 1000), 1000, 0.2, "min")
    close = objective(Outcome("not_reached", None, 0.21, 1000), 1000, 0.2, "min")
    far = objective(Outcome("not_reached", None, 2.0, 1000), 1000, 0.2, "min")
    diverged = objective(Outcome("diverged", None, None, 10), 1000, 0.2, "min")
    assert reached_slow < close < far < diverged
    acc_close = objective(Outcome("stopped_early", None, 0.94, 50), 1000, 0.95, "max")
    acc_far = objective(Outcome("stopped_early", None, 0.50, 50), 1000, 0.95, "max")
    assert acc_close < acc_far


def test_rounds_wait_until_every_study_reported():
    s = LRSearch([8, 16], [0], 1e-3, 1.0, 3, seed=0)
    a, b = s.ask(), s.ask()
    assert {a.batch_size, b.batch_size} == {8, 16}
    assert s.ask() == WAIT  # round 0 in flight
    s.tell(a, Outcome("reached", 100, 0.1, 100), 1000, 0.2, "min")
    assert s.ask() == WAIT  # bs16 has not reported yet
    s.tell(b, Outcome("reached", 50, 0.1, 50), 1000, 0.2, "min")
    c = s.ask()
    assert c not in (None, WAIT)
    assert s.steps_bound("bs16-seed0") == 50


def test_same_seed_same_proposals_whatever_the_completion_order():
    def run(order):
        s = LRSearch([8, 32, 128], [0], 1e-3, 1.0, 4, seed=3)
        lrs = []
        for _ in range(4):
            props = [s.ask() for _ in range(3)]
            lrs.extend(round(p.lr, 12) for p in sorted(props, key=lambda p: p.batch_size))
            for p in props if order else reversed(props):
                steps = 100 * abs(math.log(p.lr / (0.01 * p.batch_size**0.5)))
                s.tell(p, Outcome("reached", 10 + steps, 0.1, 10 + steps), 1000, 0.2, "min")
        assert s.ask() is None
        return lrs

    assert run(True) == run(False)


def test_a_round_sees_only_earlier_rounds_however_tune_interleaves_asks_and_results():
    """Tune suggests one trial at a time as slots free up, so within a round some trials are
    asked after others have reported: proposals and stop bounds must not depend on that."""

    def outcome(p):
        steps = 10 + 100 * abs(math.log(p.lr / (0.01 * p.batch_size**0.5)))
        return Outcome("reached", steps, 0.1, steps)

    def run(interleave):
        s = LRSearch([8, 32, 128], [0], 1e-3, 1.0, 5, seed=3)
        lrs, bounds = [], []
        while True:
            props = []
            while (p := s.ask()) not in (None, WAIT):
                props.append(p)
                if interleave:  # the next ask comes after this result
                    bounds.append(round(s.steps_bound("bs128-seed0"), 9))
                    s.tell(p, outcome(p), 1000, 0.2, "min")
            if not props:
                break
            if not interleave:
                for p in props:
                    bounds.append(round(s.steps_bound("bs128-seed0"), 9))
                    s.tell(p, outcome(p), 1000, 0.2, "min")
            lrs.extend((p.study, p.number, round(p.lr, 12)) for p in props)
        return sorted(lrs), bounds

    interleaved, eager = run(True), run(False)
    assert interleaved == eager
    assert len(eager[0]) > 3 * 2  # several rounds ran


def test_neighbour_seeding_and_grid():
    s = LRSearch([8, 32], [0], 1e-3, 10.0, 3, algorithm="grid")
    lrs = sorted(p.lr for p in [s.ask(), s.ask()])
    assert math.isclose(lrs[0], lrs[1])  # both studies start on the same grid point
    g = LRSearch([8], [0], 1e-3, 1e-1, 3, algorithm="grid")
    got = sorted(g.ask_study("bs8-seed0").lr for _ in range(3))
    assert [round(x, 6) for x in got] == [0.001, 0.01, 0.1]


def test_resume_marks_stale_running_trials_failed(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    s = LRSearch([8], [0], 1e-3, 1.0, 4, storage=url)
    p = s.ask()
    s.tell(p, Outcome("reached", 40, 0.1, 40), 1000, 0.2, "min")
    stale = s.ask()  # asked, then the driver died before Tune recorded it
    state = s.state()
    state["asked"]["bs8-seed0"] = 1  # Tune's checkpoint predates the stale ask
    s2 = LRSearch([8], [0], 1e-3, 1.0, 4, storage=url)
    s2.load_state(state, {"bs8-seed0": {p.number}})
    trials = s2.studies["bs8-seed0"].get_trials()
    assert trials[stale.number].state.name == "FAIL"
    assert s2.asked["bs8-seed0"] == 1 and s2.ask() not in (None, WAIT)


def test_trial_stopped_by_the_bound_is_censored_not_a_miss():
    slow = objective(Outcome("reached", 133_000, 0.01, 133_000), 2_000_000, 0.01, "min")
    censored = objective(
        Outcome("stopped_early", None, 0.04, 39_000, censored_at=38_953), 2_000_000, 0.01, "min"
    )
    fast = objective(Outcome("reached", 10_354, 0.01, 10_354), 2_000_000, 0.01, "min")
    miss = objective(Outcome("stopped_early", None, 0.04, 5_000), 2_000_000, 0.01, "min")
    assert fast < slow < censored < miss
    closer = objective(
        Outcome("stopped_early", None, 0.02, 39_000, censored_at=38_953), 2_000_000, 0.01, "min"
    )
    assert closer < censored


# A model of steps to target against LR: smooth in log LR around the best LR, which scales
# linearly at small batch sizes and saturates at large ones; past 1.3x the best LR the noise
# floor sits above the target (never reached), as on the NQM.
def best_lr(b: int) -> float:
    return 2.0 / (1 + 256 / b)


def run_to_end(s: LRSearch, steps_at=None) -> dict[str, list[float]]:
    """Drive a search trial by trial to its end; returns the LRs asked per study."""
    asked: dict[str, list[float]] = {}
    while (p := s.ask()) is not None:
        assert p != WAIT
        asked.setdefault(p.study, []).append(p.lr)
        opt = best_lr(p.batch_size)
        steps = 1000 * (1 + 64 / p.batch_size) * (1 + 2 * math.log(p.lr / opt) ** 2)
        if p.lr > 1.3 * opt:
            bound = s.steps_bound(p.study)
            run = bound if math.isfinite(bound) else 5000.0
            out = Outcome(
                "stopped_early", None, 0.3, int(run), run if math.isfinite(bound) else None
            )
        else:
            out = Outcome("reached", round(steps), 0.1, round(steps))
        s.tell(p, out, 10**6, 0.2, "min")
    return asked


def test_study_stops_once_its_line_search_converged():
    full = run_to_end(LRSearch([64], [0], 1e-3, 2.0, 12, synchronous=False))
    assert len(full["bs64-seed0"]) == 12  # off: trials_per_batch_size trials
    s = LRSearch([64], [0], 1e-3, 2.0, 12, synchronous=False, converge_tol=0.01)
    short = run_to_end(s)["bs64-seed0"]
    assert 3 <= len(short) < 12 and "bs64-seed0" in s.done
    assert abs(math.log(s.best_lr("bs64-seed0") / best_lr(64))) < math.log(1.1)
    assert s.remaining() == 0 and s.ask() is None


def test_a_converged_study_does_not_hold_back_the_rounds():
    s = LRSearch([16, 64], [0], 1e-3, 2.0, 12, seed=1, converge_tol=0.01)
    s.states["bs16-seed0"].converged = True  # as if bs16 converged after its first round
    for _ in range(3):
        p = s.ask()
        assert p not in (None, WAIT) and p.study == "bs64-seed0"
        s.tell(p, Outcome("reached", 100, 0.1, 100), 1000, 0.2, "min")


def test_cascade_runs_largest_batch_size_first_and_seeds_the_next_from_it():
    sizes = [4, 16, 64, 256]
    s = LRSearch(sizes, [0], 1e-3, 2.0, 12, converge_tol=0.01, cascade=True)
    first = s.ask()
    assert first.batch_size == 256 and first.lr == 2.0  # top of the range: fails fast
    assert s.ask() == WAIT  # one trial in flight per study, the next batch size not started
    s.tell(first, Outcome("diverged", None, None, 3), 10**6, 0.2, "min")
    assert s.ask().lr == 1.0  # halved until a trial reaches
    s = LRSearch(sizes, [0], 1e-3, 2.0, 12, converge_tol=0.01, cascade=True)
    asked = run_to_end(s)
    order = list(asked)
    assert order == ["bs256-seed0", "bs64-seed0", "bs16-seed0", "bs4-seed0"]
    for b in (16, 4):  # seeded from the finished larger ones: near from the first trial
        assert abs(math.log(asked[f"bs{b}-seed0"][0] / best_lr(b))) < math.log(1.4)
        assert len(asked[f"bs{b}-seed0"]) <= 6
        assert abs(math.log(s.best_lr(f"bs{b}-seed0") / best_lr(b))) < math.log(1.1)


def test_cascade_with_two_seeds_runs_the_chains_side_by_side():
    s = LRSearch([8, 32], [0, 1], 1e-3, 2.0, 6, converge_tol=0.01, cascade=True)
    a, b = s.ask(), s.ask()
    assert {(a.batch_size, a.seed), (b.batch_size, b.seed)} == {(32, 0), (32, 1)}
    assert s.ask() == WAIT


def test_examples_bound_from_a_larger_batch_size():
    s = LRSearch([8, 16], [0], 1e-3, 1.0, 4, synchronous=False, cross_slack=1.0)
    p16 = s.ask_study("bs16-seed0")
    s.tell(p16, Outcome("reached", 500, 0.1, 500), 10**6, 0.2, "min")
    # B S(B) grows with B: batch size 8 needs at most 16 / 8 x 500 steps at its best LR
    assert s.steps_bound("bs8-seed0") == 1000
    assert s.steps_bound("bs16-seed0") == 500


def test_behind_compares_with_the_fastest_trial_at_the_same_step():
    s = LRSearch([8], [0], 1e-3, 1.0, 4, synchronous=False, lag=0.25)
    p = s.ask_study("bs8-seed0")
    curve = tuple((float(k), 1.0 / k) for k in range(100, 1001, 100))  # loss 1 / step
    s.tell(p, Outcome("reached", 1000, 0.001, 1000, curve=curve), 10**6, 0.002, "min")
    assert not s.behind("bs8-seed0", 400, 1.0)  # before half the fastest trial's steps
    assert s.behind("bs8-seed0", 600, 1 / 350)  # the fastest had 1/400 by step 450
    assert not s.behind("bs8-seed0", 600, 1 / 500)  # a lag of 1/6 only
    off = LRSearch([8], [0], 1e-3, 1.0, 4, synchronous=False)
    q = off.ask_study("bs8-seed0")
    off.tell(q, Outcome("reached", 1000, 0.001, 1000, curve=curve), 10**6, 0.002, "min")
    assert not off.behind("bs8-seed0", 600, 1.0)
    acc = LRSearch([8], [0], 1e-3, 1.0, 4, synchronous=False, lag=0.25)  # accuracy: higher wins
    r = acc.ask_study("bs8-seed0")
    up = tuple((float(k), k / 1000) for k in range(100, 1001, 100))
    acc.tell(r, Outcome("reached", 1000, 1.0, 1000, curve=up), 10**6, 0.99, "max")
    assert acc.behind("bs8-seed0", 600, 0.3) and not acc.behind("bs8-seed0", 600, 0.5)


def test_state_round_trip_keeps_converged_studies_and_results(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    s = LRSearch([16, 64], [0], 1e-3, 2.0, 12, storage=url, converge_tol=0.01, cascade=True)
    while "bs64-seed0" not in s.done:
        p = s.ask()
        opt = best_lr(64)
        steps = round(2000 * (1 + 2 * math.log(p.lr / opt) ** 2))
        ok = p.lr <= 1.3 * opt
        out = Outcome("reached", steps, 0.1, steps) if ok else Outcome("diverged", None, None, 5)
        s.tell(p, out, 10**6, 0.2, "min")
    nxt = s.ask()  # bs16 starts now, from bs64's converged best
    assert nxt.batch_size == 16
    s2 = LRSearch([16, 64], [0], 1e-3, 2.0, 12, storage=url, converge_tol=0.01, cascade=True)
    s2.load_state(s.state(), {"bs16-seed0": {nxt.number}})
    assert s2.done == {"bs64-seed0"} and s2.results == s.results
    assert s2.ask() == WAIT  # bs16's trial is still in flight; bs64 is not asked again


def _drive_in_parallel(s: LRSearch, finish: int) -> tuple[dict[str, list[float]], int]:
    """Run a search as Tune would with a worker for every trial: ask until WAIT, then finish
    one trial in flight (``finish``: its index, 0 the oldest, -1 the newest), and again.
    Returns the LRs asked per study and the most studies ever in flight at once."""
    asked: dict[str, list[float]] = {}
    in_flight, most = [], 0
    while True:
        while (p := s.ask()) not in (None, WAIT):
            in_flight.append(p)
            asked.setdefault(p.study, []).append(p.lr)
        most = max(most, len({q.study for q in in_flight}))
        if not in_flight:
            assert p is None
            return asked, most
        q = in_flight.pop(finish)
        steps = (
            1000 * (1 + 64 / q.batch_size) * (1 + 2 * math.log(q.lr / best_lr(q.batch_size)) ** 2)
        )
        s.tell(q, Outcome("reached", steps, 0.1, int(steps)), 10**6, 0.2, "min")


def test_pipeline_starts_a_study_once_the_next_larger_one_is_lead_trials_ahead():
    s = LRSearch([4, 16, 64], [0], 1e-3, 2.0, 8, converge_tol=0.01, pipeline=2)
    first = s.ask()
    assert first.batch_size == 64 and first.lr == 2.0  # the largest first, top of the range
    assert s.ask() == WAIT  # one trial in flight per study; bs16 waits for 2 results of bs64
    s.tell(first, Outcome("diverged", None, None, 3), 10**6, 0.2, "min")
    second = s.ask()
    assert second.batch_size == 64 and s.ask() == WAIT
    s.tell(second, Outcome("reached", 2000, 0.1, 2000), 10**6, 0.2, "min")
    assert {s.ask().batch_size, s.ask().batch_size} == {16, 64}  # now both in flight


def test_pipeline_has_every_batch_size_in_flight_and_the_same_trials_whatever_the_order():
    sizes = [4, 16, 64, 256]
    oldest_first, most = _drive_in_parallel(
        LRSearch(sizes, [0], 1e-3, 2.0, 10, converge_tol=0.01, pipeline=2), 0
    )
    newest_first, _ = _drive_in_parallel(
        LRSearch(sizes, [0], 1e-3, 2.0, 10, converge_tol=0.01, pipeline=2), -1
    )
    assert most >= 3  # not a cascade (one study at a time): several batch sizes at once
    assert oldest_first == newest_first  # proposals never depend on completion order
    s = LRSearch(sizes, [0], 1e-3, 2.0, 10, converge_tol=0.01, pipeline=2)
    _drive_in_parallel(s, 0)
    for b in sizes:
        assert abs(math.log(s.best_lr(f"bs{b}-seed0") / best_lr(b))) < math.log(1.15)


def test_pipeline_history_survives_a_resume():
    s = LRSearch([8, 32], [0], 1e-3, 2.0, 6, converge_tol=0.01, pipeline=2)
    for _ in range(2):
        p = s.ask()
        s.tell(p, Outcome("reached", 100 * (1 + abs(math.log(p.lr))), 0.1, 100), 10**6, 0.2, "min")
    state = s.state()
    s2 = LRSearch([8, 32], [0], 1e-3, 2.0, 6, converge_tol=0.01, pipeline=2)
    s2.load_state(state, {})
    assert s2.history == s.history and s2.ask().lr == s.ask().lr


def test_the_range_widens_only_past_a_best_lr_that_points_out_there():
    """A study's range grows by 4x past the edge its best LR sits at when the best is the
    outermost LR tried there and reached the target, or missed it in a way a step further
    out may mend (too slow at the top; stalled at the bottom). Before, a high LR that
    stalled, best among failures, widened the range above an LR that diverged, and TPE
    proposed there (the parallel quickstart: 7.9 and 11 after 3.0 diverged)."""

    def study(told):
        s = LRSearch([8], [0], 1e-3, 1.0, 8, seed=0)
        for lr, out in told:
            p = dataclasses.replace(s.ask(), lr=lr)
            s.tell(p, out, 1000, 0.95, "max")
        return s.states["bs8-seed0"].range

    diverged = Outcome("diverged", None, None, 10)
    stalled = Outcome("stopped_early", None, 0.90, 400, censored_at=400)  # e.g. the plateau rule
    slow = Outcome("not_reached", None, 0.90, 1000)  # ran out of steps
    asha = Outcome("stopped_early", None, 0.50, 200)  # ASHA: not censored, says nothing
    reached = Outcome("reached", 300, 0.96, 300)
    top, bottom, neither = (1e-3, 4.0), (2.5e-4, 1.0), (1e-3, 1.0)
    assert study([(0.9, reached)]) == top
    assert study([(0.9, slow)]) == top  # too slow at the top: larger LRs may reach
    assert study([(1.0, diverged)]) == neither
    assert study([(1.0, diverged), (0.9, slow)]) == neither  # worse above it
    assert study([(1.0, diverged), (0.9, stalled)]) == neither  # the quickstart's case
    assert study([(0.9, stalled)]) == neither  # a stall at the top points down
    assert study([(1.0, diverged), (0.95, reached)]) == neither  # its edge is just above
    assert study([(1.0, asha), (0.9, reached)]) == top
    assert study([(1.2e-3, reached)]) == bottom
    assert study([(1.2e-3, stalled)]) == bottom  # a noise floor: smaller LRs may reach
    assert study([(1.2e-3, slow)]) == neither  # too slow at the bottom points up
    assert study([(1e-3, slow), (1.2e-3, reached)]) == neither  # worse below it


def test_with_nothing_reached_and_no_neighbour_the_search_splits_the_untried_range():
    """Once a study's own trials all missed and no neighbour has a best LR to start from, the
    next LR is the middle (in log) of the widest stretch of the range not tried yet, not a
    TPE draw, which with two or three trials told can land beside a failure."""
    s = LRSearch([16], [0], 0.003, 3.0, 5, seed=0)
    first = dataclasses.replace(s.ask(), lr=3.0)
    s.tell(first, Outcome("diverged", None, None, 10), 1000, 0.95, "max")
    second = s.ask()
    assert second.lr == pytest.approx(math.sqrt(0.003 * 3.0))  # below the failure
    s.tell(second, Outcome("not_reached", None, 0.8, 1000), 1000, 0.95, "max")
    third = s.ask()
    assert third.lr == pytest.approx(math.sqrt(second.lr * 3.0))  # between the two misses
    s.tell(third, Outcome("reached", 400, 0.96, 400), 1000, 0.95, "max")
    assert s.ask().lr not in (pytest.approx(third.lr),)  # a reach: the line search leads
