"""The LR search modes through a real sweep (local Ray, Tune's scheduler, the journal, MLflow
on SQLite), side by side in one process: the cascade, the parallel search
(``lr_search.parallel``) and rounds (the default), on ``tune_jobs/jobs/nqm_small.yaml``'s exact
noisy quadratic model, against `critbatch nqm`'s ground truth.

``benchmarks/search_efficiency.py`` measures the same searches in a simulation where one step
is one time unit; here the trials are real Tune trials, so which trial finishes first is
Tune's, and the scheduler's stops and withdrawals happen at real reports. ``nqm_exact``
computes a trial in milliseconds whatever its steps, so wall time here says nothing about a
GPU sweep's unless paced (``--pace``: each report of a trial waits as long as its steps would
take, so the scheduler's stops and withdrawals act when they would in real training; unpaced,
a trial has run to its end before its first report is read, and nothing can stop it).
Compute is counted in steps (every trial's steps run, withdrawn and stopped ones included,
over the oracle's: one run per batch size at its optimal LR): ``compute`` up to where the
search ended each trial, ``ran`` up to its last report in ``result.json`` (on the parallel
search's virtual clock a trial may run past the report the search ends it at, while the driver
holds that report back for a slower trial; in the other modes a packet's reports past a stop).

    .venv/bin/python benchmarks/parallel_sweep.py [--modes cascade,parallel,rounds] [--plateau 0,0.01]
    .venv/bin/python benchmarks/parallel_sweep.py --job tune_jobs/jobs/nqm_sgd_small.yaml \
        --confirm-seeds 4 --repeats 3   # noisy training (nqm_sgd), the default estimator
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

JOB = Path(__file__).resolve().parents[1] / "tune_jobs" / "jobs" / "nqm_small.yaml"
MODES = {"cascade": {"cascade": True}, "parallel": {"cascade": False, "parallel": True},
         "rounds": {"cascade": False}}  # fmt: skip


def one(
    mode: str, trials: int, tmp: Path, truth: dict, pace: float, cpus: float, plateau: float,
    job_file: Path = JOB, confirm: int = 0, repeat: int = 0, trace: bool = False,
) -> dict:  # fmt: skip
    from tune_jobs.job_file import parse_job
    from tune_jobs.summary import sweep_summary
    from tune_jobs.sweep import run_sweep

    d = yaml.safe_load(job_file.read_text())
    tag = f"{mode}-{plateau:g}-r{repeat}"
    d.update(name=f"par-{tag}", storage=str(tmp / "runs"), seeds=[repeat],
             tracking={"uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": tag})  # fmt: skip
    d["lr_search"] |= {"trials_per_batch_size": trials, "confirm_seeds": confirm,
                       "seed": repeat, **MODES[mode]}  # fmt: skip
    if d["workload"] == "nqm_exact":  # nqm_sgd computes its steps: its time is real
        d["options"] |= {"seconds_per_step": pace}
    d["resources"] |= {"cpus": cpus}
    d["early_stopping"] = {**d.get("early_stopping", {}), "plateau": plateau}
    job = parse_job(d)
    t0 = time.perf_counter()
    res = run_sweep(job, progress=False)
    wall = time.perf_counter() - t0
    summary, _ = sweep_summary(res, job)
    rows = res.trials
    if trace:  # every trial, by batch size in the order the search numbered them
        for r in sorted(rows, key=lambda r: (r["batch_size"], r.get("number") or 0)):
            print(f"  {mode} B={r['batch_size']} lr {r['lr']:.4g} {r['status']} "
                  f"{int(r.get('steps_run') or 0)} steps", flush=True)  # fmt: skip
    compute = sum(int(r.get("steps_run") or 0) for r in rows)
    ran = _steps_ran(res.run_dir)
    steps = dict(zip(truth["batch_sizes"], truth["steps"], strict=True))
    found = {r.batch_size: r.steps for r in summary.steps_table().itertuples()}
    excess = [found[b] / steps[b] - 1 for b in steps if found.get(b) == found.get(b)]
    lo, hi = summary.cbs.b_crit_ci
    return {
        "mode": mode, "plateau": plateau, "repeat": repeat, "trials_per_b": trials,
        "covered": bool(lo <= truth["b_crit"] <= hi), "wall_s": round(wall, 1),
        "trials": len(rows) / len(job.batch_sizes),
        "withdrawn": sum(r["status"] == "withdrawn" for r in rows) / len(job.batch_sizes),
        "compute_x_oracle": compute / sum(truth["steps"]),
        "ran_x_oracle": ran / sum(truth["steps"]),
        "b_crit_error": summary.cbs.b_crit / truth["b_crit"] - 1,
        "mean_excess_steps": sum(excess) / len(excess) if excess else float("nan"),
        "missed": len(steps) - len(excess),
    }  # fmt: skip


def _steps_ran(run_dir: Path) -> int:
    """Steps every trial ran in reality (its last report in ``result.json``): a trial the
    parallel search's virtual clock ended at an earlier step ran past it (the trial's result,
    ``steps_run`` in the table, ends there; the steps past it were spent all the same)."""
    from analysis.packets import points_of

    total = 0
    for f in run_dir.glob("*/result.json"):
        steps = [int(p.get("step") or 0) for line in f.read_text().splitlines() if line.strip()
                 for p in points_of(json.loads(line))]  # fmt: skip
        total += max(steps, default=0)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="cascade,parallel,rounds")
    ap.add_argument("--trials", type=int, default=8, help="trials_per_batch_size")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument(
        "--pace",
        type=float,
        default=1e-5,
        help="nqm_exact's seconds_per_step: each report waits as long as its steps "
        "would take, so stops and withdrawals act when they would in training; 0: "
        "unpaced (a trial has run to its end before its first report is read)",
    )
    ap.add_argument("--trial-cpus", type=float, default=0.25,
                    help="CPUs per trial: 0.25 runs 8 paced (sleeping) trials at once on 2")  # fmt: skip
    ap.add_argument("--plateau", default="0.01",
                    help="early_stopping.plateau values, each mode runs with each (0: the rule off)")  # fmt: skip
    ap.add_argument(
        "--job",
        type=Path,
        default=JOB,
        help="an nqm_exact or nqm_sgd job (nqm_sgd_small.yaml: noisy training)",
    )
    ap.add_argument(
        "--confirm-seeds",
        type=int,
        default=0,
        help="lr_search.confirm_seeds (0: B_crit from the search's fastest trials)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="sweeps per mode, training seed and LR-search seed r = 0, 1, ...",
    )
    ap.add_argument("--trace", action="store_true", help="print every trial")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import ray

    from analysis.ground_truth import ground_truth
    from trainables.nqm_truth import NQM
    from tune_jobs.job_file import load_job
    from tune_jobs.preflight import init_ray

    job = load_job(args.job)
    o = job.options
    truth = ground_truth(NQM(o["dim"], o["exponent"], o["noise_scale"], o["s0"]),
                         job.batch_sizes, job.target.value, job.optimizer.momentum)  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="parallel-sweep-"))
    init_ray(None, args.num_cpus)
    rows = [
        one(m, args.trials, tmp, truth, args.pace, args.trial_cpus, float(p), args.job,
            args.confirm_seeds, r, args.trace)
        for r in range(args.repeats)
        for p in args.plateau.split(",")
        for m in args.modes.split(",")
    ]  # fmt: skip
    ray.shutdown()
    print(f"# {platform.node()} {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}; "
          f"{args.job.name} (true B_crit {truth['b_crit']:.0f}), {args.trials} trials per batch "
          f"size, {args.confirm_seeds} confirmation seeds, local Ray with {args.num_cpus} CPUs, "
          f"{args.trial_cpus} per trial, nqm_exact paced at {args.pace:g} s per step")  # fmt: skip
    print(
        "| mode | plateau | repeat | trials run / B (withdrawn) | compute / oracle | ran / oracle | B_crit error | CI covers | mean excess steps | missed | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['plateau']:g} | {r['repeat']} | {r['trials']:.1f} ({r['withdrawn']:.1f}) | "
              f"{r['compute_x_oracle']:.2f}x | {r['ran_x_oracle']:.2f}x | "
              f"{100 * r['b_crit_error']:+.1f}% | {r['covered']} | "
              f"{100 * r['mean_excess_steps']:.2f}% | {r['missed']} | {r['wall_s']} |")  # fmt: skip
    if args.repeats > 1:
        import statistics

        print(
            "| mode | plateau | median B_crit error | median |error| | coverage | median compute / oracle |"
        )
        print("|---|---|---|---|---|---|")
        for key in dict.fromkeys((r["mode"], r["plateau"]) for r in rows):
            g = [r for r in rows if (r["mode"], r["plateau"]) == key]
            print(f"| {key[0]} | {key[1]:g} | {100 * statistics.median(r['b_crit_error'] for r in g):+.1f}% | "
                  f"{100 * statistics.median(abs(r['b_crit_error']) for r in g):.1f}% | "
                  f"{sum(r['covered'] for r in g)}/{len(g)} | "
                  f"{statistics.median(r['compute_x_oracle'] for r in g):.2f}x |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
