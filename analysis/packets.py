"""Packets: several reports of one trial carried by one Ray Tune result.

Tune's driver delivers a few hundred results a second on 2 cores, with no MLflow at all
(BENCHMARKS.md, "MLflow writes off Tune's event loop"), so a trial that reports fast gathers
its reports and sends them together (:class:`tune_jobs.trainable.ReportCoalescer`). A packet
is the last report's metrics at the top level, where Tune itself reads them (the progress,
a checkpoint's metrics, ``trial.last_result``, ``Result.metrics``), plus :data:`POINTS`: every
report of the packet in order, the last included. A result without it is one report.

Everything that reads a result or a ``result.json`` line as reports (the scheduler, the
searcher, the MLflow callback, ``reconcile``, the analysis) reads it through :func:`points_of`.
"""

from __future__ import annotations

from typing import Any

# The key of a packet's list of reports (each a full metrics dict). Never a metric, param or
# column: analysis.mlflow_layout.is_tune_key counts it as bookkeeping.
POINTS = "points"


def points_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The reports a result carries, each as the result Tune would have delivered had it been
    sent alone: its own metrics, plus the packet's keys that are not the last report's metrics
    (Tune's bookkeeping such as ``trial_id``, ``config``, ``timestamp``, and the per-trial
    ``node_id``, ``gpus``, ``cpus``, ``device_name``). A result of one report: ``[result]``."""
    points = result.get(POINTS)
    if not isinstance(points, list) or not points:
        return [result]
    last = points[-1]
    shared = {k: v for k, v in result.items() if k != POINTS and k not in last}
    return [{**shared, **p} for p in points]
