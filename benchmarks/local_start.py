"""Time to first trial of a local Ray: with Ray's dashboard (what `ray.init()` starts by
default) against critbatch's local start (no dashboard, loopback only, `init_ray`).

Each start is a fresh process with its own Ray temp folder and HOME; the arms alternate
(dashboard, critbatch, critbatch, dashboard, ...) so a change in the host's load hits both.
Measured: seconds from before ``ray.init`` to the first result of a one-report Tune trial
(Tune with actor reuse, as the sweep runs), and the start alone (``ray.init`` returning).
Both arms retry a start that times out (ray-project/ray#65983), as ``init_ray`` does.

    uv run --frozen python benchmarks/local_start.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ARMS = ("dashboard", "critbatch")


def one_start(arm: str) -> dict[str, float]:
    """In a child process: start Ray the arm's way, run one trivial trial, report the times."""
    t0 = time.perf_counter()
    import ray
    from ray import tune

    if arm == "dashboard":  # retried like init_ray does: a loaded host times out now and then
        for attempt in range(4):
            try:
                ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False,
                         configure_logging=False)  # fmt: skip
                break
            except Exception as e:
                if "timed out during startup" not in str(e) or attempt == 3:
                    raise
                ray.shutdown()
                time.sleep(2.0)
    else:
        from tune_jobs.preflight import init_ray

        init_ray(num_cpus=2)
    started = time.perf_counter() - t0
    first: list[float] = []

    class FirstResult(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if not first:
                first.append(time.perf_counter() - t0)

    def trivial(config):
        tune.report({"x": 1.0})

    tune.Tuner(
        trivial,
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True),
        run_config=tune.RunConfig(
            storage_path=tempfile.mkdtemp(), callbacks=[FirstResult()], verbose=0
        ),
    ).fit()
    ray.shutdown()
    return {"ray_init_s": started, "first_trial_s": first[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="starts per arm")
    ap.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one_start(args.child)))
        return 0
    order = [ARMS[(i // 2 + i) % 2] for i in range(2 * args.rounds)]  # d c c d d c ...
    times: dict[str, list[dict[str, float]]] = {a: [] for a in ARMS}
    failed = dict.fromkeys(ARMS, 0)
    for arm in order:
        d = tempfile.mkdtemp(prefix="cbls", dir="/tmp")  # short: Ray's socket paths < 107 bytes
        env = dict(
            os.environ,
            HOME=d,
            RAY_TMPDIR=d,
            RAY_USAGE_STATS_ENABLED="0",
            RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        )  # both arms: no `uv run` workers
        env.pop("RAY_ADDRESS", None)
        p = subprocess.run([sys.executable, __file__, "--child", arm], env=env, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
        if p.returncode:  # counted, not fatal: on an overloaded host a start may time out
            failed[arm] += 1
            print(
                f"{arm:10s} failed to start: {(p.stderr.strip().splitlines() or ['?'])[-1][:120]}"
            )
            continue
        t = json.loads(p.stdout.strip().splitlines()[-1])
        times[arm].append(t)
        print(
            f"{arm:10s} ray.init {t['ray_init_s']:6.1f} s, first trial {t['first_trial_s']:6.1f} s"
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (1 min)")
    print("| arm | starts | failed starts | ray.init (s, median) | first trial (s, median) |")
    print("|---|---|---|---|---|")
    for arm in ARMS:
        if not times[arm]:
            print(f"| {arm} | 0 | {failed[arm]} | - | - |")
            continue
        init = statistics.median(t["ray_init_s"] for t in times[arm])
        first = statistics.median(t["first_trial_s"] for t in times[arm])
        print(f"| {arm} | {len(times[arm])} | {failed[arm]} | {init:.1f} | {first:.1f} |")
    if not all(times.values()):
        return 1
    ratio = statistics.median(t["first_trial_s"] for t in times["critbatch"]) / statistics.median(
        t["first_trial_s"] for t in times["dashboard"]
    )
    print(f"\ncritbatch / dashboard, time to first trial: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
