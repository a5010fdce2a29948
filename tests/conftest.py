"""Shared fixtures: a real local Ray, real MLflow stores (SQLite and a real `mlflow server`).

Ray writes its auth token under ~/.ray and its session files under its temp dir; both are
pointed at a per-session temporary directory so tests leave nothing behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="critbatch-test-home-"))
os.environ["HOME"] = str(_SESSION_HOME)
os.environ["RAY_TMPDIR"] = str(_SESSION_HOME / "ray")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
(_SESSION_HOME / "ray").mkdir(exist_ok=True)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"  # screenshots and other things worth keeping from a run


def pytest_sessionfinish(session, exitstatus):
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:
        pass
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


# The longest test files (a full run on 2 cores, 2026-12-02), started first: under
# `pytest -n 2 --dist loadfile` (scripts/test.sh) a long file taken up last would run on alone
# while the other worker sits idle. Within a file the order is the file's own.
LONGEST_FIRST = (
    "test_resume_exact.py", "test_faults.py", "test_sweep_isolation.py", "test_sweep.py",
    "test_cluster_multinode.py", "test_gpu_check.py", "test_analysis_loaders.py",
    "test_submit_end_to_end.py", "test_browser_compare.py", "test_own_model.py",
    "test_sync_outage.py", "test_submit_user_code.py", "test_vision_workloads.py",
)  # fmt: skip


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


@pytest.fixture
def ray_local():
    """A real local Ray instance (2 CPUs) shared by the tests of one session: started by the
    first test that asks for it, and again by the next one if a test shut it down (the bad
    input tests do, so that no Ray is reused); the session's end shuts it down."""
    import ray

    from tune_jobs.sweep import init_ray

    if not ray.is_initialized():
        init_ray(
            num_cpus=2, temp_dir=str(_SESSION_HOME / "ray")
        )  # retries a slow start (ray#65983)
    yield ray


@pytest.fixture
def sqlite_uri(tmp_path) -> str:
    """A fresh MLflow SQLite tracking store."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend; can be stopped and restarted."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = root
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> MlflowServer:
        log = open(self.root / "mlflow-server.log", "ab")  # noqa: SIM115 (owned by the server process)
        env = dict(
            os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"
        )  # no GenAI job runners: 4x faster start
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
                "--default-artifact-root", str(self.root / "artifacts"),
                "--workers", "1",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )  # fmt: skip
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {(self.root / 'mlflow-server.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("mlflow server did not become healthy")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
        self.proc = None


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend), stopped after the test."""
    root = tmp_path / "mlflow-server"
    root.mkdir()
    server = MlflowServer(root).start()
    yield server
    server.stop()
