"""`critbatch run | check | resume | sync | quickstart | workloads`."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from trainables.api import InputError
from tune_jobs.cli import add_ray_args

JOBS_DIR = Path(__file__).resolve().parents[1] / "jobs"  # tune_jobs/jobs/


def _job_reference() -> str:
    from tune_jobs.config_build import field_docs

    lines = ["job file fields (YAML; nested fields as mappings):"]
    for name, tp, doc in field_docs():
        lines.append(f"  {name} ({tp}): {doc}")
    return "\n".join(lines)


def register(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("run", help="run a sweep from a job file", formatter_class=fmt,
                       description="Run a sweep: every batch size searched at once on one Ray cluster "
                       "(local unless --address/RAY_ADDRESS), one Optuna study per batch size, every trial an "
                       "MLflow child run of the sweep's parent run.", epilog=_job_reference())  # fmt: skip
    _job_args(p)
    add_ray_args(p)
    p.add_argument("--no-progress", action="store_true", help="do not print progress while running")
    p.add_argument("--analyze", action="store_true", help="write the analysis report when done")
    p.set_defaults(func=run_command)

    p = sub.add_parser("check", help="validate a job file and print its plan; launches nothing",
                       description="Every check `run` makes before it launches anything (the job, "
                       "its storage and name, the tracking store, the data on disk, the resources "
                       "of the local Ray it would start or the cluster at --address), without "
                       "starting Ray: `ok` means `run` will start.",
                       formatter_class=fmt, epilog=_job_reference())  # fmt: skip
    _job_args(p)
    p.add_argument("--address", help="Ray cluster address `run` would use (default: $RAY_ADDRESS)")
    p.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the local Ray `run` would start"
    )
    p.set_defaults(func=check_command)

    p = sub.add_parser(
        "resume", help="finish a sweep whose driver died (one command, nothing re-run)"
    )
    p.add_argument("sweep", help="sweep name (its folder under --storage) or the run folder itself")
    p.add_argument(
        "--storage",
        default="critbatch_runs",
        help="folder holding run folders (default critbatch_runs)",
    )
    p.add_argument(
        "--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)"
    )
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=resume_command)

    p = sub.add_parser(
        "sync", help="replay into MLflow what a sweep recorded while MLflow was unreachable"
    )
    p.add_argument("sweep", help="sweep name or run folder")
    p.add_argument("--storage", default="critbatch_runs")
    p.set_defaults(func=sync_command)

    p = sub.add_parser(
        "quickstart", help="a digits sweep over batch sizes 8..512 on local Ray, then the analysis"
    )
    p.add_argument(
        "--trials-per-batch-size",
        type=int,
        default=None,
        help="LR trials per batch size (default 5)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the LR search (default 0)")
    p.add_argument(
        "--tracking-uri",
        default="sqlite:///mlflow.db",
        help="MLflow store (default sqlite:///mlflow.db here)",
    )
    p.add_argument("--storage", default="critbatch_runs")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.set_defaults(func=quickstart_command)

    p = sub.add_parser("workloads", help="list the workloads and the metrics they report")
    p.set_defaults(func=workloads_command)


def _job_args(p) -> None:
    p.add_argument("job", type=Path, help="YAML job file (examples in tune_jobs/jobs/)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field, e.g. --set lr_search.trials_per_batch_size=4 (YAML value)")  # fmt: skip


def _load(args):
    from tune_jobs.job_file import load_job, parse_overrides

    return load_job(args.job, parse_overrides(args.set))


def plan_text(job) -> str:
    from trainables.registry import get_workload

    w = get_workload(job.workload, job.code_dir)
    steps = [job.max_steps_for(b, w.train_size) for b in job.batch_sizes]
    lr = (f"LR searched in [{job.lr_search.min:g}, {job.lr_search.max:g}] ({'log' if job.lr_search.log else 'linear'}), "
          f"{job.lr_search.trials_per_batch_size} trials per batch size ({job.lr_search.algorithm})"
          if job.tuned else f"{job.strategy.name}: base LR {job.strategy.base_lr:g} at batch size {job.strategy.base_batch_size}")  # fmt: skip
    from analysis.tracking_uri import redact_uri
    from trainables.schedules import peak_lr

    lines = [
        f"sweep {job.name!r}: workload {job.workload} ({w.description})",
        f"  batch sizes: {', '.join(map(str, job.batch_sizes))}",
        f"  seeds: {', '.join(map(str, job.seeds))}",
        f"  {lr}",
        f"  target: {job.target.metric} {'<=' if job.target.direction == 'min' else '>='} {job.target.value:g}",
        f"  budget: {'max ' + str(job.budget.max_steps) + ' steps' if job.budget.max_steps else str(job.budget.epochs) + ' epochs'}"
        f" per trial (steps by batch size: {', '.join(f'{b}:{s}' for b, s in zip(job.batch_sizes, steps, strict=True))}); eval every {job.eval_every} steps",
        f"  trials: {'at most ' if job.tuned and job.lr_search.stop_when_converged else ''}{job.total_trials} = {len(job.batch_sizes)} batch sizes x {len(job.seeds)} seeds x ({job.trials_per_study} search + {job.lr_search.confirm_seeds} confirmation)"
        + (
            " (a study stops once its LR search has converged)"
            if job.tuned and job.lr_search.stop_when_converged
            else ""
        ),
        f"  steps to target: from {job.lr_search.confirm_seeds} confirmation runs per study (the chosen LR, fresh seeds); "
        f"a trial stops when the EMA (beta {job.target.smoothing:g} per eval) of {job.target.metric} meets the target"
        if job.lr_search.confirm_seeds
        else "  steps to target: the fastest search trial (no confirmation runs: biased low)",
        f"  resources per trial: {job.resources.cpus:g} CPU, {job.resources.describe_gpus()}; "
        f"early stopping {'on' if job.early_stopping.enabled and job.tuned else 'off'}",
        f"  MLflow: {redact_uri(job.tracking.uri)}, experiment {job.experiment!r}; run folder {Path(job.storage) / job.name}",
    ]
    o, s = job.optimizer, job.strategy
    opt = (
        f"betas {o.betas}, eps {o.eps:g}"
        if o.name in ("adam", "adamw")
        else f"momentum {o.momentum:g}"
    )
    decay = {"cosine": f"cosine to {s.final_lr_fraction:g} x peak", "wsd": f"WSD (last {s.wsd_decay_fraction:.0%} decays to {s.final_lr_fraction:g} x peak)",
             "step": f"step decay at epochs {s.decay_epochs}"}.get(s.decay, "constant" if not s.decay_epochs else f"step decay at epochs {s.decay_epochs}")  # fmt: skip
    horizon = (
        (f" over {s.horizon_steps} steps" if s.horizon_steps else " over each trial's budget")
        if s.decay in ("cosine", "wsd")
        else ""
    )
    lines.append(
        f"  optimizer: {o.name} ({opt}, weight decay {o.weight_decay:g}); LR after warm-up: {decay}{horizon}"
    )
    if o.name in ("adam", "adamw") and s.name == "lsr":
        lines.append(
            "  note: lsr is SGD's rule; for adam / adamw the square-root rule srsr is the counterpart (Malladi et al. 2022)"
        )
    if job.log_noise_scale:
        lines.append(
            "  gradient noise scale: B_simple logged at every eval point (two half-batch gradients per step)"
        )
    if job.micro_batch_size:
        split = [
            f"{b}:{math.ceil(b / job.micro_batch_size)}"
            for b in job.batch_sizes
            if b > job.micro_batch_size
        ]
        lines.append(
            f"  micro-batches of at most {job.micro_batch_size} examples; parts per step: "
            + (", ".join(split) if split else "none (no batch size is larger)")
        )
    if not job.tuned:
        lrs = ", ".join(f"{b}:{peak_lr(job.schedule(), b):.4g}" for b in job.batch_sizes)
        lines.insert(4, f"  LR per batch size: {lrs}")
    return "\n".join(lines)


def check_command(args) -> int:
    from tune_jobs.preflight import check_user_code, preflight

    job = _load(args)
    preflight(job, address=args.address, num_cpus=args.num_cpus)
    if job.branch.enabled:
        from tune_jobs.cli.branch import branch_plan_text

        print(branch_plan_text(job))
        print("ok: the job is valid and `critbatch branch` will start (nothing launched)")
        return 0
    if job.batch_size_schedule:
        steps = ", ".join(f"{b} from {e}" for e, b in job.batch_size_schedule)
        print(f"train {job.name!r}: workload {job.workload}, batch size {steps} examples; "
              f"seeds {', '.join(map(str, job.seeds))}")  # fmt: skip
        print("ok: the job is valid and `critbatch train` will start (nothing launched)")
        return 0
    print(plan_text(job))
    probe = check_user_code(job)  # a JobError (InputError) is the CLI's exit 2
    if probe and probe["contract"] == "build":
        shown = ", ".join(f"{k} {v:.4g}" for k, v in probe["metrics"].items())
        print(
            f"  user code: built, one batch of 2: loss {probe['loss']:.4g} (a scalar); evaluate: {shown}"
        )
    elif probe:
        print("  user code: imported; train(config, report, state) has the right parameters")
    print("ok: the job is valid and `critbatch run` will start (nothing launched)")
    return 0


def _report_sweep(result, job, analyze: bool) -> int:
    """Print the sweep's summary (the same numbers as `critbatch analyze`: one function on the
    frame loaded back from MLflow) and where to see it, and with ``analyze`` write its HTML
    report from that same summary; the exit code: 1 when every trial of some batch size
    errored (the sweep measured nothing there), else 0."""
    from analysis.tracking_uri import redact_uri
    from tune_jobs.summary import sweep_summary, trial_counts

    numbers = result.numbers
    if numbers is not None and numbers.recommendation is not None:
        print(f"\nRecommendation: {numbers.recommendation.text()}")
    print(f"\n{len(result.trials)} trials ({trial_counts(result.trials)}) in "
          f"{result.wall_time_s:.0f} s; run folder {result.run_dir}")  # fmt: skip
    uri = result.tracking_uri
    from tune_jobs.mlflow_view import runs_url

    local = uri.startswith("sqlite")
    url = runs_url("http://127.0.0.1:5000" if local else redact_uri(uri), result.experiment_id)
    start = f"  mlflow ui --backend-store-uri {uri}   # then open\n" if local else ""
    print(f"MLflow: experiment {job.experiment!r}, parent run {result.parent_run_id}. The sweeps "
          f"of the experiment side by side (b_crit, CBS, recommended B):\n{start}  {url}")  # fmt: skip
    failed = _failed_batch_sizes(result.trials)
    if failed:
        for b, error in failed.items():
            print(
                f"critbatch: error: every trial at batch size {b} failed: {error}", file=sys.stderr
            )
        print(f"critbatch: error: the sweep measured nothing at batch size(s) "
              f"{', '.join(map(str, failed))}; fix the cause above and run it again under a new name",
              file=sys.stderr)  # fmt: skip
        return 1
    try:
        summary, df = sweep_summary(result, job)
    except (ValueError, LookupError) as e:
        print(f"\nNo B_crit: {e}")
        return 0
    print()
    print(summary.text())
    for note in summary.notes:
        print(f"note: {note}")
    if analyze:
        from analysis.report import render_report
        from tune_jobs.publish import log_report_artifacts

        out = result.run_dir / "report"
        report = render_report(summary, df, out, title=f"critbatch report: {job.name}")
        print(f"report: {report.html}")
        try:
            files = [report.html, report.summary_csv, report.summary_json, out / "figures"]
            log_report_artifacts(result.parent_run_id, files, uri)
        except Exception as e:  # the report exists; say why it is not in MLflow
            print(f"critbatch: report written but not logged to MLflow: {e}", file=sys.stderr)
    return 0


def _failed_batch_sizes(trials: list[dict]) -> dict[int, str]:
    """Batch size -> the first error, for each batch size whose trials all errored."""
    from trainables.api import Status

    by_b: dict[int, list[dict]] = {}
    for t in trials:
        by_b.setdefault(t["batch_size"], []).append(t)
    return {b: next((t.get("error") for t in ts if t.get("error")), "no error message")
            for b, ts in sorted(by_b.items(), key=lambda kv: kv[0] or 0)
            if ts and all(t["status"] == Status.ERRORED for t in ts)}  # fmt: skip


def run_command(args) -> int:
    from tune_jobs.sweep import run_sweep

    job = _load(args)
    if job.branch.enabled:
        from tune_jobs.config import JobError

        raise JobError(f"branch: {args.job} branches from a base run (branch.branch_at is set); "
                       f"run it with `critbatch branch {args.job}`")  # fmt: skip
    if job.batch_size_schedule:
        from tune_jobs.config import JobError

        raise JobError(f"batch_size_schedule: {args.job} trains with a batch-size schedule; run "
                       f"it with `critbatch train {args.job}`, or remove the schedule to sweep "
                       "batch sizes")  # fmt: skip
    print(plan_text(job), flush=True)
    result = run_sweep(job, address=args.address, num_cpus=args.num_cpus, progress=not args.no_progress,
                       job_yaml=args.job.read_text())  # fmt: skip
    code = _report_sweep(result, job, args.analyze and result.synced)
    return code or (0 if result.synced else 1)  # not synced: the sweep said to run `critbatch sync`


def resume_command(args) -> int:
    import json

    from tune_jobs.job_file import parse_stored_job
    from tune_jobs.sweep import resume_sweep

    result = resume_sweep(args.sweep, args.storage, address=args.address, num_cpus=args.num_cpus,
                          progress=not args.no_progress)  # fmt: skip

    job = parse_stored_job(json.loads((result.run_dir / "sweep.json").read_text())["job"])
    code = _report_sweep(result, job, False)
    return code or (0 if result.synced else 1)


def sync_command(args) -> int:
    from tune_jobs.sweep import SWEEP_FILE, sync_sweep

    p = Path(args.sweep)
    run_dir = p if (p / SWEEP_FILE).exists() else Path(args.storage) / args.sweep
    if not (run_dir / SWEEP_FILE).exists():
        raise InputError(f"no sweep {args.sweep!r} under {args.storage}; give the run folder")
    try:
        counts = sync_sweep(run_dir.resolve())
    except Exception as e:  # the server is still away: nothing lost, try again later
        print(f"critbatch sync: MLflow unreachable ({type(e).__name__}: {e}); nothing lost, "
              "run it again when the server is back", file=sys.stderr)  # fmt: skip
        return 1
    print(
        f"synced: {counts['runs_created']} child runs created, {counts['points_sent']} metric points sent"
    )
    if counts["snapshot_points"] >= 0:
        print(f"metrics snapshot rewritten on the parent run: {counts['snapshot_points']} points")
    return 0


def quickstart_command(args) -> int:
    from tune_jobs.job_file import load_job
    from tune_jobs.sweep import check_tracking_uri, run_sweep

    over = {"name": f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}", "tracking.uri": args.tracking_uri,
            "storage": args.storage}  # fmt: skip
    if args.trials_per_batch_size:
        over["lr_search.trials_per_batch_size"] = args.trials_per_batch_size
    if args.seed is not None:
        over["lr_search.seed"] = args.seed
    path = JOBS_DIR / "quickstart.yaml"
    job = load_job(path, over)
    check_tracking_uri(job.tracking.uri)
    print(plan_text(job), flush=True)
    result = run_sweep(job, num_cpus=args.num_cpus, job_yaml=path.read_text())
    code = _report_sweep(result, job, not args.no_report and result.synced)
    return code or (0 if result.synced else 1)


def workloads_command(args) -> int:
    from trainables.options import describe
    from trainables.registry import workloads

    for name, w in workloads().items():
        metrics = ", ".join(f"{m} ({d})" for m, d in w.all_metrics().items())
        size = f"{w.train_size} train examples" if w.train_size else "size from data on disk"
        data = f"; data: {w.dataset}" if w.dataset else ""
        print(f"{name}\n  {w.description}\n  {size}{data}\n  metrics: {metrics}\n  default target: "
              f"{w.default_target.metric} {w.default_target.direction} {w.default_target.value:g}")  # fmt: skip
        for opt, tp, default, doc in describe(w.options) if w.options else []:
            print(f"  options.{opt} ({tp}, default {default!r}): {doc}")
    print(
        "\nYour own model: workload: \"my_module:build\" (docs/workloads.md, 'Your own workload')"
    )
    return 0
