"""Time ``analysis.loaders.load`` against the naive per-run, per-metric loop on a real server.

Builds a sweep in the documented MLflow layout (a parent run, N child runs x P eval points of
6 per-step metrics, plus ``steps_to_target``/``objective`` on reached trials) on a real
``mlflow server`` (SQLite backend, artifacts proxied by the server) started here on
127.0.0.1, ends it as a sweep ends (``write_metrics_snapshot``: the metrics snapshot on the
parent run), then times, side by side:

- ``load(experiment, server_uri)``: the snapshot path (one artifact download, every run
  checked fresh against ``search_runs``);
- ``load(..., snapshot=False)``: the bulk path (``get-history-bulk``, 100 runs a request);
- the naive loop (one ``get_metric_history`` per run and metric), on ``--naive-trials`` runs
  and extrapolated linearly to N when that is fewer than N (the table says so);
- ``load`` straight from the server's SQLite file (the path for a local ``sqlite:///`` store).

It checks that the snapshot and bulk frames are identical and that the bulk and naive
histories agree on the naive subset, prints a table, and exits 1 if ``load`` through the
server takes longer than ``--limit`` seconds (default 30).

    .venv/bin/python benchmarks/load_mlflow.py                 # 1000 trials x 200 points
    .venv/bin/python benchmarks/load_mlflow.py --smoke-test    # 20 trials x 20 points
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

PER_STEP = ("train_loss", "train_loss_ema", "lr", "examples", "epoch", "eval_loss")
BATCH_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)
EVAL_EVERY = 10  # steps between logged points
TARGET = 0.3  # eval_loss target (min)
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit


def log_sweep(
    client: MlflowClient,
    experiment: str,
    trials: int,
    points: int,
    seed: int = 0,
    workers: int = 4,
    artifact_location: str | None = None,
) -> str:
    """Log a finished sweep in the layout of docs/architecture.md; return the parent run id.

    Trial ``i`` has batch size ``BATCH_SIZES[i % 8]`` and a random LR; every third trial
    diverges (its last ``train_loss`` is NaN), the others reach the target at a step that
    shrinks with batch size, or run out of steps. Values are random floats, so a round trip
    that loses precision shows.
    """
    exp_id = client.create_experiment(experiment, artifact_location=artifact_location)
    max_steps = points * EVAL_EVERY
    job = {
        "workload": "synthetic", "strategy": "tuned", "target_metric": "eval_loss",
        "target_value": TARGET, "target_direction": "min", "max_steps": max_steps,
        "eval_every": EVAL_EVERY, "batch_sizes": ",".join(map(str, BATCH_SIZES)),
    }  # fmt: skip
    parent = client.create_run(exp_id, run_name=experiment, tags={"critbatch.role": "sweep"})
    parent_id = parent.info.run_id
    client.log_batch(parent_id, params=[Param(k, str(v)) for k, v in job.items()])
    t0 = int(time.time() * 1000)

    def log_trial(i: int) -> None:
        rng = np.random.default_rng([seed, i])
        bs = BATCH_SIZES[i % len(BATCH_SIZES)]
        lr = float(10 ** rng.uniform(-3, 0.5))
        reach_at = (
            max_steps if i % 3 == 1 else int(max_steps * 8 / bs**0.5) // EVAL_EVERY * EVAL_EVERY
        )
        status = "diverged" if i % 3 == 0 else "reached" if reach_at < max_steps else "not_reached"
        last = reach_at if status == "reached" else max_steps
        tags = {
            "mlflow.parentRunId": parent_id, "critbatch.role": "trial",
            "critbatch.trial_id": f"trial_{i:05d}", "critbatch.status": status,
        }  # fmt: skip
        run = client.create_run(exp_id, run_name=f"bs{bs}-t{i}", tags=tags)
        params = {
            **{k: job[k] for k in ("workload", "strategy", "max_steps", "eval_every")},
            **{k: job[k] for k in ("target_metric", "target_value", "target_direction")},
            "batch_size": bs, "lr": repr(lr), "seed": 0, "study": f"bs{bs}-seed0",
        }  # fmt: skip
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        metrics = []
        for step in range(EVAL_EVERY, last + 1, EVAL_EVERY):
            ts = t0 + step
            values = dict(zip(PER_STEP, rng.random(len(PER_STEP)), strict=True))
            values.update(examples=step * bs, lr=lr, epoch=step * bs / 50_000)
            if status == "diverged" and step == last:
                values["train_loss"] = math.nan
            metrics += [Metric(k, float(v), ts, step) for k, v in values.items()]
        if status == "reached":
            metrics += [Metric("steps_to_target", float(last), t0 + last, last)]
            metrics += [Metric("objective", float(last), t0 + last, last)]
        for j in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            client.log_batch(run.info.run_id, metrics=metrics[j : j + MAX_METRICS_PER_BATCH])
        client.set_terminated(run.info.run_id)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(log_trial, range(trials)))
    client.set_terminated(parent_id)
    return parent_id


def start_server(db: Path, workers: int = 4) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on 127.0.0.1 over the SQLite file ``db``; its log beside it.

    Artifacts are served by the server (``mlflow-artifacts:/``, its default), as in a
    shared deployment. ``workers``: uvicorn workers (4 is `mlflow server`'s default). The GenAI job runner (eight
    more processes that only matter for GenAI jobs) is switched off: it serves no tracking
    request, and its start-up alone takes minutes of CPU on 2 cores."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = db.with_suffix(".server.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                "--backend-store-uri", f"sqlite:///{db}",
                "--artifacts-destination", str(db.parent / "artifacts"), "--workers", str(workers),
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log_path.read_text()[-2000:])
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                return proc, uri
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("mlflow server did not become healthy in 300 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def timed(fn):
    """``fn()``, its wall seconds and this process's CPU seconds."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main(argv: list[str] | None = None) -> int:
    from analysis.loaders import (
        fetch_histories,
        find_parent_run,
        find_trial_runs,
        load,
    )
    from tune_jobs.publish import write_metrics_snapshot

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=1000, help="child runs in the sweep")
    ap.add_argument("--points", type=int, default=200, help="logged eval points per trial")
    ap.add_argument("--naive-trials", type=int, default=100, help="runs timed with the naive loop")
    ap.add_argument("--limit", type=float, default=30.0, help="seconds load() may take")
    ap.add_argument("--db", help="SQLite file to build the sweep in, or reuse (default: temp)")
    ap.add_argument("--server-workers", type=int, default=4, help="mlflow server --workers")
    ap.add_argument("--smoke-test", action="store_true", help="20 trials x 20 points")
    args = ap.parse_args(argv)
    if args.smoke_test:
        args.trials, args.points, args.naive_trials = 20, 20, 20
    n_naive = min(args.naive_trials, args.trials)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    with tempfile.TemporaryDirectory(prefix="critbatch-bench-") as tmp:
        db = Path(args.db).resolve() if args.db else Path(tmp) / "server.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        direct = MlflowClient(f"sqlite:///{db}")
        if direct.get_experiment_by_name("bench") is None:
            # Written straight into the server's SQLite file (the same SqlAlchemyStore code the
            # server runs) before it starts: through HTTP this takes ~10x longer on 2 cores.
            # Its artifacts go through the server, as when the sweep logs to it.
            where = "mlflow-artifacts:/bench"
            _, t_write, _ = timed(
                lambda: log_sweep(
                    direct, "bench", args.trials, args.points, workers=1, artifact_location=where
                )
            )
            print(f"wrote {args.trials} trials x {args.points} points into {db} in {t_write:.0f} s")
        proc, uri = start_server(db, args.server_workers)
        try:
            client = MlflowClient(uri)
            parent_id = find_parent_run("bench", uri).info.run_id
            # The sweep's end: the driver writes the snapshot through the server.
            snap, t_snap, _ = timed(lambda: write_metrics_snapshot(client, parent_id))
            size = sum(a.file_size for a in client.list_artifacts(parent_id, "critbatch"))
            server_cpu = _cpu_seconds(proc)
            df, t_load, cpu_load = timed(lambda: load("bench", uri))
            server_cpu = _cpu_seconds(proc) - server_cpu
            bulk_df, t_bulk_load, _ = timed(lambda: load("bench", uri, snapshot=False))
            # The SQLite file cannot resolve the server's mlflow-artifacts:/ snapshot.
            _, t_sql, _ = timed(lambda: load("bench", f"sqlite:///{db}", snapshot=False))
            runs, t_meta, _ = timed(lambda: find_trial_runs(client, find_parent_run("bench", uri)))
            _, t_bulk_all, _ = timed(lambda: fetch_histories(client, runs, "rest-bulk"))
            naive, t_naive, _ = timed(lambda: fetch_histories(client, runs[:n_naive], "per-metric"))
            bulk, t_bulk, _ = timed(lambda: fetch_histories(client, runs[:n_naive], "rest-bulk"))
        finally:
            stop_server(proc)
    key = ["run_id", "key", "step", "timestamp"]
    same = (
        naive.sort_values(key)
        .reset_index(drop=True)
        .equals(bulk.sort_values(key).reset_index(drop=True))
    )
    same_frames = df.equals(bulk_df)
    x = args.trials / n_naive
    naive_all = t_naive * x
    naive_load = t_bulk_load - t_bulk_all + naive_all  # load() with the per-metric fetch instead
    n, p = args.trials, args.points
    print(
        f"\n{n} trials x {p} points: {len(df)} frame rows, {snap['points']} points; "
        f"server --workers {args.server_workers}; snapshot {size / 2**20:.1f} MiB"
    )
    print(f"| step | trials timed | seconds | seconds for {n} trials |")
    print("|---|---|---|---|")
    rows = [
        ("writing the snapshot at the sweep's end (bulk read + upload)", n, t_snap, t_snap),
        ("`load()` from the server (snapshot), total", n, t_load, t_load),
        ("`load(snapshot=False)` from the server (bulk fetch), total", n, t_bulk_load, t_bulk_load),
        ("of which: find parent + search trial runs", n, t_meta, t_meta),
        ("bulk fetch of every history (timed alone)", n, t_bulk_all, t_bulk_all),
        ("bulk fetch, naive subset", n_naive, t_bulk, f"{t_bulk * x:.1f} (x{x:g})"),
        ("naive fetch, `get_metric_history` per run and metric", n_naive, t_naive,
         f"{naive_all:.1f} (x{x:g})"),
        ("`load()` with the naive fetch (estimated)", "-", None, naive_load),
        ("`load(snapshot=False)` on the server's SQLite file (sql fetch)", n, t_sql, t_sql),
    ]  # fmt: skip
    for what, trials, secs, total in rows:
        secs = "-" if secs is None else f"{secs:.1f}"
        total = total if isinstance(total, str) else f"{total:.1f}"
        print(f"| {what} | {trials} | {secs} | {total} |")
    print(
        f"\nload(): {t_load:.1f} s wall, {cpu_load:.1f} s client CPU, {server_cpu:.1f} s server CPU"
    )
    print(f"naive / bulk fetch, side by side on {n_naive} trials: {t_naive / t_bulk:.1f}x")
    print(
        f"naive load (estimated) / load(): {naive_load / t_load:.1f}x; "
        f"bulk load / load(): {t_bulk_load / t_load:.1f}x"
    )
    print(f"snapshot frame == bulk frame: {same_frames}; bulk == naive on the subset: {same}")
    if not (same and same_frames):
        print("FAIL: the snapshot, bulk and naive paths disagree")
        return 1
    if t_load > args.limit:
        print(f"FAIL: load() took {t_load:.1f} s > {args.limit:g} s")
        return 1
    return 0


def _cpu_seconds(proc: subprocess.Popen) -> float:
    """CPU seconds used so far by the server and its worker processes."""
    import psutil

    procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    return sum(sum(q.cpu_times()[:2]) for q in procs)


if __name__ == "__main__":
    sys.exit(main())
