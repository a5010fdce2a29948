"""`critbatch submit` (a job file to a Ray cluster) and `critbatch cluster-check` (a cluster.yaml).

The work is in :mod:`tune_jobs.cluster`; this module parses flags and prints.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from tune_jobs.cluster import (
    DEFAULT_DASHBOARD,
    check_cluster_config,
    submit_job,
    wait_for_job,
)


def _summary(cfg: dict[str, Any]) -> str:
    lines = [
        f"cluster {cfg['cluster_name']!r} on {cfg['provider']['type']}: max {cfg.get('max_workers')} workers"
    ]
    if cfg["provider"]["type"] == "local":
        ips = cfg["provider"]["worker_ips"]
        return (
            lines[0]
            + f"\n  head {cfg['provider']['head_ip']}, workers {', '.join(ips)}; resources detected by Ray"
        )
    for name, nt in cfg["available_node_types"].items():
        role = (
            "head"
            if name == cfg["head_node_type"]
            else f"workers {nt.get('min_workers', 0)}..{nt.get('max_workers')}"
        )
        kind = (
            nt.get("node_config", {}).get("InstanceType")
            or nt.get("node_config", {}).get("machineType")
            or ""
        )
        nc = nt.get("node_config", {})
        spot = (
            " spot"
            if "InstanceMarketOptions" in nc or "preemptible" in str(nc.get("scheduling", ""))
            else ""
        )
        lines.append(
            f"  {name}: {role} {kind}{spot} resources={nt.get('resources') or 'detected by Ray'}"
        )
    return "\n".join(lines)


def cluster_check_command(args: argparse.Namespace) -> int:
    for path in args.cluster:
        cfg = check_cluster_config(path)
        print(f"{path}: ok\n{_summary(cfg)}")
    return 0


def submit_command(args: argparse.Namespace) -> int:
    client, sid = submit_job(args.job, address=args.address, overrides=args.set,
                             working_dir=args.working_dir, python=args.python)  # fmt: skip
    addr = args.address or os.environ.get("RAY_ADDRESS") or DEFAULT_DASHBOARD
    print(
        f"submitted {sid}\n"
        f"  follow:  ray job logs --address {addr} --follow {sid}\n"
        f"  status:  ray job status --address {addr} {sid}    (stop: ray job stop ... {sid})\n"
        f"  trials:  the Ray dashboard at {addr} (Jobs, Cluster)\n"
        f"  MLflow:  ray attach cluster.yaml -p 5000, then http://127.0.0.1:5000\n"
        f"  resume after a head-node restart: critbatch submit again is NOT a resume; run\n"
        f"           ray job submit --address {addr} --working-dir . -- python -m tune_jobs.cli resume NAME --storage STORAGE"
    )
    if not args.wait:
        return 0
    status = wait_for_job(client, sid)
    print(f"\n{sid}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit",
        help="submit a job file to a Ray cluster as a Ray Job (the repo is its working_dir)",
        description="Validate JOB locally, then run `python -m tune_jobs.cli run JOB` on the cluster as a Ray Job. "
        "The job's storage must be a path every node mounts and its tracking.uri must outlive the job "
        "(the head node's MLflow server: http://127.0.0.1:5000). See docs/cluster.md.",
    )
    p.add_argument(
        "job", type=Path, help="YAML job file inside the working_dir (e.g. tune_jobs/jobs/...)"
    )
    p.add_argument(
        "--address", help=f"Ray dashboard URL (default: $RAY_ADDRESS, else {DEFAULT_DASHBOARD})"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a job field (as in `critbatch run`)",
    )
    p.add_argument(
        "--working-dir",
        default=None,
        help="folder uploaded as the job's working_dir (default: the job file's folder for a "
        "user workload `module:function`, else this repo)",
    )
    p.add_argument(
        "--python",
        default="python",
        help="interpreter on the cluster (default: `python` on the head's PATH)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="follow the job's logs until it ends; exit 1 unless it succeeded",
    )
    p.set_defaults(func=submit_command)

    p = sub.add_parser(
        "cluster-check",
        help="validate Ray cluster files offline (Ray's own validator + critbatch's exposure rules)",
        description="Check cluster.yaml files before `ray up`: provider defaults, the launcher's schema, node types, "
        "and that the dashboard and MLflow listen on 127.0.0.1 only. Needs no cloud credentials.",
    )
    p.add_argument(
        "cluster", nargs="+", type=Path, help="cluster files (cluster.yaml, cluster/*.yaml)"
    )
    p.set_defaults(func=cluster_check_command)
