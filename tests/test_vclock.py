"""The parallel search's virtual clock (tune_jobs/vclock.py): events handed out in virtual-time
order, each only once no live trial can still precede it, whatever order they arrived in."""

from __future__ import annotations

from tune_jobs.vclock import END, ERROR, VirtualClock


def _r(step: int, status: str = "running") -> dict:
    return {"step": step, "status": status}


def _drain(clock: VirtualClock) -> list[tuple]:
    out = []
    while (ev := clock.pop()) is not None:
        key, tid, point = ev
        out.append((tid, point if isinstance(point, str) else point["step"]))
    return out


def test_a_report_waits_until_no_live_trial_can_precede_it() -> None:
    c = VirtualClock()
    a, b = ("A", 0), ("B", 0)
    c.start(a)
    c.start(b)
    c.report(a, "a", _r(100))
    c.report(a, "a", _r(200))
    assert _drain(c) == []  # B could still report at 100 (ties: A, asked first, goes first)
    c.report(b, "b", _r(100))
    assert _drain(c) == [("a", 100), ("b", 100)]  # a's 200: b may still report at 200
    c.report(b, "b", _r(300))
    assert _drain(c) == [("a", 200)]
    assert c.now == 200


def test_a_trial_asked_later_starts_at_that_virtual_time() -> None:
    c = VirtualClock()
    a, b = ("A", 0), ("B", 0)
    c.start(a)
    c.report(a, "a", _r(100))
    assert _drain(c) == [("a", 100)]
    c.report(a, "a", _r(250))
    assert c.start(b) == 100  # asked at the event it followed: reports at 100 + its steps
    c.report(b, "b", _r(100))  # virtual time 200
    assert _drain(c) == [("b", 100)]
    c.report(b, "b", _r(200))  # 300: past a's 250
    assert _drain(c) == [("a", 250)]


def test_an_ended_trial_holds_nothing_back_and_its_later_reports_are_dropped() -> None:
    c = VirtualClock()
    a, b = ("A", 0), ("B", 0)
    c.start(a)
    c.start(b)
    c.report(a, "a", _r(100))
    c.report(a, "a", _r(200))  # ran on past where the search will end it
    c.report(b, "b", _r(150))
    assert c.pop()[1:] == ("a", _r(100))
    c.end(a)  # the search ended A at its 100 (the caller acts on each event): 200 is not its result
    assert _drain(c) == [("b", 150)]  # and nothing more of A's
    c.report(b, "b", _r(400))
    assert _drain(c) == [("b", 400)]  # B alone holds the clock now
    assert not c.is_live(a)
    c.report(a, "a", _r(300))  # reports after its end are ignored
    assert all(k != a for _, _, _, k, _, _ in c.heap)


def test_a_trial_that_ended_in_reality_ends_after_its_last_report() -> None:
    c = VirtualClock()
    a, b = ("A", 0), ("B", 0)
    c.start(a)
    c.start(b)
    c.report(a, "a", _r(100))
    c.report(a, "a", _r(100))  # a restored trial's repeat: dropped
    c.finish(a, "a")
    c.finish(b, "b", error=True)  # errored before any report: at its start
    assert _drain(c) == [("b", ERROR), ("a", 100), ("a", END)]


def test_a_final_report_at_the_last_running_step_is_kept() -> None:
    c = VirtualClock()
    a = ("A", 0)
    c.start(a)
    c.report(a, "a", _r(100))
    c.report(a, "a", _r(100, "reached"))
    c.finish(a, "a")
    events = []
    while (ev := c.pop()) is not None:
        events.append(ev[2] if isinstance(ev[2], str) else ev[2]["status"])
    assert events == ["running", "reached", END]


def test_a_worker_frees_when_the_search_ends_its_trial() -> None:
    c = VirtualClock(slots=1)
    a, b = ("A", 0), ("B", 0)
    assert c.free() and c.start(a) == 0.0 and not c.free()
    c.report(a, "a", _r(100))
    assert _drain(c) == [("a", 100)]
    c.end(a)  # at virtual time 100: the worker is free, B starts there, its step 50 at 150
    assert c.free() and c.start(b) == 100.0
    c.report(b, "b", _r(50))
    c.finish(b, "b")
    assert _drain(c) == [("b", 50), ("b", END)]
    assert c.now == 150.0
