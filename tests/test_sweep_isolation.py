"""Two sweeps never corrupt each other, and a local sweep opens nothing to the network (issue 12):
real drivers (`critbatch run` processes) on the shared local Ray, a real SQLite MLflow store,
and the kernel's own list of listening sockets."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tune_jobs.cli import main
from tune_jobs.locks import holder

REPO = Path(__file__).resolve().parents[1]


def tiny_job(tmp_path: Path, name: str, sleep_per_step: float = 0.0) -> Path:
    job = {
        "name": name,
        "workload": "synthetic",
        "batch_sizes": [8, 32],
        "lr_search": {
            "min": 0.01,
            "max": 0.5,
            "trials_per_batch_size": 2,
            "confirm_seeds": 0,
            "seed": 0,
        },
        "target": {"metric": "eval_loss", "value": 0.2, "direction": "min"},
        "budget": {"max_steps": 40},
        "eval_every": 10,
        "options": {"sleep_per_step": sleep_per_step},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": name},
        "storage": str(tmp_path / "runs"),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _driver(path: Path, address: str, tmp_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = open(tmp_path / f"{path.stem}-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "tune_jobs.cli", "run", str(path), "--address", address, "--no-progress"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_sweeps_at_once_on_a_fresh_store_and_the_same_name_twice(ray_local, tmp_path):
    """Two drivers start together on a fresh SQLite store (MLflow creates its tables on the
    first request: without the lock one crashed with alembic's "table already exists"); a
    third with the first one's name, started while it runs, is refused with exit 2."""
    address = ray_local.get_runtime_context().gcs_address
    a = tiny_job(tmp_path, "alpha", sleep_per_step=0.05)
    b = tiny_job(tmp_path, "beta")
    assert not (tmp_path / "mlflow.db").exists()
    drivers = {}
    for path in (a, b):
        drivers[path.stem] = _driver(path, address, tmp_path)
    run_alpha = tmp_path / "runs" / "alpha"
    deadline = time.time() + 600
    while holder(run_alpha) is None:  # alpha holds its name while its driver lives
        assert drivers["alpha"].poll() is None, "alpha ended before it claimed its name"
        assert time.time() < deadline
        time.sleep(0.2)
    second = subprocess.run(
        [sys.executable, "-m", "tune_jobs.cli", "run", str(a), "--address", address, "--no-progress"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert second.returncode == 2, second.stderr[-2000:]
    assert "name: a sweep named 'alpha' is running now" in second.stderr
    assert "Traceback" not in second.stderr
    for name, p in drivers.items():
        p.wait(timeout=600)
        log_files = sorted(tmp_path.glob(f"{name}-*.log"))
        text = log_files[0].read_text()
        assert p.returncode == 0, text[-3000:]
        assert "table already exists" not in text and "Traceback" not in text
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in ("alpha", "beta"):
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        parents = [r for r in runs if r.data.tags.get("critbatch.role") == "sweep"]
        kids = [r for r in runs if r.data.tags.get("critbatch.role") == "trial"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(kids) == 4, "each sweep holds its own 4 trials, no more"
        assert {k.data.tags["mlflow.parentRunId"] for k in kids} == {parents[0].info.run_id}
    assert holder(run_alpha) is None  # released when its driver ended


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fresh_sqlite_store_created_by_three_processes_at_once(tmp_path):
    """The store lock alone, tighter: three processes released together each start a sweep's
    tracking (`_start_tracking`: experiment, parent run, params) on one fresh store."""
    go = tmp_path / "go"
    code = (
        "import sys, time, pathlib\n"
        "from tune_jobs.job_file import load_job\n"
        "from tune_jobs.sweep import _start_tracking\n"
        "job = load_job(sys.argv[1])\n"
        "go = pathlib.Path(sys.argv[2])\n"
        "while not go.exists(): time.sleep(0.01)\n"
        "print(_start_tracking(job, pathlib.Path(sys.argv[3]), 'job: yaml'))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                str(tiny_job(tmp_path, f"s{i}")),
                str(go),
                str(tmp_path / "runs" / f"s{i}"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(3)
    ]
    time.sleep(40)  # each imports mlflow and torch, then waits at the gate
    go.touch()
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for i in range(3):
        exp = client.get_experiment_by_name(f"s{i}")
        assert len(client.search_runs([exp.experiment_id])) == 1


def _listening(pids: set[int]) -> list[tuple[str, int, str]]:
    out = []
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            out.append((c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()))
    return out


def _is_loopback(ip: str) -> bool:
    return ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") or ip.startswith("127.")


@pytest.mark.slow
def test_local_sweep_listens_on_loopback_only(ray_local, tmp_path, capsys, monkeypatch):
    """Every listening socket of this driver and every process under it (GCS, raylet, workers,
    agents, metrics export) after a real sweep is on loopback; the auth token is 0600."""
    monkeypatch.chdir(tmp_path)
    path = tiny_job(tmp_path, "loopback")
    assert main(["run", str(path), "--no-progress"]) == 0
    me = psutil.Process()
    pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
    names = {psutil.Process(p).name() for p in pids if psutil.pid_exists(p)}
    assert any("raylet" in n for n in names) and any("gcs_server" in n for n in names)
    sockets = _listening(pids)
    assert sockets, "a local Ray listens somewhere; the probe found nothing"
    exposed = [s for s in sockets if not _is_loopback(s[0])]
    assert not exposed, f"listening beyond loopback: {exposed}"
    token = Path.home() / ".ray" / "auth_token"  # Ray 2.60 turns token auth on by default
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


@pytest.mark.slow
def test_sweep_whose_every_trial_errors_exits_non_zero_naming_the_cause(
    ray_local, tmp_path, capsys, monkeypatch
):
    """issue 12: a job whose every trial errors exited 0 after 8 worker tracebacks."""
    monkeypatch.chdir(tmp_path)
    path = tiny_job(tmp_path, "doomed")
    job = yaml.safe_load(path.read_text())
    job.update(options={"fail_at_step": 1}, max_failures=0, batch_sizes=[8])
    path.write_text(yaml.safe_dump(job))
    assert main(["run", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "every trial at batch size 8 failed" in err
    assert "fail_at_step=1 (an injected fault)" in err
