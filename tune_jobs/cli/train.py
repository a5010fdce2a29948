"""`critbatch train JOB.yaml [--batch-size-schedule FILE]`: one run per seed with a batch-size
schedule (:mod:`tune_jobs.train`; docs/branching.md)."""

from __future__ import annotations

import json
from pathlib import Path

from tune_jobs.cli import add_ray_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a job with a batch-size schedule (one run per seed), tracked in MLflow",
        description="Train the job's workload with a batch-size schedule, (examples, "
        "batch_size) pairs: the job's batch_size_schedule, or the file of "
        "--batch-size-schedule (e.g. the schedule.yaml of a `critbatch branch` run folder). "
        "The batch size switches once the examples seen reach each threshold; the LR is the "
        "one at the schedule's first batch size B0 (a branch job's base_lr scaled by its "
        "lr_rule from base_batch_size, else --lr), times B / B0 (lr_rule linear) or "
        "sqrt(B / B0) (sqrt). Each seed trains to the example budget on Ray Tune; prints its "
        "steps, examples, final target metric and where it first reached the target.",
    )
    p.add_argument("job", type=Path, help="YAML job file")
    p.add_argument("--batch-size-schedule", type=Path, metavar="FILE",
                   help="YAML file with batch_size_schedule: [[0, 32], [20000, 64]] (or a bare "
                   "list of pairs); replaces the job's")  # fmt: skip
    p.add_argument("--lr", type=float, default=None,
                   help="LR at the schedule's first batch size (default: from branch.base_lr)")  # fmt: skip
    p.add_argument("--lr-rule", choices=["linear", "sqrt"], default=None,
                   help="LR at batch B: lr x B/B0 or lr x sqrt(B/B0) (default: branch.lr_rule, "
                   "else linear)")  # fmt: skip
    p.add_argument("--max-examples", type=int, default=None, metavar="N",
                   help="example budget of each run (default: a branch job's base run and one "
                   "window, max(branch_at) + window_steps times B0; else 0: the step budget)")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field, e.g. --set name=digits-schedule (YAML value)")  # fmt: skip
    add_ray_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=train_command)


def train_command(args) -> int:
    from tune_jobs.job_file import load_job, load_schedule_file, parse_overrides
    from tune_jobs.train import run_train

    overrides = parse_overrides(args.set)
    if args.batch_size_schedule is not None:
        overrides["batch_size_schedule"] = load_schedule_file(args.batch_size_schedule)
    job = load_job(args.job, overrides)
    result = run_train(job, lr=args.lr, lr_rule=args.lr_rule, max_examples=args.max_examples,
                       address=args.address, num_cpus=args.num_cpus)  # fmt: skip
    out = result.to_json()
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0 if result.synced else 1
    steps = ", ".join(f"{b} from {e}" for e, b in result.schedule)
    budget = f"{result.max_examples} examples" if result.max_examples else "the step budget"
    print(f"{job.name}: batch size {steps} examples; LR {result.lr:g} at {result.schedule[0][1]}, "
          f"{result.lr_rule}; to {budget}")  # fmt: skip
    metric = job.target.metric
    print(f"{'seed':>5} {'steps':>7} {'examples':>9} {metric:>14} {'status':>12} "
          f"{'steps_to_target':>16} {'examples_to_target':>19}")  # fmt: skip
    for r in result.runs:
        value = r.get(metric)
        shown = f"{value:.4g}" if isinstance(value, int | float) else "-"
        print(f"{r['seed']:>5} {r['step'] or '-':>7} {r['examples'] or '-':>9} {shown:>14} "
              f"{r['status'] or '-':>12} {r['steps_to_target'] or '-':>16} "
              f"{r['examples_to_target'] or '-':>19}")  # fmt: skip
    print(f"target {job.target.describe()}; run folder {result.run_dir}; MLflow parent run "
          f"{result.parent_run_id}"
          + ("" if result.synced else " (not fully written; the run folder has everything)"))  # fmt: skip
    return 0 if result.synced else 1
