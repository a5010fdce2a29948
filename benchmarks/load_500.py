"""A 500-trial sweep on a local Ray cluster: does the driver hold up, and does MLflow get it all?

Runs one real sweep (``run_sweep``: Tune, the per-batch-size Optuna studies, the MLflow
callback) of ``--trials`` short trials of ``nqm_exact`` (the exact noisy quadratic model:
milliseconds of numpy per trial, so the engine is what is measured) or ``synthetic`` when
``nqm_exact`` is not registered, on a local Ray with ``--num-cpus`` workers. Then checks
every trial in MLflow: one child run per Tune trial, whose ``train_loss`` history holds
exactly the points of the trial's result.json. Reports:

- driver peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``; a 0.5 s psutil sampler gives
  the curve's start and end too) and its growth per trial: the least-squares slope of RSS
  against the number of finished trials (lines of the sweep's journal), over the samples
  past the first 10% of the trials (Ray's and MLflow's start-up is not growth);
- the MLflow write rate: metric points sent by the driver's ``log_batch`` calls divided by the
  time spent inside them (and the share of the sweep's wall time that is);
- wall time of the sweep and of the MLflow check.

Exits 1 if any trial is missing from MLflow or any point is lost or doubled.

``--arm before`` runs the sweep as critbatch did before issue 16 item 2: Tune's per-trial state
of finished trials is not released (``tune_jobs.ray_internals.release_finished_trial`` and
``drop_cancelled_actor_tasks`` are no-ops in this process). ``--series N,M,... --arms
before,after`` runs each (trials, arm) in a fresh process (peak RSS is per process), one at a
time, and prints them side by side.

    .venv/bin/python benchmarks/load_500.py                  # 500 trials
    .venv/bin/python benchmarks/load_500.py --smoke-test     # 20 trials
    .venv/bin/python benchmarks/load_500.py --trials 2000 --tracking-uri http://127.0.0.1:5000
    .venv/bin/python benchmarks/load_500.py --series 1000,3000 --arms before,after --json m.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH_SIZES = [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]  # 10 studies


def job_for(trials: int, workload: str, tracking_uri: str, storage: str):
    from tune_jobs.job_file import parse_job

    per_study = max(1, trials // len(BATCH_SIZES))
    data = {
        "name": f"load-{trials}",
        "workload": workload,
        "batch_sizes": BATCH_SIZES,
        "lr_search": {
            "min": 1e-3,
            "max": 1.0,
            "trials_per_batch_size": per_study,
            "algorithm": "random",
            "confirm_seeds": 0,  # a fixed number of trials: no confirmation runs
        },
        "early_stopping": {"enabled": False},  # every trial runs to its own end: a fixed load
        "resources": {"cpus": 1, "gpus": 0},
        "tracking": {"uri": tracking_uri},
        "storage": storage,
    }
    if workload == "nqm_exact":
        data |= {"target": {"metric": "eval_loss", "value": 0.05, "direction": "min"},
                 "budget": {"max_steps": 2000}, "eval_every": 100,
                 "options": {"dim": 1000, "max_reports": 20}}  # fmt: skip
    else:
        data |= {"target": {"metric": "eval_loss", "value": 0.0, "direction": "min"},
                 "budget": {"max_steps": 40}, "eval_every": 10}  # fmt: skip
    return parse_job(data)


class LogBatchTimer:
    """Times every MlflowClient.log_batch call in this process (the driver): points and seconds."""

    def __init__(self) -> None:
        from mlflow.tracking import MlflowClient

        self.points = 0
        self.seconds = 0.0
        self.calls = 0
        original = MlflowClient.log_batch
        timer = self

        def timed(client, run_id, metrics=(), params=(), tags=(), *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(client, run_id, metrics, params, tags, *args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - t0
                timer.points += len(metrics or ())
                timer.calls += 1

        MlflowClient.log_batch = timed


class RssSampler(threading.Thread):
    """Every 0.5 s: (time, driver RSS, trials finished: lines of the sweep's journal)."""

    def __init__(self, journal: Path, curve: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int, int]] = []
        self.stop = threading.Event()
        self.journal = journal
        self.curve = curve  # (trials, RSS MiB) every 100 trials, appended as the sweep runs

    def finished(self) -> int:
        try:
            return self.journal.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def run(self) -> None:
        proc = psutil.Process()
        logged = 0
        while not self.stop.is_set():
            t, rss, n = time.time(), proc.memory_info().rss, self.finished()
            self.samples.append((t, rss, n))
            if self.curve is not None and n >= logged + 100:
                logged = n - n % 100
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                with self.curve.open("a") as f:
                    f.write(json.dumps({"trials": n, "rss_mib": round(rss / 2**20),
                                        "peak_mib": round(peak), "t": round(t)}) + "\n")  # fmt: skip
            self.stop.wait(0.5)

    def growth_per_trial_kib(self, trials: int) -> float | None:
        """Least-squares slope of RSS over finished trials, past the first 10% of them."""
        pts = [(n, rss) for _, rss, n in self.samples if n >= max(1, trials // 10)]
        if len({n for n, _ in pts}) < 2:
            return None
        mx = sum(n for n, _ in pts) / len(pts)
        my = sum(r for _, r in pts) / len(pts)
        sxx = sum((n - mx) ** 2 for n, _ in pts)
        sxy = sum((n - mx) * (r - my) for n, r in pts)
        return sxy / sxx / 1024


def disable_release() -> None:
    """The behaviour before issue 16 item 2: Tune keeps all of every finished trial."""
    import tune_jobs.scheduler as scheduler

    scheduler.release_finished_trial = lambda tune_controller, trial: None
    scheduler.drop_cancelled_actor_tasks = lambda tune_controller: None


def run_series(args: argparse.Namespace) -> int:
    """Each (trials, arm) in its own process, one after another; a table at the end."""
    rows, rc = [], 0
    for n in [int(x) for x in args.series.split(",")]:
        for arm in args.arms.split(","):
            out = Path(tempfile.mkdtemp(prefix="critbatch-series-")) / "figures.json"
            cmd = [sys.executable, __file__, "--trials", str(n), "--arm", arm,
                   "--num-cpus", str(args.num_cpus), "--json", str(out)]  # fmt: skip
            if args.workload:
                cmd += ["--workload", args.workload]
            print("+", " ".join(cmd), file=sys.stderr, flush=True)
            rc |= subprocess.call(cmd)
            rows.append(json.loads(out.read_text()) if out.exists() else {"trials": n, "arm": arm})
    print(f"{'trials':>7} {'arm':>7} {'peak RSS MiB':>13} {'start MiB':>10} "
          f"{'KiB/trial':>10} {'trials/s':>9} {'MLflow ok':>10}")  # fmt: skip
    for r in rows:
        se = r.get("driver_rss_start_end_mib") or [None, None]
        print(f"{r.get('trials', '?'):>7} {r.get('arm', '?'):>7} "
              f"{r.get('driver_peak_rss_mib', '-')!s:>13} {se[0]!s:>10} "
              f"{r.get('rss_growth_kib_per_trial', '-')!s:>10} {r.get('trials_per_s', '-')!s:>9} "
              f"{r.get('trials_in_mlflow_ok', '-')!s:>10}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rc


def check_mlflow(tracking_uri: str, experiment: str, run_dir: Path) -> dict[str, int]:
    """One child run per trial; each train_loss history equal to result.json's points."""
    from mlflow.tracking import MlflowClient

    from tune_jobs.tracking import read_results

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs(
        [exp.experiment_id], "tags.`critbatch.role` = 'trial'", max_results=50000
    )
    by_trial: dict[str, list] = {}
    for r in runs:
        by_trial.setdefault(r.data.tags["critbatch.trial_id"], []).append(r)
    trials = bad = points = 0
    for d in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        rows = read_results(d)
        if not rows:
            continue
        trials += 1
        tid = rows[-1]["trial_id"]
        mine = by_trial.pop(tid, [])
        if len(mine) != 1:
            print(f"trial {tid}: {len(mine)} MLflow runs", file=sys.stderr)
            bad += 1
            continue
        got = sorted(
            (m.step, m.value) for m in client.get_metric_history(mine[0].info.run_id, "train_loss")
        )
        first: dict[
            int, float
        ] = {}  # a retried trial reports its first steps again: MLflow keeps one
        for r in rows:
            first.setdefault(int(r["step"]), float(r["train_loss"]))
        want = sorted(first.items())
        points += len(got)
        if got != want:
            print(
                f"trial {tid}: MLflow has {len(got)} train_loss points, result.json {len(want)}",
                file=sys.stderr,
            )
            bad += 1
    bad += len(by_trial)  # MLflow runs of trials Tune never recorded
    return {"trials": trials, "bad": bad, "train_loss_points": points, "orphan_runs": len(by_trial)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--smoke-test", action="store_true", help="20 trials")
    ap.add_argument(
        "--num-cpus", type=int, default=2, help="CPUs of the local Ray (trials at once)"
    )
    ap.add_argument(
        "--workload", default="", help="default: nqm_exact if registered, else synthetic"
    )
    ap.add_argument(
        "--tracking-uri", default="", help="default: a fresh SQLite store in a temp folder"
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--arm", choices=("after", "before"), default="after",
                    help="before: Tune's state of finished trials is not released")  # fmt: skip
    ap.add_argument("--curve", type=Path, help="append (trials, RSS) every 100 trials here")
    ap.add_argument("--series", default="", help="trial counts, e.g. 1000,3000: one run each")
    ap.add_argument("--arms", default="before,after", help="with --series: the arms to run")
    args = ap.parse_args(argv)
    if args.series:
        return run_series(args)
    trials = 20 if args.smoke_test else args.trials
    if args.arm == "before":
        disable_release()

    from trainables.registry import workloads
    from tune_jobs.journal import journal_path
    from tune_jobs.sweep import run_dir_of, run_sweep

    workload = args.workload or ("nqm_exact" if "nqm_exact" in workloads() else "synthetic")
    tmp = Path(tempfile.mkdtemp(prefix="critbatch-load-"))
    uri = args.tracking_uri or f"sqlite:///{tmp / 'mlflow.db'}"
    job = job_for(trials, workload, uri, str(tmp / "runs"))
    timer = LogBatchTimer()
    sampler = RssSampler(journal_path(run_dir_of(job)), args.curve)
    sampler.start()
    t0 = time.time()
    result = run_sweep(job, num_cpus=args.num_cpus, progress=False)
    sweep_s = time.time() - t0
    sampler.stop.set()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    t1 = time.time()
    check = check_mlflow(uri, job.experiment, result.run_dir)
    check_s = time.time() - t1
    rss = [s for _, s, _ in sampler.samples]
    growth = sampler.growth_per_trial_kib(len(result.trials))
    figures = {
        "arm": args.arm,
        "workload": workload,
        "trials": len(result.trials),
        "trials_in_mlflow_ok": check["trials"] - check["bad"],
        "bad": check["bad"],
        "sweep_wall_s": round(sweep_s, 1),
        "trials_per_s": round(len(result.trials) / sweep_s, 2),
        "driver_peak_rss_mib": round(peak_mib),
        "driver_rss_start_end_mib": [round(rss[0] / 2**20), round(rss[-1] / 2**20)]
        if rss
        else None,
        "rss_growth_kib_per_trial": None if growth is None else round(growth, 1),
        "mlflow_points": timer.points,
        "mlflow_log_batch_calls": timer.calls,
        "mlflow_log_batch_s": round(timer.seconds, 1),
        "mlflow_points_per_s": round(timer.points / timer.seconds) if timer.seconds else None,
        "mlflow_share_of_sweep": round(timer.seconds / sweep_s, 3),
        "mlflow_check_s": round(check_s, 1),
        "tracking_uri": uri.split(":")[0],
        "num_cpus": args.num_cpus,
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 1 if check["bad"] or check["trials"] != job.total_trials else 0


if __name__ == "__main__":
    sys.exit(main())
