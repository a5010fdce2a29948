"""The sweep engine: validate, check the cluster and the tracking store, run, resume.

``run_sweep(job)`` starts a sweep in ``<storage>/<name>/``; ``resume_sweep(name)`` finishes one
whose driver died, without re-running finished trials and without duplicating MLflow runs.
Everything that can be wrong with the input is checked before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from analysis.mlflow_layout import (
    GIT_COMMIT_TAG,
    ROLE_SWEEP,
    ROLE_TAG,
    RUN_DIR_TAG,
    VERSION_TAG_PREFIX,
)
from tune_jobs.config import JobConfig, JobError
from tune_jobs.job_file import parse_stored_job
from tune_jobs.mlflow_view import experiment_tags
from tune_jobs.placement import cluster_fits, search_slots, trial_resources
from tune_jobs.preflight import (  # noqa: F401  (re-exported: tests and tools import them from here)
    AUTOSCALING_CONFIG,
    SWEEP_FILE,
    autoscaling_node_types,
    check_num_cpus,
    check_resources,
    check_tracking_uri,
    check_user_code,
    init_ray,
    preflight,
)
from tune_jobs.sweep_params import child_params, git_commit, job_params, package_versions

# Tune's CSV and TensorBoard loggers are not needed (MLflow and result.json are): set before
# ray.tune is imported anywhere in this process.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


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
    synced: bool = True  # False: MLflow did not take all of it (the run folder has it)
    numbers: Any = None  # analysis.compare.SweepNumbers at the job's target; None: not computed


def run_dir_of(job: JobConfig) -> Path:
    return Path(job.storage).expanduser().resolve() / job.name


# ---- the sweep ----------------------------------------------------------------------------------
def _train_sizes(job: JobConfig) -> dict[int, int | None]:
    from trainables.registry import get_workload

    n = get_workload(job.workload, job.code_dir).train_size
    return dict.fromkeys(job.batch_sizes, n)


def _start_tracking(
    job: JobConfig, run_dir: Path, job_yaml: str, role: str = ROLE_SWEEP
) -> tuple[str, str]:
    import mlflow
    from mlflow.tracking import MlflowClient

    from tune_jobs.locks import tracking_store_lock

    view = experiment_tags()  # opens on the runs table with the sweep columns (mlflow_view.py)
    with tracking_store_lock(job.tracking.uri):  # a fresh store is created by the client
        client = MlflowClient(job.tracking.uri)  # (its registry store, at construction)
        exp = client.get_experiment_by_name(job.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(job.experiment, tags=view)
    for k, v in view.items() if exp is not None else ():  # made by an older critbatch
        if exp.tags.get(k) != v:
            client.set_experiment_tag(exp_id, k, v)
    tags = {
        ROLE_TAG: role,
        RUN_DIR_TAG: str(run_dir),
        GIT_COMMIT_TAG: git_commit(),
    }
    tags.update({f"{VERSION_TAG_PREFIX}{k}": v for k, v in package_versions().items()})
    run = client.create_run(exp_id, run_name=job.name, tags=tags)
    from mlflow.entities import Param

    params = [Param(k, v) for k, v in job_params(job).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    from analysis.tracking_uri import redact_uri

    uri = job.tracking.uri
    client.log_text(run.info.run_id, job_yaml.replace(uri, redact_uri(uri)), "job.yaml")
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
    with started_sweep(job, address=address, num_cpus=num_cpus, job_yaml=job_yaml,
                       meta={"journal": True}) as (run_dir, meta):  # fmt: skip
        return _fit(job, run_dir, meta, restore=False, progress=progress)


@contextlib.contextmanager
def started_sweep(
    job: JobConfig,
    *,
    address: str | None,
    num_cpus: int | None,
    job_yaml: str | None,
    role: str = ROLE_SWEEP,
    meta: dict[str, Any] | None = None,
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The start every new sweep (``run``, ``branch``) shares: checks (:func:`preflight`, the
    user's code), the run folder claimed (a second live sweep of that name is refused), Ray
    up, the MLflow parent run with role ``role``, then ``job.yaml`` and ``sweep.json`` (with
    ``meta`` added) written. Yields (run folder, its sweep.json contents); the claim is
    released on exit. Anything failing before the sweep started leaves nothing half-written:
    a folder this call created is removed."""
    from tune_jobs.locks import claim_new_sweep

    run_dir = preflight(job, address=address, num_cpus=num_cpus)
    check_user_code(job)  # imports the user's module and builds one batch, in a subprocess
    claim = claim_new_sweep(run_dir, job.name, SWEEP_FILE)  # refuses a second live sweep
    try:
        resources = init_ray(address, num_cpus)
        check_resources(job, resources)
        job_yaml = job_yaml or yaml.safe_dump(job.to_dict(), sort_keys=False)
        exp_id, parent = _start_tracking(job, run_dir, job_yaml, role=role)
    except BaseException:
        if claim.created_dir:  # nothing half-written: the sweep never started
            shutil.rmtree(run_dir, ignore_errors=True)
        claim.release()
        raise
    try:
        (run_dir / "job.yaml").write_text(job_yaml)
        info = {"job": job.to_dict(), "tracking_uri": job.tracking.uri, "experiment_id": exp_id,
                "parent_run_id": parent, "git_commit": git_commit(), "created": time.time(),
                **(meta or {})}  # fmt: skip
        tmp = run_dir / (SWEEP_FILE + ".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(run_dir / SWEEP_FILE)
        yield run_dir, info
    finally:
        claim.release()


def resume_sweep(name_or_dir: str, storage: str = "critbatch_runs", *, address: str | None = None,
                 num_cpus: int | None = None, progress: bool = True) -> SweepResult:  # fmt: skip
    """Finish a sweep whose driver died: finished trials (the journal's) are kept and never run
    again; unfinished ones restart from their first step under new trial ids (their partial
    MLflow runs are deleted); the search goes on from the results it had acted on, so the
    table is the one the uninterrupted sweep prints."""
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
    from tune_jobs.locks import claim_existing_sweep

    meta = json.loads((run_dir / SWEEP_FILE).read_text())
    for kind in ("branch", "train"):
        if meta.get(kind):
            raise JobError(f"sweep: {run_dir} holds a `critbatch {kind}` run, which cannot be "
                           f"resumed; run the job again with `critbatch {kind}` under a new "
                           "name")  # fmt: skip
    job = parse_stored_job(meta["job"])
    if not meta.get("journal"):
        raise JobError(
            f"sweep: {run_dir} was started by a critbatch without the journal of finished "
            "trials, which an exact resume needs; resume it with the version that started it"
        )
    check_tracking_uri(meta["tracking_uri"])
    check_num_cpus(num_cpus)
    claim = claim_existing_sweep(run_dir)  # refuses while the sweep's driver still lives
    try:
        resources = init_ray(address, num_cpus)
        check_resources(job, resources)
        return _fit(job, run_dir, meta, restore=True, progress=progress)
    finally:
        claim.release()


def _fit(
    job: JobConfig, run_dir: Path, meta: dict[str, Any], *, restore: bool, progress: bool
) -> SweepResult:
    from ray import tune

    from tune_jobs.journal import EVENT, iter_records, journal_path, read_events, read_records
    from tune_jobs.mlflow_writer import SPILL_FILE, MlflowWriter
    from tune_jobs.progress import ProgressCallback
    from tune_jobs.ray_internals import no_result_frames
    from tune_jobs.scheduler import PerBatchSizeScheduler
    from tune_jobs.searcher import SweepSearcher
    from tune_jobs.tracking import (
        MlflowCallback,
        RunFolderJsonLogger,
        Tracker,
        attach_errors,
        folder_trial_ids,
        reconcile,
    )
    from tune_jobs.trainable import run_tune_trial

    t0 = time.time()
    train_sizes = _train_sizes(job)
    max_steps = {b: job.max_steps_for(b, train_sizes[b]) for b in job.batch_sizes}
    base = dataclasses.asdict(
        job.trial_config(job.batch_sizes[0], 1.0, job.seeds[0], train_sizes[job.batch_sizes[0]])
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_tune_trial, base=base, cpus=job.resources.cpus),
        functools.partial(trial_resources, job.resources)
        if job.resources.gpus_from_batch_size
        else {"cpu": job.resources.cpus, "gpu": job.resources.gpus},
    )
    journal = journal_path(run_dir)
    slots = search_slots(job) if job.lr_search.parallel else 0
    searcher = SweepSearcher(job, None, train_sizes, journal, slots)
    # a trial waits at a report the clock holds back only where the cluster runs every one of
    # the clock's workers at once: else a waiting trial could keep the one the clock waits
    # for from starting
    hold = 0 < slots <= cluster_fits(job)
    scheduler = PerBatchSizeScheduler(job, searcher, max(max_steps.values()), hold=hold)
    events = read_events(journal) if restore else []
    finished = [r for r in events if EVENT not in r]
    if restore:  # the search as of the last result it acted on (tune_jobs/journal.py)
        searcher.replay(events)
        scheduler.replay(finished)
        _set_aside_unfinished(run_dir, {r["trial_id"] for r in finished})
        searcher.used_ids.update(folder_trial_ids(run_dir))  # unfinished ones have MLflow runs
    tracker = Tracker(meta["tracking_uri"], meta["experiment_id"], meta["parent_run_id"],
                      child_params(job))  # fmt: skip
    tracker.fresh = not restore
    writer = MlflowWriter(tracker, run_dir / SPILL_FILE)
    callbacks = [
        RunFolderJsonLogger(),
        MlflowCallback(writer, tracker, searcher.records, searcher.settled_step),
    ]
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
    # A resumed sweep is a new Tune experiment in the same folder: its searcher hands out the
    # trials that had not finished first (they restart from their first step, so they give
    # what they would have given), then goes on; finished trials stay where they are.
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            # The parallel search's withdrawn trials are Tune trials beyond its count: it runs
            # until its searcher says it is finished.
            num_samples=-1 if job.lr_search.parallel else max(1, job.total_trials - len(finished)),
            max_concurrent_trials=job.max_concurrent or None,
            reuse_actors=True,
        ),
        run_config=run_config,
    )
    if not searcher.exhausted:  # (a driver killed after its last trial: nothing to run)
        with no_result_frames():  # its ResultGrid is not read: the journal is the record
            tuner.fit()
    synced = writer.close()
    # Tune's trials, the studies and the callbacks are done with: freed before the end's
    # table, snapshot and analysis, which then reuse their memory (the driver's peak at the
    # end of a 10,000-trial sweep); of the journal's records, only the table's rows are held.
    del tuner, run_config, callbacks, scheduler, searcher, trainable
    gc.collect()

    trials = sorted((r["row"] for r in iter_records(journal)),
                    key=lambda t: (t["batch_size"], t["seed"], t["study"] or "", t["lr"]))  # fmt: skip
    attach_errors(run_dir, trials)
    _write_json(run_dir / TRIALS_FILE, trials)  # the sweep's end, for `critbatch sync`
    if synced and (restore or writer.ever_failed):
        # MLflow must hold every report Tune recorded, exactly once, whatever happened to the
        # server or the driver meanwhile: replay what is missing from the run folder.
        try:
            reconcile(tracker, run_dir, {r["trial_id"]: r for r in read_records(journal)})
        except Exception as e:
            synced = False
            print(f"critbatch: MLflow reconcile failed ({type(e).__name__}: {e})", file=sys.stderr)
    synced = synced and _finish_parent(tracker, trials)
    if synced:
        synced = write_snapshot(tracker.client, tracker.parent_run_id, run_dir) is not None
    if not synced:
        print(
            f"critbatch: MLflow at {meta['tracking_uri']} did not take all of the sweep; "
            f"everything is kept in {run_dir}: run `critbatch sync {run_dir}` when it is back",
            file=sys.stderr,
        )
    numbers = sweep_numbers_of(job, run_dir)
    if numbers is not None and synced:
        from analysis.compare import parent_run_metrics
        from tune_jobs.publish import log_sweep_numbers

        try:
            log_sweep_numbers(tracker.client, tracker.parent_run_id,
                              parent_run_metrics(numbers), numbers.description())  # fmt: skip
        except Exception as e:  # the numbers are printed and `critbatch analyze` redoes them
            print(f"critbatch: could not log the sweep's result in MLflow ({e})", file=sys.stderr)
    return SweepResult(run_dir, meta["tracking_uri"], meta["experiment_id"],
                       meta["parent_run_id"], trials, time.time() - t0, synced, numbers)  # fmt: skip


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


TRIALS_FILE = "trials.json"
ABANDONED_DIR = "abandoned"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def _set_aside_unfinished(run_dir: Path, finished: set[str]) -> None:
    """Move the trial folders of unfinished trials (and Tune's snapshot, which the resumed
    sweep does not use) to ``abandoned/<time>/``: kept for inspection, out of what `sync`
    and the analysis read; their MLflow runs are deleted when the sweep reconciles."""
    from tune_jobs.tracking import read_results, trial_dirs

    dest = run_dir / ABANDONED_DIR / time.strftime("%Y%m%d-%H%M%S")
    for d in trial_dirs(run_dir):
        rows = read_results(d)
        if not rows or rows[-1].get("trial_id") not in finished:
            dest.mkdir(parents=True, exist_ok=True)
            d.rename(dest / d.name)
    for f in run_dir.glob("*"):
        if f.is_file() and f.name.startswith(
            ("experiment_state", "searcher-state", "basic-variant-state", "tuner.pkl")
        ):
            dest.mkdir(parents=True, exist_ok=True)
            f.rename(dest / f.name)


def _finish_parent(tracker, trials: list[dict[str, Any]]) -> bool:
    from tune_jobs.tracking import end_run

    try:
        tracker.client.log_text(
            tracker.parent_run_id, json.dumps(trials, indent=1, default=str), "trials.json"
        )
        end_run(tracker.client, tracker.parent_run_id, "FINISHED")
        return True
    except Exception as e:  # the sweep's results are on disk; MLflow can be synced later
        print(f"critbatch: could not finish the MLflow parent run ({e})", file=sys.stderr)
        return False


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
    """Make MLflow hold what the run folder holds (after an MLflow outage): every trial's run,
    params, points, status, objective and end; for a sweep that ended, the parent's table and
    end; then the sweep's metrics snapshot (``snapshot_points``: -1 when it could not be
    written). Raises when MLflow is unreachable."""
    from tune_jobs.journal import journal_path, read_records
    from tune_jobs.tracking import Tracker, reconcile

    meta = json.loads((run_dir / SWEEP_FILE).read_text())
    job = parse_stored_job(meta["job"])
    tracker = Tracker(meta["tracking_uri"], meta["experiment_id"], meta["parent_run_id"],
                      child_params(job))  # fmt: skip
    records = {r["trial_id"]: r for r in read_records(journal_path(run_dir))}
    counts = reconcile(tracker, run_dir, records)
    points = None
    if (run_dir / TRIALS_FILE).exists():  # the sweep ended: its parent run ends too
        trials = json.loads((run_dir / TRIALS_FILE).read_text())
        if not _finish_parent(tracker, trials):
            raise ConnectionError(f"MLflow at {tracker.uri} refused the parent run's end")
        points = write_snapshot(tracker.client, tracker.parent_run_id, run_dir)
    return counts | {"snapshot_points": -1 if points is None else points}
