"""The `critbatch` command: one subcommand per job, each with its own --help.

Subcommands live beside the code they drive; each module listed in COMMAND_MODULES has
``register(subparsers)`` that adds its subcommands with ``set_defaults(func=...)``; ``func``
takes the parsed args and returns an exit code. Modules are imported when the parser is
built, and each keeps its heavy imports (ray, torch, mlflow) inside the functions, so
``critbatch --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from trainables.api import InputError

COMMAND_MODULES = (
    "tune_jobs.commands",  # run, check, resume, quickstart, workloads
    "tune_jobs.cluster_commands",  # submit (a job file to a Ray cluster)
    "analysis.commands",  # analyze, fit
    "trainables.nqm_truth",  # nqm (exact ground truth of the noisy quadratic model)
    "trainables.datasets.download",  # data download
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



if __name__ == "__main__":
    sys.exit(main())
