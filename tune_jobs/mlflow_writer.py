"""MLflow writes off Tune's event loop: a background thread with a bounded queue.

Tune calls its callbacks inside the driver's event loop, so an MLflow request made there
holds every trial's next report (a sweep of fast trials made ~114 reports/s that way, with
Tune warning that ``on_trial_result`` took 0.5-1.3 s). Here the callback only enqueues
(:meth:`MlflowWriter.put`); one thread batches what is queued into ``log_batch`` requests
per run, retries with exponential backoff, and, while the server is away or slower than the
sweep, spills to ``<run folder>/mlflow-spill.jsonl`` instead of growing the driver's memory,
then replays the spill once requests succeed again.

Nothing written twice: a point's timestamp is fixed when it is queued (the report's own), so a
request retried after its reply was lost re-sends identical points, which MLflow's SQL stores
keep once; a child run is looked up by its trial tag before it is created again after any
failure. Nothing lost: the spill is fsync'd with the rest of the run folder's files, and if the
driver dies anyway, Tune's ``result.json`` files and the journal of finished trials hold
everything, which ``resume`` and ``sync`` replay (:func:`tune_jobs.tracking.reconcile`); a spill
left by a dead driver is therefore dropped, not replayed.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag

log = logging.getLogger("critbatch.tracking")

SPILL_FILE = "mlflow-spill.jsonl"
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
QUEUE_BOUND = 20_000  # queued operations (one per report: ~10-30 points) before spilling
MAX_BACKOFF_S = 30.0
LINGER_S = 1.0  # seconds to gather operations before a request (see MlflowWriter._take)
TAKE_LIMIT = 5000  # operations sent in one pass


class MlflowWriter:
    """Writes a sweep's child runs from a background thread (see the module docstring).

    Operations, queued in order: ``("start", trial)``, ``("params", trial, {name: value})``
    (what the trial ran on, from its first report), ``("points", trial, [Metric])``,
    ``("end", trial, status, [Metric], {tag: value})``. A trial's run name and params are
    registered with :meth:`start` and its run is created on its first operation, so
    operations never wait on one another and a replayed spill needs nothing else.
    ``tracker``: a :class:`tune_jobs.tracking.Tracker`, used from the writer thread only.
    """

    def __init__(
        self,
        tracker: Any,
        spill_path: Path,
        queue_bound: int = QUEUE_BOUND,
        linger_s: float = LINGER_S,
    ):
        self.tracker = tracker
        self.linger_s = linger_s
        self.spill_path = spill_path
        self.queue: queue.Queue = queue.Queue(maxsize=queue_bound)
        self.info: dict[str, tuple[str, dict[str, Any]]] = {}  # trial -> (run name, params)
        self._lock = threading.Lock()  # guards the spill file and the spilling flag
        self._spilling = False
        self._spill = None  # the open spill file, while spilling
        self._read_at = 0  # bytes of the spill already replayed
        self._stop = threading.Event()
        self._closing = threading.Event()  # set by close(): send at once, no more gathering
        self._idle = threading.Event()
        self.failures = 0
        self.ever_failed = False
        self.spilled = 0  # operations that went through the spill file
        self.sent_points = 0
        self.drained = False  # set when the thread ended with nothing left to write
        spill_path.unlink(missing_ok=True)  # a dead driver's spill: reconcile covers it
        self._thread = threading.Thread(target=self._run, name="critbatch-mlflow", daemon=True)
        self._thread.start()

    # ---- the driver's side: never blocks on MLflow --------------------------------------------
    def start(self, trial: str, run_name: str, params: dict[str, Any]) -> None:
        self.info[trial] = (run_name, params)
        self.put(("start", trial))

    def put(self, op: tuple) -> None:
        with self._lock:
            if not self._spilling:
                try:
                    self.queue.put_nowait(op)
                    return
                except queue.Full:  # the server is slower than the sweep: spill from here on
                    self._begin_spill()
            self._write_spill([op])

    # ---- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            ops = self._take()
            if ops:
                ok = self._send(ops)
                if not ok:
                    with self._lock:  # keep them, and all that is queued, on disk meanwhile
                        self._begin_spill()
                        self._write_spill(ops + self._drain())
            elif self._spilling:
                ok = self._replay_spill()
            else:
                self._idle.set()
                if self._stop.is_set():
                    self.drained = True
                    return
                continue
            if not ok:
                if self._stop.is_set():
                    return
                self._sleep_backoff()

    def _take(self) -> list[tuple]:
        """The next operations to send: once one is queued, wait ``linger_s`` (or less, when
        closing) for more, so that a request carries many points: SQLite commits each
        ``log_batch``, and at 8 points a request it took 7 ms a call (1,100 points/s) against
        115 ms for 1,000 points (8,700/s); sending each report as it came made the writer
        slower than the synchronous flush it replaced (BENCHMARKS.md)."""
        try:
            first = self.queue.get(timeout=0.05)
        except queue.Empty:
            return []
        self._idle.clear()
        if self.queue.qsize() < TAKE_LIMIT:
            self._closing.wait(self.linger_s)
        return [first, *self._drain(limit=TAKE_LIMIT)]

    def _drain(self, limit: int | None = None) -> list[tuple]:
        out = []
        while limit is None or len(out) < limit:
            try:
                out.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return out

    def _sleep_backoff(self) -> None:
        self._stop.wait(min(MAX_BACKOFF_S, 0.25 * 2.0 ** min(self.failures, 10)))

    def _send(self, ops: list[tuple]) -> bool:
        """One pass over ``ops``: per run, its points in ``log_batch`` requests of at most
        ``MAX_BATCH``, then its end. False (and nothing dropped) on any failure."""
        points: dict[str, list[Metric]] = {}
        device: dict[str, dict[str, str]] = {}  # params learnt from a trial's first report
        ends: dict[str, tuple] = {}
        order: list[str] = []
        for op in ops:
            trial = op[1]
            if trial not in points:
                points[trial] = []
                order.append(trial)
            if op[0] == "points":
                points[trial].extend(op[2])
            elif op[0] == "params":
                device.setdefault(trial, {}).update(op[2])
            elif op[0] == "end":
                ends[trial] = op
        tr = self.tracker
        try:
            for trial in order:
                name, params = self.info.get(trial, (trial, {}))
                run_id = tr.ensure_child(trial, name, params)
                if trial in device:  # MLflow takes a param logged again with the same value
                    extra = [Param(k, str(v)) for k, v in device[trial].items()]
                    tr.client.log_batch(run_id, params=extra)
                pts = points[trial]
                for i in range(0, len(pts), MAX_BATCH):
                    tr.client.log_batch(run_id, metrics=pts[i : i + MAX_BATCH])
                self.sent_points += len(pts)
                if trial in ends:
                    _, _, status, final, tags = ends[trial]
                    tr.end_run(trial, status, final, tags)
                    self.info.pop(trial, None)
        except Exception as e:  # any transport or server error: keep everything, retry later
            self.failures += 1
            self.ever_failed = True
            tr.fresh = False  # a run may exist whose creation reply was lost: look it up
            log.warning(
                "MLflow unreachable (%s: %s); spilling to disk, retrying", type(e).__name__, e
            )
            return False
        self.failures = 0
        return True

    # ---- the spill file ------------------------------------------------------------------------
    def _begin_spill(self) -> None:  # with the lock held
        if self._spill is None:
            self._spill = open(self.spill_path, "a+")  # noqa: SIM115 (kept open while spilling)
        self._spilling = True

    def _write_spill(self, ops: list[tuple]) -> None:  # with the lock held
        for op in ops:
            self._spill.write(json.dumps(_encode(op)) + "\n")
        self.spilled += len(ops)

    def _replay_spill(self, chunk: int = 2000) -> bool:
        """Send the next ``chunk`` spilled operations; at the end of the file, stop spilling."""
        with self._lock:
            self._spill.flush()
            self._spill.seek(self._read_at)
            lines = []
            while len(lines) < chunk:
                line = self._spill.readline()
                if not line:
                    break
                lines.append(line)
            pos = self._spill.tell()
        if lines and not self._send([_decode(json.loads(x)) for x in lines]):
            return False
        with self._lock:
            self._read_at = pos
            self._spill.seek(0, 2)
            if self._spill.tell() == self._read_at:  # all replayed: back to the queue
                self._spill.close()
                self._spill, self._read_at, self._spilling = None, 0, False
                self.spill_path.unlink(missing_ok=True)
        return True

    # ---- the end --------------------------------------------------------------------------------
    def close(self, timeout_s: float = 60.0, attempts: int = 3) -> bool:
        """Write out what is queued and spilled; True when MLflow holds all of it. Gives up
        after ``timeout_s``, or once ``attempts`` requests in a row failed (the run folder
        keeps everything: ``critbatch sync`` writes it later)."""
        self.failures = 0  # short backoff from here on
        self._closing.set()
        deadline = time.time() + timeout_s
        while time.time() < deadline and self.failures < attempts:
            if self._idle.wait(0.1) and self.queue.empty() and not self._spilling:
                break
        self._stop.set()  # the thread ends at its next idle moment or failure
        self._thread.join(60)
        with self._lock:
            if self._spill is not None:
                self._spill.flush()
        return self.drained and self.queue.empty() and not self._spilling


def _encode(op: tuple) -> list:
    kind, trial = op[0], op[1]
    if kind == "start":
        return [kind, trial]
    if kind == "params":
        return [kind, trial, op[2]]
    metrics = [[m.key, m.value, m.timestamp, m.step] for m in op[2 if kind == "points" else 3]]
    if kind == "points":
        return [kind, trial, metrics]
    return [kind, trial, op[2], metrics, op[4]]


def _decode(rec: list) -> tuple:
    kind, trial = rec[0], rec[1]
    if kind == "start":
        return (kind, trial)
    if kind == "params":
        return (kind, trial, rec[2])
    if kind == "points":
        return (kind, trial, [Metric(*m) for m in rec[2]])
    return (kind, trial, rec[2], [Metric(*m) for m in rec[3]], rec[4])


__all__ = ["MlflowWriter", "RunTag"]
