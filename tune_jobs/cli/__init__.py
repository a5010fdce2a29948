"""The `critbatch` command: one subcommand per job, each with its own --help.

Every command lives in this package, one module per group, listed in COMMAND_MODULES; each
has ``register(subparsers)`` that adds its subcommands with ``set_defaults(func=...)``;
``func`` takes the parsed args and returns an exit code. The layers below raise ordinary
exceptions; :class:`trainables.api.InputError` (bad input: the message names the field and the
fix) becomes ``critbatch: error: ...`` and exit code 2 here, and nowhere else. Modules keep
their heavy imports (ray, torch, mlflow) inside the functions, so ``critbatch --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from trainables.api import InputError

COMMAND_MODULES = (
    "tune_jobs.cli.run",  # run, check, resume, sync, quickstart, workloads
    "tune_jobs.cli.cluster",  # submit (a job file to a Ray cluster), cluster-check
    "tune_jobs.cli.analyze",  # analyze, fit
    "tune_jobs.cli.compare",  # compare (sweeps side by side, time and cost)
    "tune_jobs.cli.nqm",  # nqm (exact ground truth of the noisy quadratic model)
    "tune_jobs.cli.branch",  # branch (the local critical batch size along training)
    "tune_jobs.cli.train",  # train (one run per seed with a batch-size schedule)
    "tune_jobs.cli.data",  # data list, data download
)


def add_ray_args(p: argparse.ArgumentParser) -> None:
    """--address and --num-cpus: where the Ray work of `run`, `branch` and `train` goes."""
    p.add_argument(
        "--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)"
    )
    p.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="critbatch",
        description="Measure the critical batch size of a training job: per-batch-size "
        "learning-rate search on Ray Tune + Optuna, tracked in MLflow.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"critbatch: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("critbatch: interrupted; resume with `critbatch resume`", file=sys.stderr)
        return 130
