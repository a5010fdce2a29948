"""Bad input on the way to a cluster fails fast, names the field and the fix, and writes nothing
(no run folder, no MLflow store or experiment)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import yaml
from test_cluster_multinode import synthetic_job

from trainables.api import InputError
from tune_jobs.config import JobError

REPO = Path(__file__).resolve().parents[1]


def _dead_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_nothing_written(job, tmp_path: Path) -> None:
    from tune_jobs.sweep import run_dir_of

    assert not run_dir_of(job).exists() and not (tmp_path / "runs").exists()
    assert not (tmp_path / "mlflow.db").exists()  # the SQLite store was not even created


def test_unreachable_ray_address_fails_fast(tmp_path: Path, sqlite_uri: str, monkeypatch) -> None:
    import ray

    from tune_jobs.sweep import run_sweep

    ray.shutdown()  # a Ray left by another test would be reused, whatever the address
    address = f"127.0.0.1:{_dead_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    job = synthetic_job(tmp_path, "no-cluster", sqlite_uri)
    t0 = time.time()
    with pytest.raises(JobError) as e:
        run_sweep(job, progress=False)  # the address comes from $RAY_ADDRESS
    took = time.time() - t0
    msg = str(e.value)
    assert "--address / RAY_ADDRESS" in msg and address in msg and "unset RAY_ADDRESS" in msg
    assert took < 30, f"took {took:.0f} s to say the cluster is unreachable"
    assert not ray.is_initialized()
    _assert_nothing_written(job, tmp_path)


@pytest.mark.slow
def test_gpus_asked_of_a_cluster_without_gpus(tmp_path: Path, sqlite_uri: str, ray_local) -> None:
    from tune_jobs.sweep import run_sweep

    if ray_local.cluster_resources().get("GPU", 0) > 0:
        pytest.skip("this machine's local Ray has GPUs")
    job = synthetic_job(tmp_path, "no-gpu", sqlite_uri, resources={"gpus": 1})
    with pytest.raises(JobError) as e:
        run_sweep(job, progress=False)
    msg = str(e.value)
    assert msg.startswith("resources.gpus:") and "has 0" in msg
    assert "set resources.gpus: 0" in msg and "critbatch submit" in msg
    _assert_nothing_written(job, tmp_path)


def test_gpus_of_a_cluster_that_autoscales_from_zero_are_accepted(
    tmp_path: Path, sqlite_uri: str
) -> None:
    """On the head of a `ray up` cluster with no GPU worker yet, the launcher's config says a
    GPU node can be added: the sweep must start (the first pending trial triggers the scale-up)."""
    from tune_jobs.cluster import check_cluster_config
    from tune_jobs.sweep import autoscaling_node_types, check_resources

    bootstrap = tmp_path / "ray_bootstrap_config.yaml"  # as `ray up` writes it on the head
    bootstrap.write_text(yaml.safe_dump(check_cluster_config(REPO / "cluster.yaml")))
    scalable = autoscaling_node_types(str(bootstrap))
    assert scalable == [{"CPU": 4, "GPU": 1}]  # gpu.g5; the opt-in spot and p4d types are at 0
    head_only = {"CPU": 0.0, "memory": 1e10}
    check_resources(
        synthetic_job(tmp_path, "a", sqlite_uri, resources={"gpus": 1, "cpus": 4}),
        head_only,
        scalable,
    )
    check_resources(
        synthetic_job(tmp_path, "b", sqlite_uri, resources={"gpus": 0.25}), head_only, scalable
    )
    # no node type holds 2 GPUs, or 8 CPUs: named, with the fix
    with pytest.raises(
        JobError,
        match=r"^resources.gpus: each trial asks for 2 GPUs, more than any node type.*lower resources.gpus",
    ):
        check_resources(
            synthetic_job(tmp_path, "c", sqlite_uri, resources={"gpus": 2}), head_only, scalable
        )
    with pytest.raises(
        JobError,
        match=r"^resources.cpus: each trial asks for 8 CPUs, more than any node type.*'GPU': 1",
    ):
        check_resources(
            synthetic_job(tmp_path, "d", sqlite_uri, resources={"gpus": 1, "cpus": 8}),
            head_only,
            scalable,
        )
    # the largest ask is what is checked, and the field that raised it is named
    with pytest.raises(
        JobError,
        match=r"^resources.gpus_from_batch_size \(B = 32\): each trial asks for 2 GPUs.*lower resources.gpus_from_batch_size or",
    ):
        check_resources(
            synthetic_job(tmp_path, "f", sqlite_uri,
                          resources={"gpus": 0.25, "gpus_from_batch_size": {32: 2}}),
            head_only, scalable,
        )  # fmt: skip
    # without a launcher config (a plain cluster), the plain message
    with pytest.raises(
        JobError, match=r"^resources.gpus: each trial asks for 1.0 GPU but the Ray cluster has 0"
    ):
        check_resources(
            synthetic_job(tmp_path, "e", sqlite_uri, resources={"gpus": 1}), head_only, []
        )


def test_tracking_server_unreachable_at_start(tmp_path: Path) -> None:
    import ray

    from tune_jobs.sweep import run_sweep

    uri = f"http://127.0.0.1:{_dead_port()}"
    job = synthetic_job(tmp_path, "no-mlflow", uri)
    was_up = ray.is_initialized()
    t0 = time.time()
    with pytest.raises(JobError) as e:
        run_sweep(job, progress=False)
    assert time.time() - t0 < 15
    msg = str(e.value)
    assert (
        msg.startswith("tracking.uri:") and uri in msg and "mlflow server --host 127.0.0.1" in msg
    )
    assert ray.is_initialized() == was_up  # checked before Ray was even started
    _assert_nothing_written(job, tmp_path)


def test_malformed_cluster_yaml_is_named_and_fixable(tmp_path: Path) -> None:
    from tune_jobs.cluster import ClusterConfigError, check_cluster_config

    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    cfg["available_node_types"]["gpu.g5"]["resources"] = {"CPU": "four", "GPU": 1}
    p = tmp_path / "cluster.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ClusterConfigError) as e:
        check_cluster_config(p)
    assert "available_node_types.gpu.g5.resources.CPU: 'four'" in str(
        e.value
    ) and "whole numbers" in str(e.value)


# ---- critbatch submit: what only matters on a cluster -------------------------------------
def _job_file(dir_: Path, **fields) -> Path:
    data = {
        "name": "submit-check",
        "workload": "synthetic",
        "batch_sizes": [16],
        "budget": {"max_steps": 20},
        "tracking": {"uri": "http://127.0.0.1:5000"},
        "storage": "/shared/critbatch_runs",
        **fields,
    }
    p = dir_ / "job.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_submit_refuses_results_that_would_die_with_the_job(tmp_path: Path) -> None:
    from tune_jobs.cluster import submit_job

    with pytest.raises(
        InputError, match=r"^storage: 'critbatch_runs' is relative.*storage: /shared/critbatch_runs"
    ):
        submit_job(_job_file(tmp_path, storage="critbatch_runs"), working_dir=tmp_path)
    with pytest.raises(
        InputError, match=r"^tracking.uri: 'sqlite:///mlflow.db' is relative.*http://127.0.0.1:5000"
    ):
        submit_job(
            _job_file(tmp_path, tracking={"uri": "sqlite:///mlflow.db"}), working_dir=tmp_path
        )
    with pytest.raises(InputError, match=r"^JOB: .* is outside the working_dir"):
        submit_job(_job_file(tmp_path), working_dir=REPO)


def test_submit_to_an_unreachable_dashboard_fails_fast(tmp_path: Path) -> None:
    from tune_jobs.cluster import submit_job

    address = f"http://127.0.0.1:{_dead_port()}"
    t0 = time.time()
    with pytest.raises(InputError) as e:
        submit_job(_job_file(tmp_path), working_dir=tmp_path, address=address)
    assert time.time() - t0 < 30
    assert str(e.value).startswith(f"--address: no Ray dashboard answers at {address}")
    assert "ray dashboard cluster.yaml" in str(e.value)
    with pytest.raises(InputError, match=r"^--address: '127.0.0.1:6379' is not a dashboard URL"):
        submit_job(_job_file(tmp_path), working_dir=tmp_path, address="127.0.0.1:6379")
