"""The sweep engine: validate, check the cluster and the tracking store, run, resume.

``run_sweep(job)`` starts a sweep in ``<storage>/<name>/``; ``resume_sweep(name)`` finishes one
whose driver died, without re-running finished trials and without duplicating MLflow runs.
Everything that can be wrong with the input is checked before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from analysis.mlflow_layout import (
    GIT_COMMIT_TAG,
    PARENT_TAG,
    ROLE_SWEEP,
    ROLE_TAG,
    RUN_DIR_TAG,
    TRIAL_ID_TAG,
    VERSION_TAG_PREFIX,
)
from tune_jobs.config import JobConfig, JobError, ResourcesConfig, parse_job
from tune_jobs.mlflow_view import experiment_tags
from tune_jobs.preflight import (  # noqa: F401  (re-exported: tests and tools import them from here)
    AUTOSCALING_CONFIG,
    autoscaling_node_types,
    check_resources,
    check_tracking_uri,
    init_ray,
)

# Tune's CSV and TensorBoard loggers are not needed (MLflow and result.json are): set before
# ray.tune is imported anywhere in this process.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SWEEP_FILE = "sweep.json"


@dataclass
class SweepResult:
    """What a finished sweep returns: where it lives and its per-trial table."""

    run_dir: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    trials: list[
        dict[str, Any]
    ]  # one row per trial: trial_id, batch_size, lr, seed, status, steps_to_target, ...
    wall_time_s: float
    numbers: Any = None  # analysis.compare.SweepNumbers at the job's target; None: not computed


def run_dir_of(job: JobConfig) -> Path:
    return Path(job.storage).expanduser().resolve() / job.name


# ---- provenance --------------------------------------------------------------------------------
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parents[1])  # fmt: skip
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for p in ("critbatch", "torch", "torchvision", "ray", "optuna", "mlflow", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            out[p] = version(p)
    return out


def job_params(job: JobConfig) -> dict[str, str]:
    """The job flattened into MLflow params (dotted keys shortened where conventional)."""
    flat: dict[str, str] = {}

    def walk(prefix: str, d: dict[str, Any]) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(f"{prefix}{k}.", v)
            else:
                flat[f"{prefix}{k}"] = str(v)[:6000]

    walk("", job.to_dict())
    flat["target_metric"], flat["target_value"] = job.target.metric, str(job.target.value)
    flat["target_direction"], flat["strategy"] = job.target.direction, job.strategy.name
    return flat


# ---- the sweep ----------------------------------------------------------------------------------
def _train_sizes(job: JobConfig) -> dict[int, int | None]:
    from trainables.registry import get_workload

    n = get_workload(job.workload).train_size
    return dict.fromkeys(job.batch_sizes, n)


def _start_tracking(job: JobConfig, run_dir: Path, job_yaml: str) -> tuple[str, str]:
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(job.tracking.uri)
    exp = client.get_experiment_by_name(job.experiment)
    # Opens on the runs table with the sweep columns (tune_jobs/mlflow_view.py).
    view = experiment_tags()
    exp_id = exp.experiment_id if exp else client.create_experiment(job.experiment, tags=view)
    for k, v in view.items() if exp is not None else ():  # made by an older critbatch
        if exp.tags.get(k) != v:
            client.set_experiment_tag(exp_id, k, v)
    tags = {
        ROLE_TAG: ROLE_SWEEP,
        RUN_DIR_TAG: str(run_dir),
        GIT_COMMIT_TAG: git_commit(),
    }
    tags.update({f"{VERSION_TAG_PREFIX}{k}": v for k, v in package_versions().items()})
    run = client.create_run(exp_id, run_name=job.name, tags=tags)
    from mlflow.entities import Param

    params = [Param(k, v) for k, v in job_params(job).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    client.log_text(run.info.run_id, job_yaml, "job.yaml")
    del mlflow
    return exp_id, run.info.run_id


def run_sweep(
    job: JobConfig,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    job_yaml: str | None = None,
) -> SweepResult:
    """Run a validated job to completion. Raises :class:`JobError` on bad input, before
    anything is written."""
    run_dir = run_dir_of(job)
    if (run_dir / SWEEP_FILE).exists():
        raise JobError(
            f"name: a sweep named {job.name!r} already exists in {run_dir}; resume it with "
            f"`critbatch resume {job.name} --storage {job.storage}` or choose another name"
        )
    check_tracking_uri(job.tracking.uri)
    resources = init_ray(address, num_cpus)
    check_resources(job, resources)

    job_yaml = job_yaml or yaml.safe_dump(job.to_dict(), sort_keys=False)
    exp_id, parent = _start_tracking(job, run_dir, job_yaml)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "job.yaml").write_text(job_yaml)
    meta = {"job": job.to_dict(), "tracking_uri": job.tracking.uri, "experiment_id": exp_id,
            "parent_run_id": parent, "git_commit": git_commit(), "created": time.time()}  # fmt: skip
    tmp = run_dir / (SWEEP_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(run_dir / SWEEP_FILE)
    return _fit(job, run_dir, meta, restore=False, progress=progress)


def resume_sweep(name_or_dir: str, storage: str = "critbatch_runs", *, address: str | None = None,
                 num_cpus: int | None = None, progress: bool = True) -> SweepResult:  # fmt: skip
    """Finish a sweep whose driver died: finished trials are kept, unfinished ones resume from
    their last checkpoint (or restart), MLflow runs are matched by trial id, not duplicated."""
    p = Path(name_or_dir).expanduser()
    run_dir = (
        p.resolve()
        if (p / SWEEP_FILE).exists()
        else (Path(storage).expanduser() / name_or_dir).resolve()
    )
    if not (run_dir / SWEEP_FILE).exists():
        raise JobError(
            f"no sweep {name_or_dir!r} in {Path(storage).resolve()}; give the run folder or `--storage` where it lives"
        )
    meta = json.loads((run_dir / SWEEP_FILE).read_text())
    job = parse_job(meta["job"])
    check_tracking_uri(meta["tracking_uri"])
    resources = init_ray(address, num_cpus)
    check_resources(job, resources)
    return _fit(job, run_dir, meta, restore=True, progress=progress)


def trial_resources(resources: ResourcesConfig, config: dict[str, Any]) -> Any:
    """Tune's resource request for one trial: ``resources.gpus_from_batch_size`` gives the
    large batch sizes more of a GPU than the small ones, which pack several to a GPU."""
    from ray.tune import PlacementGroupFactory

    b = config.get("batch_size")
    gpus = (
        resources.gpus_for(b)
        if b is not None  # Tune may ask without a trial's config: the largest ask then
        else max([resources.gpus, *resources.gpus_from_batch_size.values()])
    )
    return PlacementGroupFactory([{"CPU": resources.cpus, **({"GPU": gpus} if gpus else {})}])


def _fit(
    job: JobConfig, run_dir: Path, meta: dict[str, Any], *, restore: bool, progress: bool
) -> SweepResult:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from tune_jobs.progress import ProgressCallback
    from tune_jobs.searcher import PerBatchSizeScheduler, SweepSearcher
    from tune_jobs.tracking import MlflowCallback, Tracker, reconcile
    from tune_jobs.trainable import run_tune_trial

    t0 = time.time()
    train_sizes = _train_sizes(job)
    max_steps = {b: job.max_steps_for(b, train_sizes[b]) for b in job.batch_sizes}
    base = dataclasses.asdict(
        job.trial_config(job.batch_sizes[0], 1.0, job.seeds[0], train_sizes[job.batch_sizes[0]])
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            run_tune_trial, base=base, max_steps=max_steps, cpus=job.resources.cpus
        ),
        functools.partial(trial_resources, job.resources)
        if job.resources.gpus_from_batch_size
        else {"cpu": job.resources.cpus, "gpu": job.resources.gpus},
    )
    legacy_db = run_dir / "optuna.db"  # sweeps started before studies moved into memory
    searcher = SweepSearcher(
        job, f"sqlite:///{legacy_db}" if legacy_db.exists() else None, train_sizes
    )
    scheduler = PerBatchSizeScheduler(job, searcher, max(max_steps.values()))
    # Every child run carries its LR strategy (the seed paper's BLR/LSR/SRSR and their warm-up),
    # so runs compare in the MLflow UI without opening the parent.
    strategy = {f"strategy.{k}": str(v) for k, v in dataclasses.asdict(job.strategy).items()}
    tracker = Tracker(meta["tracking_uri"], meta["experiment_id"], meta["parent_run_id"], {
        "eval_every": str(job.eval_every), "target_metric": job.target.metric,
        "target_value": str(job.target.value), "target_direction": job.target.direction,
        **strategy})  # fmt: skip
    tracker.fresh = not restore
    callbacks = [JsonLoggerCallback(), MlflowCallback(tracker, searcher.objective_for)]
    if progress:
        callbacks.append(ProgressCallback(job))
    run_config = tune.RunConfig(
        name=job.name,
        storage_path=str(run_dir.parent),
        callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=job.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=3),  # a forced state snapshot every 3rd
        verbose=0,
    )
    if restore:
        tuner = tune.Tuner.restore(
            str(run_dir), trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=job.total_trials,
                max_concurrent_trials=job.max_concurrent or None,
                reuse_actors=True,
            ),
            run_config=run_config,
        )
    grid = tuner.fit()

    trials = []
    statuses: dict[str, tuple[str, str | None]] = {}
    from trainables.api import final_status

    for res in grid:
        m = dict(res.metrics or {})
        cfg = m.get("config") or res.config or {}
        err = None if res.error is None else f"{type(res.error).__name__}: {res.error}"
        status = final_status(m.get("status"), errored=res.error is not None)
        tid = m.get("trial_id") or (res.path and Path(res.path).name.split("_")[-2])
        statuses[tid] = (status, err)
        trials.append({
            "trial_id": tid, "batch_size": cfg.get("batch_size"), "lr": cfg.get("lr"), "seed": cfg.get("seed"),
            "study": cfg.get("study"), "status": status, "steps_to_target": m.get("steps_to_target"),
            "steps_run": m.get("step"), "examples": m.get("examples"), job.target.metric: m.get(job.target.metric),
        })  # fmt: skip
    # MLflow must hold every report Tune recorded, exactly once, whatever happened to the
    # server or the driver meanwhile: replay what is missing (one history query per trial).
    # Skipped only when this process saw every trial logged without a single failure.
    needed = (restore or tracker.ever_failed or tracker.pending or tracker.pending_final
              or tracker.pending_params or tracker.to_terminate
              or set(tracker.runs) != set(statuses))  # fmt: skip
    synced = True
    try:
        if needed:
            reconcile(tracker, run_dir, statuses)
            _delete_orphans(tracker, set(statuses))
    except Exception as e:
        synced = False
        print(
            f"critbatch: MLflow unreachable ({e}); run `critbatch sync {run_dir}` when it is back",
            file=sys.stderr,
        )
    _finish_parent(tracker, trials)
    if synced:  # else `critbatch sync` writes it, once MLflow holds every point
        write_snapshot(tracker.client, tracker.parent_run_id, run_dir)
    numbers = sweep_numbers_of(job, run_dir)
    if numbers is not None:
        from analysis.compare import parent_run_metrics
        from tune_jobs.publish import log_sweep_numbers

        try:
            log_sweep_numbers(tracker.client, tracker.parent_run_id,
                              parent_run_metrics(numbers), numbers.description())  # fmt: skip
        except Exception as e:  # the numbers are printed and `critbatch analyze` redoes them
            print(f"critbatch: could not log the sweep's result in MLflow ({e})", file=sys.stderr)
    return SweepResult(
        run_dir,
        meta["tracking_uri"],
        meta["experiment_id"],
        meta["parent_run_id"],
        trials,
        time.time() - t0,
        numbers,
    )


def sweep_numbers_of(job: JobConfig, run_dir: Path):
    """The sweep's result at its own target, from Tune's records (analysis.compare), with the
    analysis defaults of `critbatch analyze`; None (a line says why) when there is none."""
    from analysis.compare import sweep_numbers
    from analysis.loaders import load_ray_folder

    try:
        df = load_ray_folder(run_dir)
        target = dataclasses.replace(job.target, rule="sweep target")
        return sweep_numbers(df, target, label=job.name)
    except (LookupError, ValueError) as e:
        print(f"critbatch: no result to log on the parent run: {e}", file=sys.stderr)
        return None


def _delete_orphans(tracker, known: set[str]) -> None:
    """Child runs whose trial Tune never recorded (driver killed between creating the run and
    checkpointing the experiment) would count a trial twice: delete them."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        f"tags.`{PARENT_TAG}` = '{tracker.parent_run_id}'",
        max_results=50000,
    )
    for r in runs:
        if r.data.tags.get(TRIAL_ID_TAG) not in known:
            tracker.client.delete_run(r.info.run_id)


def _finish_parent(tracker, trials: list[dict[str, Any]]) -> None:
    try:
        tracker.client.log_text(
            tracker.parent_run_id, json.dumps(trials, indent=1, default=str), "trials.json"
        )
        tracker.client.set_terminated(tracker.parent_run_id, "FINISHED")
    except Exception as e:  # the sweep's results are on disk; MLflow can be synced later
        print(f"critbatch: could not finish the MLflow parent run ({e})", file=sys.stderr)


def write_snapshot(client, parent_run_id: str, run_dir: Path) -> int | None:
    """The sweep's metrics snapshot on its parent run (docs/loading.md: loading then downloads
    one file instead of every history); its number of points, or None when it could not be
    written: that never fails the sweep, and `critbatch sync` writes it later."""
    from tune_jobs.publish import write_metrics_snapshot

    try:
        return write_metrics_snapshot(client, parent_run_id)["points"]
    except Exception as e:
        print(
            f"critbatch: could not write the MLflow metrics snapshot ({type(e).__name__}: {e}); "
            f"loading still works, only slower; `critbatch sync {run_dir}` writes it",
            file=sys.stderr,
        )
        return None


def sync_sweep(run_dir: Path) -> dict[str, int]:
    """Replay into MLflow what Tune recorded (after an MLflow outage), then rewrite the
    sweep's metrics snapshot (``snapshot_points``: -1 when it could not be written)."""
    from trainables.api import final_status
    from tune_jobs.tracking import Tracker, read_results, reconcile

    meta = json.loads((run_dir / SWEEP_FILE).read_text())
    tracker = Tracker(meta["tracking_uri"], meta["experiment_id"], meta["parent_run_id"], {})
    statuses = {}
    for d in run_dir.iterdir():
        rows = read_results(d) if d.is_dir() else []
        if rows:
            statuses[rows[-1]["trial_id"]] = (final_status(rows[-1].get("status")), None)
    counts = reconcile(tracker, run_dir, statuses)
    points = write_snapshot(tracker.client, tracker.parent_run_id, run_dir)
    return counts | {"snapshot_points": -1 if points is None else points}
