"""The LR search core (real Optuna, no Ray): objective ordering, rounds, resume."""

from __future__ import annotations

import math

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
