"""Locks that keep two sweeps from corrupting each other.

- A sweep's name is claimed with an exclusive ``flock`` on ``<run folder>/.critbatch.lock``,
  held for as long as the driver lives (the kernel drops it when the process dies, even on
  ``kill -9``, so a dead driver never blocks `critbatch resume`). A second `run` or `resume`
  of a live sweep is refused, naming the process that holds it.
- A fresh MLflow SQLite store is created (its schema migrations) by MLflow's client: the
  registry store at construction, the tracking store at the first request; two processes
  doing that at once crash one with alembic's "table already exists". Both happen under an
  ``flock`` on the store's folder, so one creates and the others wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from tune_jobs.config import JobError

LOCK_FILE = ".critbatch.lock"


class SweepClaim:
    """An open, exclusively locked lock file; :meth:`release` (or process exit) frees it."""

    def __init__(self, run_dir: Path, fd: int, created_dir: bool):
        self.run_dir = run_dir
        self.fd: int | None = fd
        self.created_dir = created_dir  # this claim made the run folder (remove it on failure)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def _try_lock(run_dir: Path) -> int | None:
    """The locked descriptor of the run folder's lock file, or None when another process
    holds it."""
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


def holder(run_dir: Path) -> str | None:
    """Who runs the sweep in ``run_dir`` now ("pid 123 on host"), or None if no live process
    holds it. Reads without creating anything."""
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return path.read_text().strip() or "another process"
    finally:
        os.close(fd)
    return None


def _busy(name: str, run_dir: Path, who: str | None) -> JobError:
    return JobError(
        f"name: a sweep named {name!r} is running now in {run_dir} ({who or 'another process'}); "
        "wait for it, or choose another name"
    )


def claim_new_sweep(run_dir: Path, name: str, sweep_file: str) -> SweepClaim:
    """Claim ``run_dir`` for a new sweep: refused while a live process holds it, or when it
    already holds a sweep (``sweep_file``). The claim is atomic: the flock decides."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = _try_lock(run_dir)
    if fd is None:
        raise _busy(name, run_dir, holder(run_dir))
    if (run_dir / sweep_file).exists():  # written under the lock by the sweep that owns it
        os.close(fd)
        raise JobError(
            f"name: a sweep named {name!r} already exists in {run_dir}; resume it with "
            f"`critbatch resume {name} --storage {run_dir.parent}` or choose another name"
        )
    return SweepClaim(run_dir, fd, created)


def claim_existing_sweep(run_dir: Path) -> SweepClaim:
    """Claim a sweep's folder for `resume`: refused while its driver (or another resume) lives."""
    fd = _try_lock(run_dir)
    if fd is None:
        raise _busy(run_dir.name, run_dir, holder(run_dir))
    return SweepClaim(run_dir, fd, created_dir=False)


@contextlib.contextmanager
def tracking_store_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive flock on a SQLite store's folder (no-op for other stores) while a
    client is made and makes its first request, which create a fresh store's tables."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    folder = Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve().parent
    fd = os.open(folder, os.O_RDONLY)  # a directory descriptor takes an flock like a file
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
