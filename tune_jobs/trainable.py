"""The Ray Tune function trainable: adapts a critbatch trainable to `tune.report`.

This module is the only place that calls Ray's reporting API (renamed often across Ray 2.x);
the trainables themselves get a plain ``report`` callable. The driver validates the job once
and hands every trial the same base :class:`TrialConfig` (as a dict) plus the step budget per
batch size, so workers never re-read or re-validate the job file.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import ray
from ray import tune

from analysis.packets import POINTS
from trainables.api import Status


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


# Seconds a trial gathers its reports before it sends them to Tune as one result (a packet,
# analysis/packets.py). Tune's driver delivers ~300 results/s with 8 trials in flight on 2
# cores (BENCHMARKS.md), so one result per report caps a sweep there. Longer: fewer results
# for the driver; shorter: the scheduler hears (and stops) a fast trial sooner. At 0.2 s a
# trial sends at most 5 results a second whatever its report rate, and a stop comes at most
# 0.2 s (plus one report) late; a trial reporting less often than this sends each at once.
REPORT_WINDOW_S = 0.2


class ReportCoalescer:
    """The ``report`` a trainable calls (trainables.api.Report): gathers reports and hands
    ``send(result, checkpoint)`` one packet of them (:func:`analysis.packets.points_of`) when
    ``window_s`` has passed since the last send, when a report comes with a checkpoint (which
    goes with the packet: its metrics are the top level's), or when a report's status is final.
    The first report goes at once. :meth:`flush` sends what is left (the trial's end)."""

    def __init__(
        self,
        send: Callable[[dict[str, Any], dict[str, Any] | None], None],
        window_s: float = REPORT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.send, self.window_s, self.clock = send, window_s, clock
        self.pending: list[dict[str, Any]] = []
        self.last_sent = -math.inf

    def __call__(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None:
        self.pending.append(dict(metrics))
        if (
            checkpoint is not None
            or metrics.get("status", Status.RUNNING) != Status.RUNNING
            or self.clock() - self.last_sent >= self.window_s
        ):
            self.flush(checkpoint)

    def flush(self, checkpoint: dict[str, Any] | None = None) -> None:
        if not self.pending:
            return
        points, self.pending = self.pending, []
        self.last_sent = self.clock()
        packet = dict(points[-1]) if len(points) == 1 else {**points[-1], POINTS: points}
        self.send(packet, checkpoint)


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

    def send(result: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None:
        result = {**result, "node_id": node_id, "gpus": gpus, "cpus": cpus,
                  "device_name": device_name}  # fmt: skip
        if checkpoint is None:
            tune.report(result)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(checkpoint, os.path.join(d, "state.pt"))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))

    report = ReportCoalescer(send)
    try:
        run_trial(cfg, report, state)
    except Exception:
        # The points measured before the failure still go to Tune, but the trial's own error is
        # what Tune must record: a failure to send them is dropped. (Not on BaseException: a
        # stopped trial leaves by SystemExit from tune.report, and must not report again.)
        with contextlib.suppress(Exception):
            report.flush()
        raise
    report.flush()
