"""`critbatch compare A B ...`: sweeps side by side, one table, shared-axes figures, one page.

Each argument is a sweep name (the job's ``name``), a parent run id, or an experiment name
(every sweep in it). Each sweep is measured at its own target (the job's ``target``) unless
--target-metric/--target-value set one for all; different targets are an error unless
--allow-different-targets. The page is logged on a run of its own (tag
``critbatch.role=comparison``) in the first sweep's experiment.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path

from trainables.api import InputError
from tune_jobs.cli.analyze import _INPUT_ERRORS, cost_args, cost_model


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare sweeps: B_crit, CBS, time and cost to target, one figure, one HTML page",
        description="Put sweeps side by side (strategies, models, data fractions, optimizers): "
        "one table (B_crit with CI, CBS, S_min, E_min, recommended and fastest batch size with "
        "time and device-hours to target), figures on shared axes, and an HTML page logged to "
        "MLflow.",
    )
    p.add_argument("sweeps", nargs="+", metavar="SWEEP",
                   help="sweep name, parent run id, or experiment name (all its sweeps)")  # fmt: skip
    p.add_argument("--tracking-uri",
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")  # fmt: skip
    p.add_argument("--out", type=Path, help="output folder (default critbatch_reports/compare-...)")
    g = p.add_argument_group("target (default: each sweep's own)")
    g.add_argument("--target-metric", help="one target metric for every sweep")
    g.add_argument("--target-value", type=float, help="its goal value")
    g.add_argument("--direction", choices=("min", "max"), help="default max for *acc*, else min")
    g.add_argument("--allow-different-targets", action="store_true",
                   help="compare sweeps whose targets differ (each row states its target)")  # fmt: skip
    p.add_argument("--strategy", help="strategy within each sweep (default tuned, if present)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap replicates per fit (default 1000)")  # fmt: skip
    cost_args(p)
    p.add_argument("--no-log-artifacts", action="store_true",
                   help="do not log the page to MLflow")  # fmt: skip
    p.set_defaults(func=compare_command)


def _target_of(args, parent):
    """The flags' target, else the sweep's own (its parent run's params)."""
    from trainables.api import Target

    if (args.target_metric is None) != (args.target_value is None):
        raise InputError("give --target-metric and --target-value together (or neither)")
    if args.target_metric is not None:
        direction = args.direction or ("max" if "acc" in args.target_metric else "min")
        return Target(args.target_metric, args.target_value, direction, "fixed goal")
    p = parent.data.params
    if "target_metric" not in p or "target_value" not in p:
        raise InputError(
            f"sweep {parent.info.run_name!r} ({parent.info.run_id}) records no target; pass "
            "--target-metric and --target-value"
        )
    return Target(p["target_metric"], float(p["target_value"]),
                  p.get("target_direction", "min"), "sweep target")  # fmt: skip


def compare_command(args: argparse.Namespace) -> int:
    from analysis import loaders
    from analysis.compare import compare_sweeps, format_comparison, sweep_numbers

    parents = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # compare takes every sweep of an experiment
            for source in args.sweeps:
                parents += loaders.find_sweeps(source, args.tracking_uri)
    except _INPUT_ERRORS as e:
        raise InputError(f"cannot find sweep: {e}") from e
    seen, unique = set(), []
    for p in parents:  # a sweep named twice (by name and by its experiment) counts once
        if p.info.run_id not in seen:
            seen.add(p.info.run_id)
            unique.append(p)
    names = [p.info.run_name or p.info.run_id for p in unique]
    labels = [n if names.count(n) == 1 else f"{n} ({p.info.run_id[:8]})"
              for n, p in zip(names, unique, strict=True)]  # fmt: skip
    if len(unique) < 2:
        raise InputError(
            f"compare needs at least 2 sweeps; {args.sweeps} name {len(unique)}. Name two or "
            "more sweeps, or an experiment that holds several"
        )
    model = cost_model(args)
    numbers = []
    for parent, label in zip(unique, labels, strict=True):
        target = _target_of(args, parent)
        try:
            df = loaders.load_mlflow(parent.info.run_id, args.tracking_uri)
            numbers.append(sweep_numbers(
                df, target, label=label, strategy=args.strategy, n_boot=args.bootstrap,
                cost_model=model, max_slowdown=args.max_slowdown,
                max_extra_cost=args.max_extra_cost,
            ))  # fmt: skip
        except _INPUT_ERRORS as e:
            raise InputError(f"sweep {label!r}: {e}") from e
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", "-vs-".join(labels))[:120]
    out = args.out or Path("critbatch_reports") / f"compare-{slug}"
    result = compare_sweeps(numbers, out, allow_different_targets=args.allow_different_targets)
    for n in numbers:
        rec = n.recommendation.text() if n.recommendation else n.verdict
        print(f"{n.label}: {rec}")
    print()
    print(format_comparison(result.table))
    print(f"\npage: {result.html}")
    if not args.no_log_artifacts:
        try:
            from tune_jobs.publish import log_comparison

            run_id = log_comparison(unique, result.files, labels, args.tracking_uri)
        except Exception as e:  # the page exists; say why it is not in MLflow
            print(f"critbatch: error: page written but not logged to MLflow: {e}", file=sys.stderr)
            return 1
        print(f"logged the comparison as run {run_id} in experiment {unique[0].info.experiment_id}")
    return 0
