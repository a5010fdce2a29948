"""The sweep's journal of finished trials: ``<run folder>/finished.jsonl``, one JSON line each.

A trial counts as finished only once its line is on disk: the searcher appends it (one
``write`` of the whole line, then ``fsync``) before it tells the search the result, before
MLflow hears of it and before Tune checkpoints anything. So after a killed driver the journal
holds every result the search ever acted on, and ``critbatch resume`` rebuilds the search
from it (:meth:`tune_jobs.searcher.SweepSearcher.replay`) instead of from Tune's snapshot,
which lags behind by up to a checkpoint period. A line cut by the kill fails to parse and is
ignored: that trial did not finish, and runs again from its start.

Each record holds what the search was told (``outcome``), what MLflow must show (``status``,
``objective``, ``error``, ``params``), the row of the sweep's table (``row``) and the values the
scheduler's ASHA brackets recorded (``asha``), so nothing needs Tune's state to rebuild.

A parallel LR search (``lr_search.parallel``) also journals its *events*: each trial it
proposes (``{"event": "ask", ...}``, before Tune hears of it, so with no trial id yet) and each
running trial it takes back (``{"event": "withdraw", ...}``, before it tells the search). Its
proposals depend on which trials had finished when they were made, so a resumed driver replays
asks, results and withdrawals in the order they happened (:func:`read_events`). That search
runs on a virtual clock (tune_jobs/vclock.py): its events and trial records carry the virtual
time they happened at (``at``), an ask also its place among the asks (``order``), so a trial
that was running when the driver died restarts where it started on the clock. Trial records
have no ``event`` key; :func:`read_records` returns those alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

JOURNAL_FILE = "finished.jsonl"
EVENT = "event"  # the key of a search event's line: "ask" or "withdraw"
ASK, WITHDRAW = "ask", "withdraw"


def journal_path(run_dir: Path) -> Path:
    return run_dir / JOURNAL_FILE


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record durably: a single ``write`` (O_APPEND) of the whole line, then fsync."""
    line = (json.dumps(record, default=_plain) + "\n").encode()
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:  # the file's own directory entry must survive a crash too
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete trial record, in the order written; a torn last line is skipped. A trial
    journaled twice (it cannot be, but a hand-edited file might) keeps its first record."""
    return list(iter_records(path))


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """:func:`read_records` one at a time: a caller that keeps a part of each record holds no
    more (a 10,000-trial sweep's records cost ~75 MiB, its table's rows a fraction of it)."""
    return (rec for rec in iter_events(path) if EVENT not in rec)


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every complete line, trial records and search events, in the order written (a torn
    last line skipped, a trial's second record dropped)."""
    return list(iter_events(path))


def iter_events(path: Path) -> Iterator[dict[str, Any]]:
    """:func:`read_events` one at a time."""
    if not path.exists():
        return
    seen = set()
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        if EVENT not in rec:
            if rec.get("trial_id") in seen:
                continue
            seen.add(rec.get("trial_id"))
        yield rec


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):  # numpy scalars in Tune results
        return v.item()
    return str(v)
