"""`critbatch submit JOB --address URL --wait` end to end, as docs/cluster.md promises it: a real
Ray head (`ray start --head`, with the token authentication Ray turns on when ~/.ray/auth_token
exists), the repo uploaded as the Ray Job's working_dir, the sweep's log followed to its final
table, exit 0, and the results where the job file says: every trial's result.json under
`storage`, and a parent run with one child run per trial in MLflow.

No mocks. The head runs in its own HOME (its token) and temp dir, so it cannot meet another Ray
on the machine, and it is stopped by process id, not with `ray stop`: that kills every Ray
process on the machine (it matches process names, whatever their temp dir), which would take
down a benchmark or the session's `ray_local` Ray running next to this test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import free_port
from test_cluster_multinode import synthetic_job_data
from test_sweep import children

from tune_jobs.cluster import WORKING_DIR_EXCLUDES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # ray, and the `python` the job's entrypoint calls


def _clean_env(home: Path) -> dict[str, str]:
    """This test's environment without what would point Ray elsewhere: a session's RAY_ADDRESS,
    or the RAY_AUTH_MODE a `ray.init()` earlier in this pytest process exported."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}  # fmt: skip
    env["HOME"] = str(home)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _stop_ours(pgid: int, temp_dir: str) -> None:
    """End the processes of one `ray start`: its process group (every daemon it forked, and
    the workers the raylet forks), and anything running in or naming its temp dir (the job's
    driver: Ray's job supervisor starts it in a session of its own)."""
    ours = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid == os.getpid():
                continue
            if (
                os.getpgid(p.pid) == pgid
                or temp_dir in " ".join(p.info["cmdline"] or [])
                or p.cwd().startswith(temp_dir)
            ):
                ours.append(p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    for p in ours:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(ours, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


class RayHead:
    def __init__(self, home: Path):
        self.home = home
        self.env = _clean_env(home)
        # As on the cluster's head (cluster.yaml activates the venv before `ray start`): the
        # entrypoint's `python` is the project's interpreter.
        self.env["PATH"] = f"{VENV_BIN}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
        # Ray's socket paths must stay under 107 bytes: a short folder directly under /tmp.
        self.temp_dir = tempfile.mkdtemp(prefix="cbs", dir="/tmp")
        self.pgid: int | None = None
        self.dashboard_port = 0

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, attempts: int = 4) -> RayHead:
        # The token first: `ray start` turns token auth on when it finds one (Ray 2.60).
        subprocess.run([str(VENV_BIN / "ray"), "get-auth-token", "--generate"], env=self.env,
                       check=True, capture_output=True, timeout=60)  # fmt: skip
        for attempt in range(attempts):
            self.dashboard_port = free_port()
            cmd = [
                str(VENV_BIN / "ray"), "start", "--head", "--num-cpus", "2",
                "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                "--port", str(free_port()), "--ray-client-server-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()),
                "--temp-dir", self.temp_dir, "--disable-usage-stats",
            ]  # fmt: skip
            # Its own session: every daemon it leaves behind shares its process group.
            proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
            self.pgid = proc.pid
            out, _ = proc.communicate(timeout=180)
            if proc.returncode == 0:
                return self
            # Ray's raylet gives its metrics agent a hard-coded 15 s (ray-project/ray#65983):
            # on a loaded 2-core host a start fails now and then. Clean up, try again.
            self.stop()
            if attempt == attempts - 1:
                raise RuntimeError(f"`ray start --head` failed {attempts} times:\n{out[-3000:]}")
            time.sleep(2.0)
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.pgid is not None:
            _stop_ours(self.pgid, self.temp_dir)
            self.pgid = None


@pytest.fixture
def ray_head(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    head = RayHead(home)
    try:
        yield head.start()
    finally:
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)


def _repo_copy(dest: Path) -> Path:
    """What `critbatch submit` uploads by default (the repo without its excludes), as a folder
    this test may write its job file into: the checkout itself stays untouched."""
    shutil.copytree(
        REPO,
        dest,
        ignore=shutil.ignore_patterns(
            *WORKING_DIR_EXCLUDES, "__pycache__", ".pytest_cache", ".ruff_cache", "*.pyc"
        ),
    )
    return dest


def _submit(job_file: Path, working_dir: Path, address: str, env: dict[str, str], timeout: float,
            *extra: str):  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "tune_jobs.cli", "submit", str(job_file),
         "--working-dir", str(working_dir), "--address", address, "--wait", *extra],
        env=env, cwd=working_dir, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_submit_wait_runs_the_sweep_on_a_ray_head(ray_head: RayHead, tmp_path: Path) -> None:
    t0 = time.time()
    # Token auth is really on: the Jobs API refuses a request without the token.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(ray_head.address + "/api/jobs/", timeout=10)
    assert refused.value.code == 401

    wd = _repo_copy(tmp_path / "repo")
    name = "submit-e2e"
    db = tmp_path / "mlflow.db"
    job = synthetic_job_data(
        tmp_path, name, f"sqlite:///{db}", batch_sizes=[16, 64], budget={"max_steps": 20},
        tracking={"experiment": name},
    )  # storage: absolute (tmp_path / "runs"), as submit requires  # fmt: skip
    job_file = wd / "tune_jobs" / "jobs" / f"{name}.yaml"
    job_file.write_text(yaml.safe_dump(job, sort_keys=False))

    # Without the cluster's token the submit is refused, saying so (not "no dashboard answers").
    no_token = _submit(job_file, wd, ray_head.address, _clean_env(tmp_path), timeout=120)
    assert no_token.returncode == 2, no_token.stdout + no_token.stderr
    assert "token authentication" in no_token.stderr and "~/.ray/auth_token" in no_token.stderr

    # The user's shell: the same HOME as the head, so the same ~/.ray/auth_token.
    user_env = _clean_env(ray_head.home)
    # A job that fails on the cluster: --wait shows why and exits 1.
    bad = _submit(job_file, wd, ray_head.address, user_env, 120, "--python", "/nonexistent/python")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "/nonexistent/python" in bad.stdout and bad.stdout.rstrip().endswith(": FAILED")
    assert not (tmp_path / "runs").exists()

    t1 = time.time()
    r = _submit(job_file, wd, ray_head.address, user_env, timeout=300)
    took = time.time() - t1
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    m = [ln for ln in r.stdout.splitlines() if ln.startswith("submitted critbatch-submit-e2e-")]
    assert m, out[-3000:]
    sid = m[0].split()[1]
    assert f"ray job logs --address {ray_head.address} --follow {sid}" in r.stdout
    # --wait streamed the driver's log: the plan, then the sweep's final table, then the status.
    assert (
        "Running entrypoint for job" in r.stdout
        and f"tune_jobs.cli run tune_jobs/jobs/{name}.yaml" in r.stdout
    )
    assert r.stdout.rstrip().endswith(f"{sid}: SUCCEEDED"), r.stdout[-3000:]
    log = r.stdout.split("Running entrypoint for job", 1)[1]
    assert re.search(r"^\[ *[\d.]+s\] 4/4 trials done$", log, re.M), log  # driver's progress
    # the driver's closing summary: 2 trials at each of 2 batch sizes, none can reach loss 0
    heading = "4 trials ("
    assert heading in log and "parent run" in log and "No B_crit" in log, log[-3000:]
    # streamed over the dashboard's websocket, each line once (no fallback to polling)
    assert r.stdout.count("Running entrypoint for job") == 1 and r.stdout.count(heading) == 1
    assert "log stream" not in r.stderr, r.stderr[-2000:]

    # Tune's run folder: one trial folder per trial, each with its result.json.
    run_dir = tmp_path / "runs" / name
    assert (run_dir / "sweep.json").is_file() and (run_dir / "job.yaml").is_file()
    results = sorted(run_dir.glob("*/result.json"))
    assert len(results) == 4, sorted(p.name for p in run_dir.iterdir())
    trial_ids, node_ids = set(), set()
    for f in results:
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        assert rows and rows[-1]["step"] == 20, f
        assert rows[-1]["config"]["batch_size"] in (16, 64)
        trial_ids.add(rows[-1]["trial_id"])
        node_ids.add(rows[-1]["node_id"])
    # ... and the trials ran on this head, not on a Ray the driver started for itself.
    token = (ray_head.home / ".ray" / "auth_token").read_text().strip()
    req = urllib.request.Request(
        ray_head.address + "/api/v0/nodes", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        nodes = resp.read().decode()
    assert len(node_ids) == 1 and next(iter(node_ids)) in nodes, (node_ids, nodes[:2000])

    # MLflow: the sweep's parent run and one child per trial, each with its final status.
    from mlflow.tracking import MlflowClient

    parents, kids = children(MlflowClient(f"sqlite:///{db}"), name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(kids) == 4
    assert {k.data.tags["critbatch.trial_id"] for k in kids} == trial_ids
    assert all(k.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for k in kids)
    # the target (eval_loss <= 0) is out of reach and nothing stops a trial early
    assert {k.data.tags["critbatch.status"] for k in kids} == {"not_reached"}
    assert sorted(int(k.data.params["batch_size"]) for k in kids) == [16, 16, 64, 64]
    print(f"\nsubmit --wait: {took:.0f} s; test body: {time.time() - t0:.0f} s")
