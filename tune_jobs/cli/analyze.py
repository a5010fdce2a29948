"""`critbatch analyze` (a sweep -> report) and `critbatch fit` (a steps CSV -> B_crit, CBS).

Heavy imports (pandas, scipy, matplotlib, mlflow) happen inside the handlers so that
`critbatch --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from trainables.api import InputError

# Errors that mean "bad input" rather than a bug: loaders raise LookupError (no such sweep),
# FileNotFoundError and ValueError (bad CSV); analysis raises AnalysisError (a ValueError).
_INPUT_ERRORS = (LookupError, FileNotFoundError, ValueError)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="analyse a sweep: steps to target, B_crit with CI, CBS, figures, HTML report",
        description="Load a sweep (MLflow experiment name, parent run id, or run folder), write "
        "a self-contained HTML report with summary.csv/summary.json, log them on the sweep's "
        "parent run, and print the headline (B_crit with its CI, CBS with its definition).",
    )
    p.add_argument(
        "source", metavar="SOURCE", help="MLflow experiment name, parent run id, or run folder"
    )
    p.add_argument("--out", type=Path, help="report folder (default critbatch_reports/<source>)")
    p.add_argument(
        "--no-snapshot", action="store_true",
        help="ignore the sweep's metrics snapshot artifact and fetch every history from MLflow",
    )  # fmt: skip
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    g = p.add_argument_group(
        "target (default: the sweep's own, as its job set it; the seed paper's threshold rule on "
        "train_loss for a sweep that recorded none)"
    )
    g.add_argument("--target-metric", help="metric column, e.g. eval_accuracy or train_loss")
    g.add_argument("--target-value", type=float, help="goal value of the target metric")
    g.add_argument(
        "--direction",
        choices=("min", "max"),
        help="min: reach <= value, max: >= value (default max for *acc*, else min)",
    )
    g.add_argument(
        "--paper-threshold",
        action="store_true",
        help="target = lower quartile of the largest batch size's best curve",
    )
    g.add_argument(
        "--ema",
        type=float,
        metavar="BETA",
        help="smooth the metric with a bias-corrected EMA (beta per eval point) first",
    )
    f = p.add_argument_group("fit")
    _fit_args(f)
    f.add_argument("--strategy", help="strategy for the headline (default tuned, if present)")
    f.add_argument(
        "--lr-range",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="the LR search range, to flag best LRs at its edge",
    )
    cost_args(p)
    p.add_argument(
        "--no-log-artifacts",
        action="store_true",
        help="do not log the report on the sweep's MLflow parent run",
    )
    p.set_defaults(func=analyze_command)  # fmt: skip

    q = subparsers.add_parser(
        "fit",
        help="fit S = S_min (1 + B_crit/B) to a batch_size,steps CSV; print B_crit and CBS",
        description="Fit log S = log(S_min + E_min/B) to a CSV with columns batch_size,steps "
        "(optional seed; repeated batch sizes are repeated measurements) and report B_crit = "
        "E_min/S_min with a bootstrap CI and the overhead-based CBS.",
    )
    q.add_argument("steps_csv", type=Path, metavar="STEPS.csv")
    _fit_args(q)
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q.set_defaults(func=fit_command)


def cost_args(p) -> None:
    """Flags of time, cost and the recommendation (analyze, compare)."""
    from analysis.recommend import DEFAULT_MAX_EXTRA_COST, DEFAULT_MAX_SLOWDOWN

    g = p.add_argument_group("time, cost and the recommended batch size")
    g.add_argument(
        "--price-per-device-hour",
        type=float,
        metavar="PRICE",
        help="money per GPU-hour (or CPU-hour when trials had no GPU): adds cost",
    )
    g.add_argument("--throughput", type=Path, metavar="CSV",
                   help="batch_size,steps_per_second[,devices] measured on the device you will "
                   "train on: re-costs the same steps with these step times")  # fmt: skip
    g.add_argument(
        "--throughput-device",
        metavar="NAME",
        help="the device the throughput table was measured on (stated in the output)",
    )
    g.add_argument("--max-extra-cost", type=float, default=DEFAULT_MAX_EXTRA_COST,
                   metavar="FRACTION", help="recommend the fastest B whose device-hours are "
                   "within this fraction above the cheapest (default %(default)s: 2x)")  # fmt: skip
    g.add_argument("--max-slowdown", type=float, default=DEFAULT_MAX_SLOWDOWN,
                   metavar="FRACTION", help="and, for speed, the cheapest B whose time is within "
                   "this fraction above the fastest (default %(default)s: 2x)")  # fmt: skip


def cost_model(args):
    """The CostModel of the flags of :func:`cost_args`."""
    from analysis.cost import CostModel, load_throughput_csv

    table = load_throughput_csv(args.throughput) if args.throughput else None
    return CostModel(args.price_per_device_hour, table, args.throughput_device)


def _fit_args(p) -> None:
    p.add_argument(
        "--reference-batch-size",
        type=float,
        metavar="B",
        help="B_ref of the CBS definition (default: the smallest batch size)",
    )
    p.add_argument(
        "--overhead",
        type=float,
        default=0.2,
        help="CBS: steps exceed linear scaling from B_ref by this fraction (default 0.2)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap replicates for the CI (default 1000; 0 = none)",
    )
    p.add_argument("--level", type=float, default=0.95, help="CI level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed (default 0)")  # fmt: skip


def _target(args, df):
    """The Target from the flags, else the sweep's own (df.attrs["target"]), else the paper's
    rule on --target-metric (default train_loss)."""
    from analysis.steps import Target, paper_threshold

    if args.paper_threshold and args.target_value is not None:
        raise InputError("give either --paper-threshold or --target-value, not both")
    metric = args.target_metric or "train_loss"
    direction = args.direction or ("max" if "acc" in metric else "min")
    if args.target_value is not None:
        if args.target_metric is None:
            raise InputError(
                "--target-value needs --target-metric (e.g. --target-metric eval_accuracy)"
            )
        return Target(metric, args.target_value, direction, "fixed goal")
    if args.target_metric is None and not args.paper_threshold and "target" in df.attrs:
        t = df.attrs["target"]  # a loader may attach the sweep's own target
        return Target(t["metric"], float(t["value"]), t.get("direction", "min"), "sweep target")
    return paper_threshold(df, metric, ema=args.ema, direction=direction)


def _default_out(source: str) -> Path:
    name = Path(source).name if Path(source).exists() else source
    return Path("critbatch_reports") / (re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "sweep")


def analyze_command(args: argparse.Namespace) -> int:
    from analysis import loaders
    from analysis.compare import sweep_numbers, time_and_cost_html
    from analysis.report import write_report
    from tune_jobs.publish import log_report_artifacts

    try:
        df = loaders.load(args.source, args.tracking_uri, snapshot=not args.no_snapshot)
    except _INPUT_ERRORS as e:
        raise InputError(f"cannot load {args.source!r}: {e}") from e
    out = args.out or _default_out(args.source)
    name = df.attrs.get("sweep_name") or str(args.source)
    try:
        target = _target(args, df)
        numbers = sweep_numbers(
            df, target, label=name, strategy=args.strategy, ema=args.ema,
            overhead=args.overhead, reference_batch_size=args.reference_batch_size,
            n_boot=args.bootstrap, level=args.level, seed=args.seed, cost_model=cost_model(args),
            max_slowdown=args.max_slowdown, max_extra_cost=args.max_extra_cost,
        )  # fmt: skip
        section, _ = time_and_cost_html(numbers, Path(out) / "figures")
        rec = numbers.recommendation.text() if numbers.recommendation else None
        result = write_report(
            df, out, target, ema=args.ema, paper_metric=args.target_metric or "train_loss",
            overhead=args.overhead, reference_batch_size=args.reference_batch_size,
            n_boot=args.bootstrap, level=args.level, seed=args.seed,
            lr_range=tuple(args.lr_range) if args.lr_range else None, strategy=args.strategy,
            title=f"critbatch report: {name}", recommendation=rec, extra_html=section,
        )  # fmt: skip
    except ValueError as e:
        raise InputError(f"{e}") from e
    if rec:
        print(f"Recommendation: {rec}")
    for note in numbers.cost.notes:
        print(f"note: {note}")
    print(result.summary.text())
    for note in result.notes:
        print(f"note: {note}")
    print(f"report: {result.html}")
    if not args.no_log_artifacts:
        files = [result.html, result.summary_csv, result.summary_json, result.out_dir / "figures"]
        try:
            run_id = log_report_artifacts(args.source, files, args.tracking_uri)
        except Exception as e:  # the report exists; say why it is not in MLflow
            print(
                f"critbatch: error: report written but not logged to MLflow: {e}", file=sys.stderr
            )
            return 1
        if run_id:
            print(f"logged the report as artifacts of the sweep's parent run {run_id}")
    return 0


def _steps_table(path: Path):
    from analysis import loaders

    try:
        table = loaders.load_steps_csv(path)
    except FileNotFoundError as e:
        raise InputError(f"{e}; pass the path of a CSV with header batch_size,steps") from e
    except (ValueError, LookupError) as e:
        raise InputError(f"{e}") from e
    missing = [c for c in ("batch_size", "steps") if c not in table.columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {missing}; the header must be batch_size,steps"
        )
    if "seed" not in table.columns:  # repeated rows of one batch size are repeated measurements
        table = table.assign(seed=table.groupby("batch_size").cumcount())
    return table


def fit_command(args: argparse.Namespace) -> int:
    from analysis.fits import critical_batch_size

    table = _steps_table(args.steps_csv)
    try:
        result = critical_batch_size(
            table, args.overhead, args.reference_batch_size, args.bootstrap, args.level, args.seed
        )
    except ValueError as e:
        raise InputError(f"{args.steps_csv}: {e}") from e
    d = result.to_dict()
    if args.json:
        from analysis.report import json_safe

        print(json.dumps(json_safe(d), indent=2))
        return 0
    lo, hi = d["b_crit_ci"]
    ci = f" ({args.level:.0%} CI {lo:.4g} - {hi:.4g}; {d['ci_method']})" if d["n_boot"] else ""
    print(f"B_crit = {d['b_crit']:.4g} examples/step{ci}")
    if not d["b_crit_identified"]:
        print("  B_crit lies beyond 1000x the measured range: read it as a bound")
    print(f"S_min = {d['s_min']:.4g} steps, E_min = {d['e_min']:.4g} examples")
    lo, hi = d["cbs_ci"]
    ci = f" ({args.level:.0%} CI {lo:.4g} - {hi:.4g})" if d["n_boot"] else ""
    print(f"CBS = {d['cbs']:.4g}{ci}: {d['cbs_definition']}")
    return 0
