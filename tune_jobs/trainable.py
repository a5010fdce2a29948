"""The Ray Tune function trainable: adapts a critbatch trainable to `tune.report`.

This module is the only place that calls Ray's reporting API (renamed often across Ray 2.x);
the trainables themselves get a plain ``report`` callable. The driver validates the job once
and hands every trial the same base :class:`TrialConfig` (as a dict) plus the step budget per
batch size, so workers never re-read or re-validate the job file.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import ray
from ray import tune


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo`` on Linux), else the platform's processor string."""
    import platform

    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115 (a short read)
            if line.startswith("model name"):
                return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU: " + (platform.processor() or platform.machine() or "unknown")


# What a trial's Tune config sets of its TrialConfig; the rest is the job's (``base``). The
# searcher (tune_jobs.searcher.SweepSearcher.suggest) and the branch runner (tune_jobs.branch)
# give every trial all of batch_size, lr, seed and max_steps; confirmation runs also their
# eval interval and run_to_max_steps, a branch base run its checkpoint_at.
TRIAL_KEYS = ("batch_size", "lr", "seed", "max_steps", "eval_every", "run_to_max_steps",
              "checkpoint_at")  # fmt: skip


def run_tune_trial(config: dict[str, Any], base: dict[str, Any], cpus: float) -> None:
    import torch

    from trainables.api import TrialConfig
    from trainables.registry import run_trial

    torch.set_num_threads(max(1, int(cpus)))  # one thread per CPU asked: no oversubscription
    cfg = TrialConfig.from_dict({**base, **{k: config[k] for k in TRIAL_KEYS if k in config}})
    state = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), weights_only=False)
    elif config.get("branch_from"):  # a branch starts from the base run's checkpoint folder
        state = torch.load(os.path.join(config["branch_from"], "state.pt"), weights_only=False)

    # Tune's own `node_ip` cannot tell apart nodes that share a host (or NAT); the Ray node id
    # can: recorded in result.json (a string, so not an MLflow metric).
    node_id = ray.get_runtime_context().get_node_id()
    # What the trial ran on, for time and cost (analysis.cost): the GPUs (fractions when
    # packed) or else CPUs Ray gave it, and the device's name (a string: result.json and the
    # child run's `device_name` param, so a user can tell where step times were measured).
    assigned = ray.get_runtime_context().get_assigned_resources()
    gpus, cpus = float(assigned.get("GPU", 0.0)), float(assigned.get("CPU", cpus))
    device_name = (
        torch.cuda.get_device_name() if gpus > 0 and torch.cuda.is_available() else cpu_name()
    )

    def report(metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None:
        metrics = {**metrics, "node_id": node_id, "gpus": gpus, "cpus": cpus,
                   "device_name": device_name}  # fmt: skip
        if checkpoint is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(checkpoint, os.path.join(d, "state.pt"))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    run_trial(cfg, report, state)
