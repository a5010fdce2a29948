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


def run_tune_trial(
    config: dict[str, Any], base: dict[str, Any], max_steps: dict[int, int], cpus: float
) -> None:
    import torch

    from trainables.api import TrialConfig
    from trainables.registry import run_trial

    torch.set_num_threads(max(1, int(cpus)))  # one thread per CPU asked: no oversubscription
    bs = int(config["batch_size"])
    cfg = TrialConfig.from_dict(
        {
            **base,
            "batch_size": bs,
            "lr": float(config["lr"]),
            "seed": int(config["seed"]),
            # confirmation runs evaluate more densely, to their own horizon (tune_jobs.confirm)
            "max_steps": int(config.get("max_steps", max_steps[bs])),
            "eval_every": int(config.get("eval_every", base["eval_every"])),
            "run_to_max_steps": bool(config.get("run_to_max_steps", False)),
        }
    )
    state = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), weights_only=False)

    # Tune's own `node_ip` cannot tell apart nodes that share a host (or NAT); the Ray node id
    # can: recorded in result.json (a string, so not an MLflow metric).
    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None:
        metrics = {**metrics, "node_id": node_id}
        if checkpoint is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(checkpoint, os.path.join(d, "state.pt"))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    run_trial(cfg, report, state)
