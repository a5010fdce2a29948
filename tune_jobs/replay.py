"""Replaying a sweep's journal into its searcher (``critbatch resume``): the search as of the
last result it acted on, and the trials it owes (:meth:`tune_jobs.searcher.SweepSearcher.replay`).

The search is deterministic given what it was told: rounds and the cascade ask as the sweep
asked and tell each journaled trial's outcome as its proposal comes up; the parallel search
replays its journaled asks, withdrawals and results in the order they happened, moving its
virtual clock as they did. Each replayed proposal must be the journaled one (:func:`_must_match`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from trainables.api import Status
from tune_jobs.confirm import PHASE
from tune_jobs.journal import ASK, EVENT, WITHDRAW
from tune_jobs.lr_search import Outcome, Proposal

if TYPE_CHECKING:
    from tune_jobs.searcher import SweepSearcher


def _must_match(what: str, trial_id: str, lr: float, p: Proposal, number: int | None = None):
    """Replay: a journaled trial (its LR, and for an ask its number in the study) and the
    proposal the replayed search makes in its place must be the same."""
    if (number is None or number == p.number) and math.isclose(lr, p.lr, rel_tol=1e-12):
        return
    asked = "" if number is None else f" as {p.study} #{number}"
    raise RuntimeError(
        f"the journal does not match the search: {what} {trial_id} ran{asked} at lr {lr!r}, "
        f"the replayed search proposes #{p.number} at lr {p.lr!r}"
    )


def replay(s: SweepSearcher, events: list[dict[str, Any]]) -> None:
    """Rebuild the search from the journal of a sweep whose driver died
    (:func:`tune_jobs.journal.read_events`): ask as the sweep asked (the search is
    deterministic given what it was told) and tell each journaled trial's outcome as its
    proposal comes up; proposals with no record (running, or not started, when the driver
    died) are suggested again first, under new trial ids. A parallel search replays its
    journaled asks, results and withdrawals in the order they happened
    (:func:`_events`)."""
    records = [r for r in events if EVENT not in r]
    s.used_ids.update(e["trial_id"] for e in events if e.get("trial_id"))
    by_key = {(r["proposal"]["study"], r["proposal"]["number"]): r for r in records
              if r.get("phase") != PHASE and r["status"] != Status.WITHDRAWN}  # fmt: skip
    confirmed = {(r["proposal"]["study"], r["proposal"]["number"]): r for r in records
                 if r.get("phase") == PHASE}  # fmt: skip
    if s.search.parallel:
        _events(s, events, by_key)
    else:
        _asks(s, by_key)
    _confirmations(s, confirmed)


def _asks(s: SweepSearcher, by_key: dict[tuple, dict[str, Any]]) -> None:
    while True:
        p = s._ask()
        if not isinstance(p, Proposal):
            s.exhausted = p is None and not s.requeue
            break
        rec = by_key.pop((p.study, p.number), None)
        if rec is None:
            s.requeue.append(p)
            continue
        _must_match("trial", rec["trial_id"], rec["proposal"]["lr"], p)
        _tell_record(s, p, rec)
    if by_key:
        raise RuntimeError(f"journaled trials the search never proposed: {sorted(by_key)}")


def _tell_record(s: SweepSearcher, p: Proposal, rec: dict[str, Any]) -> None:
    o = rec["outcome"]
    if o is not None:
        o = Outcome(**{**o, "curve": tuple(map(tuple, o["curve"] or ()))})
    s.proposals[rec["trial_id"]] = p
    s._tell(p, o)


def _events(s: SweepSearcher, events: list[dict[str, Any]], by_key: dict[tuple, dict]) -> None:
    """Parallel search: each journaled ask is asked of its study again (and must propose
    the journaled LR), each withdrawal and result applied where it happened; asks with
    neither (running when the driver died) are owed first."""
    # On the clock, each event moves it as it did live (an ask takes a virtual worker,
    # an end frees one), so the trials in flight restart where they started on the clock
    # and report at the same virtual times.
    clock = s.clock
    asked: dict[tuple, Proposal] = {}
    for ev in events:
        kind = ev.get(EVENT)
        key = (ev["study"], ev["number"]) if kind else None
        if clock is not None and ev.get("at") is not None:
            clock.now = max(clock.now, float(ev["at"]))
        if kind == ASK:
            p = s.search.ask_study(ev["study"])
            _must_match("trial", ev.get("trial_id") or "(asked)", ev["lr"], p, ev["number"])
            asked[key] = p
            if clock is not None:
                clock.start(key, order=ev.get("order"))
                s.clock_started = True
        elif kind == WITHDRAW:
            if key not in asked:
                raise RuntimeError(f"journal: {ev['trial_id']} withdrawn but never asked")
            s.search.withdraw(asked.pop(key))
            if clock is not None:
                clock.end(key)
        elif kind is None and ev.get("phase") != PHASE and ev["status"] != Status.WITHDRAWN:
            key = (ev["proposal"]["study"], ev["proposal"]["number"])
            if key not in asked:
                raise RuntimeError(f"journal: trial {ev['trial_id']} finished but never asked")
            if clock is not None:
                clock.end(key)
            _tell_record(s, asked.pop(key), by_key.pop(key))
    s.requeue = list(asked.values())
    if clock is not None and s.clock_started:
        s.ask_on_clock()  # owed by a driver killed between a result and its asks
    s.exhausted = not s.requeue and s.search.remaining() == 0


def _confirmations(s: SweepSearcher, confirmed: dict[tuple, dict[str, Any]]) -> None:
    # Confirmation runs: those of the studies the replayed search has finished, as the sweep
    # asked them (deterministic: the study's chosen LR, seeds by number); journaled ones are
    # done, the others (running, or not started, when the driver died) are owed first.
    while (c := s.confirm.ask(s.search)) is not None:
        rec = confirmed.pop((c.study, c.number), None)
        if rec is None:
            s.confirm_requeue.append(c)
        else:
            _must_match("confirmation run", rec["trial_id"], rec["proposal"]["lr"], c)
    if confirmed:
        raise RuntimeError(f"journaled confirmation runs never due: {sorted(confirmed)}")
    s.exhausted = s.exhausted and not s.confirm_requeue and not s.confirm.pending(s.search)
