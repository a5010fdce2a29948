"""`critbatch branch JOB.yaml`: the local critical batch size along training, by branching from
checkpoints of a base run (Merrill et al. 2025; :mod:`tune_jobs.branch`)."""

from __future__ import annotations

import json
from pathlib import Path

from tune_jobs.cli import add_ray_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "branch",
        help="the local critical batch size along training, by branching from checkpoints",
        description="Run a job's base run at branch.base_batch_size and branch.base_lr, "
        "checkpointed at branch.branch_at; from each checkpoint, one branch per factor k trains "
        "window_steps / k steps at batch k x base_batch_size (LR by branch.lr_rule), in "
        "parallel on Ray Tune, tracked in MLflow. Prints the local critical batch size per "
        "branch point (the largest k x B0 whose target.metric is within branch.tolerance of "
        "the k = 1 branch's, with a bootstrap interval over seeds) and the batch-size schedule "
        "that follows it.",
    )
    p.add_argument("job", type=Path, help="YAML job file with a branch: section")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field, e.g. --set branch.tolerance=0.02 (YAML value)")  # fmt: skip
    add_ray_args(p)
    p.add_argument("--sweep", metavar="SOURCE",
                   help="a full critbatch sweep of the same workload (its experiment, parent run id or run "
                   "folder): print its B_crit and B_simple at each branch point's k=1 loss beside "
                   "the local CBS")  # fmt: skip
    p.add_argument("--tracking-uri", default=None,
                   help="where --sweep is (default: the job's tracking.uri)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=branch_command)


def branch_plan_text(job) -> str:
    """What `critbatch branch` would run (`critbatch check` prints it)."""
    plan = job.branch.plan()
    n_base = len(job.seeds) if max(plan.branch_at) > 0 else 0
    n = len(job.seeds) * len(plan.branch_at) * len(plan.factors)
    return "\n".join([
        f"branch {job.name!r}: workload {job.workload}, seeds {', '.join(map(str, job.seeds))}",
        f"  base run: batch {plan.base_batch_size}, LR {plan.base_lr:g}, to step "
        f"{max(plan.branch_at)}; branch points {', '.join(map(str, plan.branch_at))}",
        f"  branches: factors {', '.join(map(str, plan.factors))} (batch sizes "
        f"{', '.join(map(str, job.batch_sizes))}), window {plan.window_steps} / k steps, LR "
        f"{plan.lr_rule}; pass: {job.target.metric} <= (1 + {plan.tolerance:g}) x the k=1 branch's",
        f"  trials: {n_base} base + {n} branches; resources per trial: {job.resources.cpus:g} CPU, "
        f"{job.resources.gpus:g} GPU",
        f"  MLflow: {job.tracking.uri}, experiment {job.experiment!r}; run folder under {job.storage}",
    ])  # fmt: skip


def branch_command(args) -> int:
    from tune_jobs.branch import SCHEDULE_FILE, run_branch
    from tune_jobs.config import JobError
    from tune_jobs.job_file import load_job, parse_overrides

    job = load_job(args.job, parse_overrides(args.set))
    if not job.branch.enabled:
        raise JobError(f"branch.branch_at: {args.job} has no branch section with branch_at; add "
                       "branch: {base_batch_size: 8, base_lr: 0.05, branch_at: [0, 100, 1000], "
                       "window_steps: 3200} (docs/branching.md)")  # fmt: skip
    plan = job.branch.plan()
    sweep = None
    if args.sweep:  # loaded before anything launches: a bad source is an error, not a lost run
        from analysis.loaders import load

        sweep = load(args.sweep, args.tracking_uri or job.tracking.uri)
        if job.target.metric not in sweep.columns:
            raise JobError(f"--sweep {args.sweep}: the sweep has no {job.target.metric!r} metric "
                           "(the loss the branches compare); give a sweep of the same workload")  # fmt: skip
    if not args.json:
        print(branch_plan_text(job), flush=True)
    result = run_branch(job, address=args.address, num_cpus=args.num_cpus,
                        job_yaml=args.job.read_text())  # fmt: skip
    out = result.to_json(plan)
    if sweep is not None:
        from analysis.branch import sweep_at_losses

        at = sweep_at_losses(sweep, job.target.metric, [row[0] for row in out["losses"]])
        out["sweep"] = {"source": args.sweep, "at_k1_loss": at.to_dict("records")}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0 if result.synced else 1
    print(branch_result_text(job, out))
    print(f"schedule written to {result.run_dir / SCHEDULE_FILE}; train it with `critbatch "
          f"train {args.job} --batch-size-schedule {result.run_dir / SCHEDULE_FILE}`")  # fmt: skip
    print(f"run folder {result.run_dir}; MLflow parent run {result.parent_run_id}"
          + ("" if result.synced else " (not fully written; the run folder has everything)"))  # fmt: skip
    return 0 if result.synced else 1


def branch_result_text(job, out: dict) -> str:
    """The table `critbatch branch` prints from its JSON result ``out``: per branch point, the
    examples seen, the k = 1 loss, every branch's loss against it, the local CBS and its
    interval; then the schedule and the steps it saves."""
    plan = job.branch.plan()
    lines: list[str] = []
    lines.append(
        f"{job.name}: base B0={plan.base_batch_size} lr0={plan.base_lr:g}; branches k x B0 "
        f"for {plan.window_steps} / k steps, LR {plan.lr_rule}; pass: {job.target.metric} <= "
        f"(1 + {plan.tolerance:g}) x the k=1 branch's; seeds {list(job.seeds)}"
    )
    lines.append("columns k>1: mean loss / k=1 mean loss; ! fails")
    head = "".join(f"{'k=' + str(k):>10}" for k in plan.factors[1:])
    lines.append(
        f"{'branch_at':>10} {'examples':>10} {'k=1 loss':>11}{head} {'local_cbs':>10} "
        f"{'interval':>13}"
    )
    for j, t in enumerate(out["branch_at"]):
        row, ok = out["losses"][j], out["passes"][j]
        ref = row[0]
        cells = "".join(
            f"{x / ref:>9.4f}{' ' if p else '!'}" for x, p in zip(row[1:], ok[1:], strict=True)
        )
        cbs, lo, hi = out["local_cbs"][j], out["ci_low"][j], out["ci_high"][j]
        ci = f"[{lo}, {hi}]" if lo is not None and hi is not None else "-"
        lines.append(
            f"{t:>10} {out['examples_at'][j]:>10} {ref:>11.5g}{cells} {cbs if cbs else '-':>10} "
            f"{ci:>13}"
        )
    for j, r in enumerate(out.get("sweep", {}).get("at_k1_loss", [])):
        if r["b_crit"] == r["b_crit"]:
            bs = f", B_simple {r['b_simple']:.3g}" if r["b_simple"] == r["b_simple"] else ""
            got = f"B_crit {r['b_crit']:.3g} (95% CI {r['ci_low']:.3g}-{r['ci_high']:.3g}){bs}"
        else:
            got = f"no B_crit: {r['note']}"
        lines.append(
            f"full sweep {out['sweep']['source']} at the k=1 loss of branch point "
            f"{out['branch_at'][j]} ({r['loss']:.4g}): {got}"
        )
    steps = ", ".join(f"{b} from {e} examples" for e, b in out["schedule"])
    s = out["steps_saved"]
    lines.append(f"schedule (batch size from examples on): {steps}")
    lines.append(
        f"steps to {(max(plan.branch_at) + plan.window_steps) * plan.base_batch_size} examples: "
        f"{s['steps_schedule']} with the schedule, {s['steps_constant']} at B0 "
        f"({s['saved_fraction']:.1%} saved)"
    )
    return "\n".join(lines)
