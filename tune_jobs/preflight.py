"""Preflight: everything about the cluster and the tracking store that can be wrong is
checked here, before a sweep writes anything (a clear error naming the field and the fix)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

from tune_jobs.config import JobConfig, JobError

SWEEP_FILE = "sweep.json"  # in the run folder: the job, the MLflow ids; a sweep exists once it does


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before anything is launched, when the tracking store cannot be used: a
    SQLite file whose folder is missing or read-only, a server that does not answer within
    ``timeout`` seconds, a scheme or database driver that is not there. Never prints a password."""
    from analysis.tracking_uri import (
        TrackingUriError,
        bound_mlflow_http_timeouts,
        check_uri_form,
        probe_http_server,
    )

    try:
        check_uri_form(uri)
        if uri.startswith(("http://", "https://")):
            probe_http_server(uri, timeout)
            bound_mlflow_http_timeouts()  # the tracker buffers and retries on its own
    except TrackingUriError as e:
        raise JobError(str(e)) from None
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        parent = path.parent
        if not parent.is_dir():
            raise JobError(
                f"tracking.uri: folder {str(parent)!r} of the SQLite store does not exist; create it or use sqlite:///mlflow.db"
            )
        if path.exists() and not path.is_file():
            raise JobError(
                f"tracking.uri: {str(path)!r} is a folder, not a SQLite file; name a file, e.g. sqlite:///mlflow.db"
            )
        if not os.access(parent, os.W_OK):
            raise JobError(
                f"tracking.uri: folder {str(parent)!r} is not writable; choose another path"
            )


def check_storage(job: JobConfig) -> Path:
    """The sweep's run folder (``storage``/``name``) when it can be created there; writes nothing."""
    storage = Path(job.storage).expanduser()
    if "://" in job.storage:
        raise JobError(
            f"storage: {job.storage!r} is a URI; give a local or shared folder, e.g. critbatch_runs"
        )
    storage = storage.resolve()
    if storage.exists() and not storage.is_dir():
        raise JobError(
            f"storage: {str(storage)!r} is a file, not a folder; give a folder for run folders, "
            "e.g. critbatch_runs"
        )
    existing = storage
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise JobError(f"storage: {str(existing)!r} is a file; a folder cannot be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise JobError(f"storage: folder {str(existing)!r} is not writable; choose another folder")
    run_dir = storage / job.name
    if run_dir.exists() and not run_dir.is_dir():
        raise JobError(f"name: {str(run_dir)!r} exists and is a file; choose another name")
    return run_dir


def check_data(job: JobConfig) -> None:
    """A workload that reads a dataset from disk finds it under the data root (else every
    trial would fail, one traceback each)."""
    from trainables.datasets.download import SOURCES
    from trainables.datasets.images import data_root
    from trainables.registry import get_workload

    dataset = get_workload(job.workload).dataset
    if not dataset or dataset not in SOURCES:
        return
    root, source = data_root(job.data.root)
    if not SOURCES[dataset].present(root):
        field = "data.root" if job.data.root else f"data.root ({source})"
        raise JobError(
            f"{field}: {dataset} is not under {root}; get it with "
            f"`critbatch data download {dataset} --root {root}`, or set data.root to the folder "
            "that holds it"
        )


def local_gpus() -> float:
    """NVIDIA GPUs a local Ray started here would see: the driver's devices, cut to
    CUDA_VISIBLE_DEVICES when it is set (as Ray does), without importing Ray or torch."""
    d = Path("/proc/driver/nvidia/gpus")
    n = len(list(d.iterdir())) if d.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        n = min(n, len(ids))
    return float(n)


def preflight(job: JobConfig, *, address: str | None = None, num_cpus: int | None = None) -> Path:
    """Every check `critbatch run` makes before it launches anything, without starting Ray
    (`check` runs exactly these): storage, name, tracking store, data on disk, and the
    resources of the local Ray it would start (or that the cluster at ``address`` answers).
    Returns the run folder. Writes nothing."""
    from tune_jobs.locks import holder

    run_dir = check_storage(job)
    who = holder(run_dir)
    if who:
        raise JobError(
            f"name: a sweep named {job.name!r} is running now in {run_dir} ({who}); wait for "
            "it, or choose another name"
        )
    if (run_dir / SWEEP_FILE).exists():
        raise JobError(
            f"name: a sweep named {job.name!r} already exists in {run_dir}; resume it with "
            f"`critbatch resume {job.name} --storage {job.storage}` or choose another name"
        )
    check_tracking_uri(job.tracking.uri)
    check_data(job)
    check_num_cpus(num_cpus)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)
    else:
        cpus = float(num_cpus if num_cpus is not None else os.cpu_count() or 1)
        check_resources(job, {"CPU": cpus, "GPU": local_gpus()}, scalable=[])
    return run_dir


def check_num_cpus(num_cpus: int | None) -> None:
    if num_cpus is not None and num_cpus < 1:
        raise JobError(
            f"--num-cpus: {num_cpus}; the local Ray needs at least 1 CPU (omit it for all CPUs)"
        )


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Ray's ``init(address=...)`` retries an unreachable GCS for minutes: fail in seconds
    instead, with a TCP connect to ``host:port`` (``ray://host:port`` too; `auto` is Ray's)."""
    import socket

    hostport = address.removeprefix("ray://").rstrip("/")
    if address in ("auto", "local") or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    if not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except OSError as e:
        raise JobError(
            f"--address / RAY_ADDRESS: cannot reach a Ray cluster at {address!r} (no answer on {host}:{port} "
            f"within {timeout:g} s: {e.__class__.__name__}); check `ray status` on the head node, "
            "or unset RAY_ADDRESS to run locally"
        ) from None


def init_ray(
    address: str | None = None, num_cpus: int | None = None, temp_dir: str | None = None
) -> dict[str, float]:
    """Connect to ``address`` (or $RAY_ADDRESS), else start a local Ray; returns its resources."""
    import ray

    from tune_jobs.ray_internals import loopback_only_local_ray, write_private_auth_token

    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return ray.cluster_resources()
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **kwargs)
        except Exception as e:  # ConnectionError, ValueError, TimeoutError depending on form
            raise JobError(
                f"--address / RAY_ADDRESS: cannot reach a Ray cluster at {address!r} ({e}); "
                "check `ray status` on the head node, or unset RAY_ADDRESS to run locally"
            ) from None
    else:
        # Ray's raylet gives its metrics agent a hard-coded 15 s to start (ray-project/ray#65983);
        # on a loaded laptop that fails now and then: retry a local start a few times.
        attempts = int(os.environ.get("CRITBATCH_RAY_START_ATTEMPTS", "4"))
        if temp_dir:
            kwargs["_temp_dir"] = temp_dir
        check_num_cpus(num_cpus)
        loopback_only_local_ray()  # nothing of a local Ray listens beyond 127.0.0.1
        write_private_auth_token()  # ~/.ray/auth_token readable by this user alone
        for attempt in range(attempts):
            try:
                # No dashboard: nobody opens it for a local sweep, and on 2 cores its start
                # costs seconds before the first trial (BENCHMARKS.md, "Local Ray start").
                ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
                break
            except Exception as e:
                if "timed out during startup" not in str(e) or attempt == attempts - 1:
                    raise
                ray.shutdown()
                time.sleep(2.0)
    return ray.cluster_resources()


AUTOSCALING_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves it on the head node


def autoscaling_node_types(path: str = AUTOSCALING_CONFIG) -> list[dict[str, float]]:
    """Resources of each node type the autoscaler may still add (max_workers > 0), read from
    the cluster launcher's config on the head node, where the driver runs; [] elsewhere."""
    p = Path(path).expanduser()
    try:
        cfg = yaml.safe_load(p.read_text()) if p.is_file() else None
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(cfg, dict):
        return []
    types = cfg.get("available_node_types") or {}
    return [dict(t.get("resources") or {}) for n, t in types.items()
            if n != cfg.get("head_node_type") and t.get("max_workers", cfg.get("max_workers", 0)) > 0]  # fmt: skip


def check_resources(
    job: JobConfig, resources: dict[str, float], scalable: list[dict[str, float]] | None = None
) -> None:
    """Ray leaves a trial PENDING forever when no node can hold it: say so instead. A cluster
    that autoscales from zero GPU workers has no GPU yet: fine when a node type the autoscaler
    may add (``scalable``, default: :func:`autoscaling_node_types`) holds one trial. The GPU
    ask checked is the largest one (``resources.gpus_from_batch_size`` may raise it)."""
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    need_cpus = job.resources.cpus
    big = max(job.batch_sizes, key=job.resources.gpus_for)
    need_gpus = job.resources.gpus_for(big)
    gpu_field = (
        "resources.gpus"
        if need_gpus == job.resources.gpus
        else f"resources.gpus_from_batch_size (B = {big})"
    )
    if gpus < need_gpus or cpus < need_cpus:
        scalable = autoscaling_node_types() if scalable is None else scalable
        if any(t.get("GPU", 0) >= need_gpus and t.get("CPU", 0) >= need_cpus for t in scalable):
            return  # the autoscaler adds such a node for the first pending trial
        if scalable:
            short_of_gpus = not any(t.get("GPU", 0) >= need_gpus for t in scalable)
            field, kind, n = (
                (gpu_field, "GPU", need_gpus)
                if short_of_gpus
                else ("resources.cpus", "CPU", need_cpus)
            )
            raise JobError(
                f"{field}: each trial asks for {n:g} {kind}s, more than any node type the "
                f"autoscaler may add offers ({', '.join(map(str, scalable))}); lower "
                f"{field.split(' ')[0]} or add a bigger node type to the cluster file"
            )
    if need_gpus > 0 and gpus < need_gpus:
        raise JobError(
            f"{gpu_field}: each trial asks for {need_gpus} GPU but the Ray cluster has {gpus:g}; "
            "set resources.gpus: 0 to train on CPU, or run on a GPU cluster (`critbatch submit`)"
        )
    if cpus < need_cpus:
        raise JobError(
            f"resources.cpus: each trial asks for {need_cpus:g} CPUs but the cluster has {cpus:g}; lower it"
        )


PROBE_TIMEOUT_S = 300.0  # importing torch and building one tiny batch; a hang is a bug to report


def check_user_code(job: JobConfig, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any] | None:
    """A user workload (``module:function``) imported and built once, on one tiny batch, in a
    fresh Python process (``python -m trainables.user_code``), before anything launches: a
    module that crashes, hangs or exits cannot take the driver with it. Raises
    :class:`JobError` naming the field and the fix; None for a built-in workload."""
    import json
    import subprocess
    import sys

    if ":" not in job.workload:
        return None
    repo = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
    }
    arg = json.dumps({"spec": job.workload, "code_dir": job.code_dir, "options": job.options})
    try:
        out = subprocess.run([sys.executable, "-m", "trainables.user_code", arg], capture_output=True,
                             text=True, timeout=timeout, env=env, cwd=job.code_dir or None)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise JobError(
            f"workload: building {job.workload} on one tiny batch took over {timeout:.0f} s; "
            "make build(config, device) fast (load data lazily or cache it)"
        ) from None
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-5:]
        raise JobError(
            f"workload: the check of {job.workload} exited with code {out.returncode} before it "
            f'finished: {" | ".join(tail)}; run `python -c "import {job.workload.split(":")[0]}"` '
            f"in {job.code_dir} to see why"
        )
    result = json.loads(lines[-1])
    if not result.get("ok"):
        raise JobError(result["error"])
    return result
