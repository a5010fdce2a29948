"""The parallel LR search's virtual clock: its decisions in an order that does not depend on how
fast each trial runs.

The parallel search (``lr_search.parallel``) has every study in flight at once; which results a
proposal sees, and when a running trial is stopped or withdrawn, would hang on which trial
reports first in real time (measured on the quickstart: a different B_crit every run). Here each
trial lives on a virtual clock instead: it starts at the virtual time of the event that asked
for it, and its report at step ``s`` happens at ``start + s`` (one step, one time unit, at every
batch size: every batch size in flight on its own worker, as ``benchmarks/search_efficiency.py``
simulates). The driver buffers reports and hands them out in virtual-time order (ties: the trial
asked first), each only once no live trial can still send one earlier: every live trial has
reported at or past it, or has ended (conservative synchronisation, as in parallel discrete-event
simulation). So the search sees the same events in the same order whatever the real timing, and
given the same trials' reports proposes, stops and withdraws the same trials.

The cost is compute, not the answer: a trial whose report the driver holds back runs on, and
when the search then ends it at that report, the steps it ran past its end are spent (its
result ends at that step; the callbacks log no point past it). The sweep's scheduler bounds
them: a trial runs on past one held report but waits at the next while the first is still
held (:meth:`handed_to`), so it runs at most one report past its end; waiting at the first
would make trials whose reports interleave take turns instead of running together. Where
waiting could keep a trial from ever starting (the cluster holds fewer trials than the clock
has workers), the scheduler lets waiting trials run on instead. The clock has as many
virtual workers as the sweep runs trials at once (``slots``): the search asks a trial only
when one is free, on the clock as on the cluster (as ``benchmarks/search_efficiency.py
--slots`` simulates). A trial started on the clock but still queued in reality (its real
worker not yet free) holds the clock at its start until it runs.

Ray-free; the sweep's scheduler drives it (:class:`tune_jobs.scheduler.PerBatchSizeScheduler`),
keyed by proposal (study, number) and told each report's trial id.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, int]  # a proposal: (study, number)
END, ERROR = "end", "error"  # the point of a trial's last event: it ended, or errored


@dataclass
class _Live:
    start: float
    order: int  # ask order: ties at one virtual time go to the trial asked first
    step: float = -math.inf  # last step buffered
    status: Any = None  # status of the last report buffered
    finished: bool = False  # its last event is buffered: it holds nothing back
    handed: float = -math.inf  # virtual time of its last event handed out


@dataclass
class VirtualClock:
    """``slots``: virtual workers (0: one for every trial asked). The search asks a trial only
    while one is free (:meth:`free`), and the trial starts at once, so a study asks with
    every result in hand that came before a worker freed for it."""

    slots: int = 0
    now: float = 0.0  # virtual time of the last event handed out
    asked: int = 0  # trials put on the clock so far (the next one's order)
    live: dict[Key, _Live] = field(default_factory=dict)
    heap: list[tuple[float, int, int, Key, str, Any]] = field(default_factory=list)
    seq: int = 0  # pushes so far (a trial's events at one time keep their order)

    def free(self) -> bool:
        """A virtual worker is free."""
        return not self.slots or len(self.live) < self.slots

    def start(self, key: Key, order: int | None = None) -> float:
        """Put a trial asked now on the clock, started now; returns its start. ``order``: its
        place among the asks (a resumed sweep's replay passes the journaled one)."""
        order = self.asked if order is None else order
        self.asked = max(self.asked, order + 1)
        self.live[key] = _Live(self.now, order)
        return self.now

    def is_live(self, key: Key) -> bool:
        return key in self.live

    def report(self, key: Key, trial_id: str, point: dict[str, Any]) -> None:
        """Buffer one report. A step already buffered (a restored trial sends it again) is
        dropped, unless it is the same step's final report after a running one."""
        t = self.live.get(key)
        if t is None or t.finished:
            return
        step = float(point.get("step", 0))
        if step < t.step or (step == t.step and point.get("status") == t.status):
            return
        t.step, t.status = step, point.get("status")
        self._push(t, key, trial_id, point)

    def finish(self, key: Key, trial_id: str, error: bool = False) -> None:
        """The trial ended in reality (its last report is buffered): it holds nothing back, and
        its end (:data:`END`, or :data:`ERROR`) is an event of its own, after its last report:
        a trial whose reports all ran (none its own end) ends there."""
        t = self.live.get(key)
        if t is None or t.finished:
            return
        self._push(t, key, trial_id, ERROR if error else END)
        t.finished = True

    def unfinished(self) -> list[Key]:
        """The live trials still to send events (not ended in reality)."""
        return [k for k, t in self.live.items() if not t.finished]

    def buffered_to(self, key: Key) -> float | None:
        """Virtual time of the trial's last event buffered (None: none yet, or not live)."""
        t = self.live.get(key)
        return None if t is None or t.step == -math.inf else t.start + t.step

    def handed_to(self, key: Key) -> float:
        """Virtual time up to which the trial's events have been handed out (inf once the
        search has ended it: nothing of it is held back)."""
        t = self.live.get(key)
        return math.inf if t is None else t.handed

    def end(self, key: Key) -> None:
        """The search ended the trial (a result, a stop, a withdrawal): its later reports, the
        steps it ran past that end, are never handed out, and its worker is free."""
        self.live.pop(key, None)

    def frontier(self) -> float:
        """The earliest virtual time a live trial could still report at or before."""
        return min(
            (t.start + max(t.step, 0.0) for t in self.live.values() if not t.finished),
            default=math.inf,
        )

    def pop(self) -> tuple[Key, str, Any] | None:
        """The next event that no live trial can precede: (key, trial id, point, or :data:`END`
        or :data:`ERROR`); None when none is safe yet."""
        frontier = self.frontier()
        while self.heap:
            at, _, _, key, trial_id, point = self.heap[0]
            if key not in self.live:  # past the trial's end: dropped
                heapq.heappop(self.heap)
                continue
            if at > frontier:
                return None
            heapq.heappop(self.heap)
            self.now = max(self.now, at)
            self.live[key].handed = at
            return key, trial_id, point
        return None

    def _push(self, t: _Live, key: Key, trial_id: str, point: Any) -> None:
        self.seq += 1
        at = t.start + max(t.step, 0.0)
        heapq.heappush(self.heap, (at, t.order, self.seq, key, trial_id, point))
