"""Per-trial overhead of the critbatch engine against a bare Ray Tune loop, side by side.

Runs N near-trivial trials three ways on one local Ray (same CPUs, same concurrency):
  stock   - `tune.Tuner` with a trivial function trainable, default settings;
  reuse   - the same with `reuse_actors=True`;
  engine  - a critbatch sweep (Optuna studies, per-batch-size scheduler, MLflow SQLite
            child runs with per-step metrics) on the `synthetic` workload cut to 1 step.
Order ABBA at each size so drift on a noisy machine hits every arm alike; reports seconds
per trial (wall / N, amortized over the sweep) and, given two sizes, the marginal cost per
trial (the slope), which leaves out what a sweep pays once. Stock Tune only with ``--stock``.

    uv run --frozen python benchmarks/engine_overhead.py --trials 40,160
    uv run --frozen python benchmarks/engine_overhead.py --profile 40   # where the driver's time goes

``--profile N``: after the warm-up, one engine run of N trials under cProfile, then the
driver's costliest calls (cumulative), instead of the side-by-side arms.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tune_jobs.sweep  # noqa: E402,F401  (sets Tune's env before ray.tune is imported)


def trivial(config):
    from ray import tune

    tune.report({"step": 1, "loss": config["lr"]})


def bare(n: int, reuse: bool, storage: str) -> float:
    from ray import tune

    t = time.perf_counter()
    tune.Tuner(
        trivial,
        param_space={"lr": tune.loguniform(1e-3, 1.0)},
        tune_config=tune.TuneConfig(num_samples=n, reuse_actors=reuse),
        run_config=tune.RunConfig(storage_path=storage, name=f"bare{time.time_ns()}", verbose=0),
    ).fit()
    return time.perf_counter() - t


def engine(n: int, tmp: str) -> float:
    from tune_jobs.job_file import parse_job
    from tune_jobs.sweep import run_sweep

    name = f"eng{time.time_ns()}"
    job = parse_job({
        "name": name, "workload": "synthetic", "batch_sizes": [8, 16, 32, 64],
        "lr_search": {"min": 0.001, "max": 1.0, "trials_per_batch_size": max(1, n // 4),
                      "confirm_seeds": 0},  # a fixed number of trials
        "target": {"metric": "eval_loss", "value": 0.0001, "direction": "min"},
        "budget": {"max_steps": 1}, "eval_every": 1, "early_stopping": {"enabled": False},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": name}, "storage": f"{tmp}/runs",
    })  # fmt: skip
    t = time.perf_counter()
    run_sweep(job, progress=False)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--trials", default="40,160",
        help="trials per arm, one or more sizes (multiples of 4): with two or more, the overhead "
        "is also read off the slope, which leaves out what a sweep pays once",
    )  # fmt: skip
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--stock", action="store_true", help="also time stock Tune (no actor reuse)")
    ap.add_argument("--smoke-test", action="store_true", help="8 trials, one round")
    ap.add_argument("--profile", type=int, metavar="N", help="profile one engine run of N trials")
    args = ap.parse_args()
    sizes = [8] if args.smoke_test else [int(x) for x in str(args.trials).split(",")]
    tmp = tempfile.mkdtemp(prefix="critbatch-overhead-")
    from tune_jobs.sweep import init_ray

    init_ray(num_cpus=args.num_cpus)
    engine(4, tmp)  # warm-up: imports, MLflow schema creation, worker start
    if args.profile:
        return _profile(args.profile, tmp)
    names = (["stock"] if args.stock or args.smoke_test else []) + ["reuse", "engine"]
    wall: dict[tuple[str, int], float] = {}
    for n in sizes:
        arms = {
            "stock": lambda n=n: bare(n, False, tmp),
            "reuse": lambda n=n: bare(n, True, tmp),
            "engine": lambda n=n: engine(n, tmp),
        }
        order = names if args.smoke_test else names + names[::-1]  # ABBA: drift hits all alike
        times: dict[str, list[float]] = {k: [] for k in names}
        for k in order:
            times[k].append(arms[k]())
            print(f"  {k:>6}: {times[k][-1]:.1f} s for {n} trials", flush=True)
        for k in names:
            wall[k, n] = statistics.mean(times[k])
    print(f"\ntrivial trials, {args.num_cpus} CPUs, {platform.node()} ({os.cpu_count()} cores), "
          f"{time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip
    print("| trials | " + " | ".join(f"{k} s/trial" for k in names) + " | engine - reuse |")
    print("|---" * (len(names) + 2) + "|")
    for n in sizes:
        per = {k: wall[k, n] / n for k in names}
        print(f"| {n} | " + " | ".join(f"{per[k]:.3f}" for k in names)
              + f" | {per['engine'] - per['reuse']:+.3f} |")  # fmt: skip
    # Overhead = what the engine adds per trial over a bare Tune loop with actor reuse (which
    # the engine also uses): the strict reading. Amortized = at the largest size; marginal =
    # the slope between the smallest and largest sizes, without a sweep's one-off costs
    # (experiment, parent run, the journal, the writer's start and drain).
    big = sizes[-1]
    amortized = (wall["engine", big] - wall["reuse", big]) / big
    print(f"\noverhead per trial, amortized over {big} trials: {amortized:+.3f} s")
    if len(sizes) > 1:
        lo = sizes[0]
        slope = {k: (wall[k, big] - wall[k, lo]) / (big - lo) for k in ("reuse", "engine")}
        marginal = slope["engine"] - slope["reuse"]
        fixed = wall["engine", lo] - wall["reuse", lo] - marginal * lo
        print(f"marginal overhead per trial ({lo} -> {big} trials): {marginal:+.3f} s "
              f"(engine {slope['engine']:.3f} s/trial, reuse {slope['reuse']:.3f}); "
              f"one-off per sweep: {fixed:+.1f} s")  # fmt: skip
    print(f"goal (issue 16: <= 0.1 s of overhead per trial, amortized): "
          f"{'met' if amortized <= 0.1 else 'NOT met'}")  # fmt: skip
    return 0


def _profile(n: int, tmp: str) -> int:
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    wall = engine(n, tmp)
    profile.disable()
    print(f"engine: {n} trials in {wall:.1f} s ({wall / n:.3f} s/trial); the driver's calls:")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
