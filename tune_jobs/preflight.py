"""Preflight: everything about the cluster and the tracking store that can be wrong is
checked here, before a sweep writes anything (a clear error naming the field and the fix)."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tune_jobs.config import JobConfig, JobError


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before anything is launched, when the tracking store cannot be used."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        parent = path.expanduser().resolve().parent
        if not parent.is_dir():
            raise JobError(
                f"tracking.uri: folder {str(parent)!r} of the SQLite store does not exist; create it or use sqlite:///mlflow.db"
            )
        if not os.access(parent, os.W_OK):
            raise JobError(
                f"tracking.uri: folder {str(parent)!r} is not writable; choose another path"
            )
        return
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status == 200:
                    return
        except OSError as e:
            raise JobError(
                f"tracking.uri: no MLflow server answers at {uri} ({e.__class__.__name__}); start it "
                f"(`mlflow server --host 127.0.0.1 --port 5000`), fix the URI, or use sqlite:///mlflow.db"
            ) from None
        raise JobError(f"tracking.uri: {uri}/health did not answer 200; is it an MLflow server?")


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
        for attempt in range(attempts):
            try:
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
