"""Branching on digits (issue 17): the local critical batch size along training, the schedule
it gives, that schedule trained against constant batch sizes, and the compute of it all
against a full critbatch sweep of the same workload.

1. `critbatch branch tune_jobs/jobs/digits_branch.yaml --json` (or ``--job``): the local CBS
   per branch point and the exported schedule (``schedule.yaml`` in its run folder).
2. `critbatch train --json` three times on the same workload, optimizer, seeds and example
   budget (the branch job's base run and one window), the LR at each run's first batch size by
   the branch job's rule from its (B0, lr0): the schedule; constant B0; constant at the
   schedule's largest batch size. The target is the quickstart's (95% eval accuracy, the stop
   rule's EMA), so each run reports the steps and examples to it; every run trains on to the
   budget and reports its final eval accuracy and loss.
3. `critbatch run tune_jobs/jobs/quickstart.yaml`: the full sweep (B_crit by per-batch-size LR
   search) on the same workload. Compute of each: examples processed by every trial (a branch
   counts from its branch point; a base run from 0), optimizer steps, and wall time.

Each command runs in its own fresh folder (fresh local Ray, fresh MLflow SQLite store), one
after the other. About 6-8 minutes on a 2-core VM.

    uv run --frozen python benchmarks/branch_digits.py [--num-cpus 2] [--skip-sweep]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "tune_jobs" / "jobs"
sys.path.insert(0, str(REPO))

from fresh_cli import run_fresh  # noqa: E402

from trainables.branching import scaled_lr  # noqa: E402


def critbatch(args: list[str], name: str, cpus: int | None) -> tuple[str, float, Path]:
    """Run a critbatch command in a fresh folder; its stdout, wall seconds and run folder root."""
    p, wall, d = run_fresh(args, name, f"cb17{name[:6]}-", cpus)
    if p.returncode:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
        raise SystemExit(f"{' '.join(args[:2])} failed (exit {p.returncode})")
    return p.stdout, wall, d / "runs" / name


def processed(run_dir: Path) -> tuple[int, int, int]:
    """(trials, optimizer steps, examples) every trial of a run folder processed: its last
    report's step less the step it started from (a branch's branch point), times its batch
    size (constant within a sweep's or a branch's trial)."""
    trials = steps = examples = 0
    for params in run_dir.rglob("params.json"):
        rows = [json.loads(x) for x in (params.parent / "result.json").read_text().splitlines()
                if x.strip()] if (params.parent / "result.json").exists() else []  # fmt: skip
        if not rows:
            continue
        c = json.loads(params.read_text())
        n = int(rows[-1]["step"]) - int(c.get("branch_at", 0) or 0)
        trials, steps, examples = trials + 1, steps + n, examples + n * int(c["batch_size"])
    return trials, steps, examples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", type=Path, default=JOBS / "digits_branch.yaml")
    ap.add_argument("--sweep-job", type=Path, default=JOBS / "quickstart.yaml")
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--skip-sweep", action="store_true", help="leave out step 3")
    args = ap.parse_args()
    job = yaml.safe_load(args.job.read_text())
    b = job["branch"]
    b0, lr0, rule = b["base_batch_size"], b["base_lr"], b["lr_rule"]
    budget = (max(b["branch_at"]) + b["window_steps"]) * b0

    # 1. the branch sweep
    out, branch_wall, branch_dir = critbatch(["branch", str(args.job), "--json"], "branch",
                                             args.num_cpus)  # fmt: skip
    res = json.loads(out)
    print(f"1. critbatch branch {args.job.name}: {branch_wall:.0f} s wall; B0 {b0}, lr0 {lr0}, "
          f"{rule}, tolerance {b['tolerance']}, {job['target']['metric']}, seeds per point {res['seeds']}")  # fmt: skip
    print(f"{'branch_at':>10} {'examples':>9} {'k=1 loss':>9}  loss / k=1 loss per batch size "
          f"({', '.join(map(str, res['batch_sizes']))}; ! fails)   local CBS [interval]")  # fmt: skip
    for j, t in enumerate(res["branch_at"]):
        ref = res["losses"][j][0]
        cells = " ".join(f"{x / ref:.2f}{'' if p else '!'}"
                         for x, p in zip(res["losses"][j][1:], res["passes"][j][1:], strict=True))  # fmt: skip
        print(f"{t:>10} {t * b0:>9} {ref:>9.4f}  {cells}   {res['local_cbs'][j]} "
              f"[{res['ci_low'][j]}, {res['ci_high'][j]}]")  # fmt: skip
    schedule = [tuple(p) for p in res["schedule"]]
    print(f"schedule (examples, batch size): {schedule}; steps to {budget} examples: "
          f"{res['steps_saved']['steps_schedule']} vs {res['steps_saved']['steps_constant']} at B0")  # fmt: skip

    # 2. the schedule against constant batch sizes, one training job (no branch section)
    train_job = {k: v for k, v in job.items() if k != "branch"}
    train_job["target"] = {"metric": "eval_accuracy", "value": 0.95, "direction": "max"}
    arms = {"schedule": schedule, f"constant B0={b0}": [(0, b0)]}
    big = max(s for _, s in schedule)
    if big != b0:
        arms[f"constant B={big}"] = [(0, big)]
    rows = []
    for label, sched in arms.items():
        tj = dict(train_job, batch_size_schedule=[list(p) for p in sched])
        f = Path(tempfile.mkdtemp(prefix="cb17job-", dir="/tmp")) / "train.yaml"
        f.write_text(yaml.safe_dump(tj, sort_keys=False))
        lr = scaled_lr(lr0, sched[0][1] / b0, rule)
        name = "train-" + label.split()[0] + str(sched[0][1])
        out, wall, _ = critbatch(["train", str(f), "--json", "--lr", repr(lr), "--lr-rule", rule,
                                  "--max-examples", str(budget)], name, args.num_cpus)  # fmt: skip
        runs = json.loads(out)["runs"]

        def mean(key, runs=runs):
            vals = [r[key] for r in runs if r.get(key) is not None]
            return statistics.fmean(vals) if len(vals) == len(runs) else None

        rows.append((label, lr, mean("step"), mean("examples"), mean("eval_accuracy"),
                     mean("eval_loss"), [r.get("steps_to_target") for r in runs],
                     [r.get("examples_to_target") for r in runs], wall))  # fmt: skip
    print(f"\n2. trained to {budget} examples (mean over seeds {job['seeds']}; target: 95% eval "
          "accuracy, the stop rule's EMA, per seed)")  # fmt: skip
    print(f"{'run':>18} {'LR at start':>11} {'steps':>7} {'examples':>9} {'eval_acc':>9} "
          f"{'eval_loss':>9} {'steps to 95%':>14} {'examples to 95%':>17} {'wall s':>7}")  # fmt: skip
    for label, lr, st, ex, acc, loss, stt, ext, wall in rows:
        print(f"{label:>18} {lr:>11.3g} {st:>7.0f} {ex:>9.0f} {acc:>9.4f} {loss:>9.4f} "
              f"{str(stt):>14} {str(ext):>17} {wall:>7.0f}")  # fmt: skip

    # 3. compute: the branch sweep against a full critbatch sweep
    print("\n3. compute (trials; optimizer steps; examples processed; wall time)")
    t, s, e = processed(branch_dir)
    print(
        f"{'critbatch branch':>28}: {t:>4} trials {s:>8} steps {e:>9} examples {branch_wall:>5.0f} s"
    )
    if not args.skip_sweep:
        out, sweep_wall, sweep_dir = critbatch(["run", str(args.sweep_job), "--no-progress"],
                                               "sweep", args.num_cpus)  # fmt: skip
        headline = next((ln for ln in out.splitlines() if "B_crit =" in ln), "").strip()
        t2, s2, e2 = processed(sweep_dir)
        print(f"{'critbatch run ' + args.sweep_job.name:>28}: {t2:>4} trials {s2:>8} steps "
              f"{e2:>9} examples {sweep_wall:>5.0f} s")  # fmt: skip
        print(f"   ratio branch / sweep: steps {s / s2:.2f}, examples {e / e2:.2f}, wall "
              f"{branch_wall / sweep_wall:.2f}; the sweep: {headline}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
