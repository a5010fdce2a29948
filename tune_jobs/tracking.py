"""MLflow writing: one parent run per sweep, one nested child run per trial.

Kept on the driver, so workers never talk to the tracking server. The Tune callback only
queues (:class:`MlflowCallback`); a background thread writes (:mod:`tune_jobs.mlflow_writer`).
Nothing is lost even if the driver dies: Tune's per-trial ``result.json`` and the journal of
finished trials (:mod:`tune_jobs.journal`) are the durable record, and :func:`reconcile`
makes MLflow match them (idempotent: only (metric, step) points MLflow lacks are sent, and a
run's params, status, objective and end are set when missing or wrong). Child runs are found
by their ``critbatch.trial_id`` tag, so a resumed sweep never duplicates them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.logger import JsonLoggerCallback
from ray.tune.utils.util import SafeFallbackEncoder

from analysis.loaders import tracking_store
from analysis.mlflow_layout import (
    DEVICE_PARAMS,
    ERROR_TAG,
    NON_METRICS,
    PARENT_TAG,
    ROLE_TAG,
    ROLE_TRIAL,
    STATUS_TAG,
    TRIAL_ID_TAG,
    TRIAL_PARAMS,
    is_tune_key,
)
from analysis.packets import points_of
from trainables.api import Status, final_status

log = logging.getLogger("critbatch.tracking")

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
MAX_PARAMS = 100  # and of params


def metric_points(result: dict[str, Any]) -> list[Metric]:
    """The per-step metric points of a result's reports (every one of a packet,
    :func:`analysis.packets.points_of`), each keyed by its report's step, stamped with the
    result's own time (Tune's ``timestamp``, s): a point sent again is then identical, and
    kept once."""
    timestamp_ms = int(float(result.get("timestamp") or time.time()) * 1000)
    out = []
    for point in points_of(result):
        step = int(point.get("step", 0))
        for k, v in point.items():
            if k in NON_METRICS or k in DEVICE_PARAMS or is_tune_key(k):
                continue
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            value = float(v) if math.isfinite(v) else float("nan")
            out.append(Metric(k, value, timestamp_ms, step))
    return out


def child_run_name(config: dict[str, Any]) -> str:
    """``bs=64 lr=0.12 seed=0``: what tells trials apart in the MLflow runs table (a branch of
    `critbatch branch` starts ``t=100 k=4``, its base run ``base``)."""
    name = f"bs={config['batch_size']} lr={float(config['lr']):.3g} seed={config.get('seed', 0)}"
    if "factor" in config:
        return f"t={config['branch_at']} k={config['factor']} {name}"
    return f"base {name}" if "checkpoint_at" in config else name


def device_params(result: dict[str, Any]) -> dict[str, str]:
    """What a trial ran on (Ray's CPUs and GPU share, the device's name), from a report."""
    return {k: str(result[k]) for k in DEVICE_PARAMS if k in result}


class Tracker:
    """A sweep's MLflow runs: finds or creates a trial's child run, ends it. Used by one
    thread at a time (the writer thread during a sweep, then :func:`reconcile`)."""

    def __init__(
        self, tracking_uri: str, experiment_id: str, parent_run_id: str, job_params: dict[str, Any]
    ):
        self.uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.job_params = job_params  # params every child run carries
        self._client: MlflowClient | None = None
        self.runs: dict[str, str] = {}  # tune trial id -> mlflow run id
        # A new sweep has no child runs yet: skip the per-trial lookup by tag (a query each).
        # Set by the engine for new sweeps; any failure turns it off (a run may have been
        # created on the server while its reply was lost).
        self.fresh = False

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            # MLflow's HTTP client retries a dead server for ~4 minutes per call (7 retries,
            # exponential backoff). The writer retries by itself, so calls fail fast (a value
            # the user set wins).
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            self._client = MlflowClient(self.uri)
        return self._client

    def params_for(self, config: dict[str, Any]) -> dict[str, str]:
        params = {k: str(config[k]) for k in TRIAL_PARAMS if k in config}
        params.update({k: str(v) for k, v in self.job_params.items()})
        return params

    def find_child(self, trial_id: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TRIAL_ID_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
            max_results=5,
        )
        return runs[0].info.run_id if runs else None

    def ensure_child(self, trial_id: str, run_name: str, params: dict[str, str]) -> str:
        """The trial's run id: found by its tag, else created with its params. Raises on an
        unreachable server."""
        if trial_id in self.runs:
            return self.runs[trial_id]
        run_id = None if self.fresh else self.find_child(trial_id)
        if run_id is None:
            tags = {
                PARENT_TAG: self.parent_run_id,
                ROLE_TAG: ROLE_TRIAL,
                TRIAL_ID_TAG: trial_id,
                STATUS_TAG: Status.RUNNING,
            }
            run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name)
            run_id = run_id.info.run_id
            self.runs[trial_id] = run_id
            items = [Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), MAX_PARAMS):
                self.client.log_batch(run_id, params=items[i : i + MAX_PARAMS])
        self.runs[trial_id] = run_id
        return run_id

    def end_run(
        self, trial_id: str, status: str, final: list[Metric], tags: dict[str, str]
    ) -> None:
        """A trial's final metrics and tags, then its run's end (FAILED for an errored trial)."""
        run_id = self.runs[trial_id]
        self.client.log_batch(
            run_id,
            metrics=final,
            tags=[RunTag(k, v) for k, v in {**tags, STATUS_TAG: status}.items()],
        )
        end_run(self.client, run_id, "FAILED" if status == Status.ERRORED else "FINISHED")


def end_run(client: MlflowClient, run_id: str, status: str) -> None:
    """Set a run's end without ``MlflowClient.set_terminated``, which prints "View run ..."
    lines (an extra request each) into the sweep's progress output on an http server."""
    tracking_store(client).update_run_info(
        run_id, RunStatus.from_string(status), int(time.time() * 1000), None
    )


def final_parts(
    record: dict[str, Any], last: dict[str, Any] | None, error: str | None = None
) -> tuple[list[Metric], dict[str, str]]:
    """A finished trial's final metrics (steps to target, objective) and tags (its error)."""
    now = int(time.time() * 1000)
    step = int((last or {}).get("step") or record["row"].get("steps_run") or 0)
    metrics = []
    stt = record["row"].get("steps_to_target")
    if stt is not None:
        metrics.append(Metric("steps_to_target", float(stt), now, step))
    if record.get("objective") is not None:
        metrics.append(Metric("objective", float(record["objective"]), now, step))
    return metrics, ({ERROR_TAG: error[-4900:]} if error else {})


class MlflowCallback(Callback):
    """Tune callback on the driver: queues each trial event for the MLflow writer, nothing
    more (no request is made inside Tune's event loop). ``records``: the searcher's journal
    records by trial id (written before Tune tells the callbacks a trial completed, except for
    the parallel search's trials, which its virtual clock may end later: their end waits for
    the record). ``settled(trial id)``: the step up to which the trial's reports are part of
    its result (:meth:`tune_jobs.searcher.SweepSearcher.settled_step`; default: every step):
    later ones wait, and those past where the search ended the trial are never logged, so
    MLflow holds each trial's result as the search saw it, whatever the real timing."""

    def __init__(self, writer, tracker: Tracker, records: dict[str, dict[str, Any]],
                 settled: Callable[[str], float] | None = None):  # fmt: skip
        self.writer = writer
        self.tracker = tracker
        self.records = records
        self.settled = settled or (lambda trial_id: math.inf)
        self.logged_step: dict[str, int] = {}  # trial -> last step taken from its results
        self.waiting: dict[str, list[dict[str, Any]]] = {}  # trial -> its reports not yet logged
        self.ends: dict[str, tuple[Any, str | None]] = {}  # trial -> (trial, error): no record yet

    def __getstate__(self):  # Tune pickles its callbacks with the experiment: not the thread
        return {**self.__dict__, "writer": None, "settled": None}

    def on_trial_start(self, iteration, trials, trial, **info):
        run_name = child_run_name(trial.config)
        self.writer.start(trial.trial_id, run_name, self.tracker.params_for(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # A step already queued (a trial restored from an older checkpoint reports it again)
        # is skipped, so MLflow holds every step once. A packet: each of its reports.
        done = self.logged_step.get(trial.trial_id, -1)
        new = [p for p in points_of(result) if int(p.get("step", 0)) > done]
        if not new:
            return
        if trial.trial_id not in self.logged_step and "device_name" in result:
            self.writer.put(("params", trial.trial_id, device_params(result)))
        self.logged_step[trial.trial_id] = int(new[-1].get("step", 0))
        self.waiting.setdefault(trial.trial_id, []).extend(new)
        self._log(trial.trial_id)

    def on_step_end(self, iteration, trials, **info):
        for trial_id in list(self.waiting):
            self._log(trial_id)
        for trial_id in [t for t in self.ends if t in self.records]:
            self._end(*self.ends.pop(trial_id))

    def on_experiment_end(self, trials, **info):
        for trial, error in list(self.ends.values()):  # (cannot happen: every trial recorded)
            self._end(trial, error, final=True)
        self.ends.clear()

    def _log(self, trial_id: str, upto: float | None = None) -> None:
        """Log the trial's waiting reports up to ``upto`` (default: as far as settled)."""
        waiting = self.waiting.get(trial_id)
        if not waiting:
            return
        upto = self.settled(trial_id) if upto is None else upto
        k = next((i for i, p in enumerate(waiting) if int(p.get("step", 0)) > upto), len(waiting))
        if k:
            self.writer.put(
                ("points", trial_id, [m for p in waiting[:k] for m in metric_points(p)])
            )
            del waiting[:k]
        if not waiting:
            del self.waiting[trial_id]

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        err = None
        if trial.error_file and Path(trial.error_file).exists():
            err = Path(trial.error_file).read_text()
        self._end(trial, err or "error")

    def _end(self, trial, error: str | None, final: bool = False) -> None:
        record = self.records.pop(trial.trial_id, None)
        if record is None and not final and self.settled(trial.trial_id) < math.inf:
            self.ends[trial.trial_id] = (trial, error)  # the search ends it later
            return
        self.logged_step.pop(trial.trial_id, None)
        if record is None:  # not from the searcher (cannot happen): status from Tune alone
            self._log(trial.trial_id, math.inf)
            status = final_status(
                (trial.last_result or {}).get("status"), errored=error is not None
            )
            record = {"row": {"steps_run": (trial.last_result or {}).get("step")}}
        else:
            status = record["status"]
            self._log(trial.trial_id, _result_end(record))
        self.waiting.pop(trial.trial_id, None)  # past the end the search gave it: not its result
        metrics, tags = final_parts(record, trial.last_result, error)
        self.writer.put(("end", trial.trial_id, status, metrics, tags))


class RunFolderJsonLogger(JsonLoggerCallback):
    """Tune's JSON logger (``params.json``, and ``result.json``: one line per report), written
    straight into the trial's folder in the run folder. Tune's own logger writes to a staging
    folder under Ray's session directory, copied to the run folder only every experiment
    checkpoint: a killed driver then leaves the run folder behind the journal and MLflow, and
    `resume`/`sync` would not find reports they need. Each line is flushed as it is written."""

    def log_trial_start(self, trial) -> None:
        if trial in self._trial_files:
            self._trial_files[trial].close()
        Path(trial.path).mkdir(parents=True, exist_ok=True)
        self.update_config(trial, trial.config)
        self._trial_files[trial] = Path(trial.path, "result.json").open("a")  # noqa: SIM115

    def update_config(self, trial, config: dict[str, Any]) -> None:
        self._trial_configs[trial] = config
        text = json.dumps(config, indent=2, sort_keys=True, cls=SafeFallbackEncoder)
        Path(trial.path, "params.json").write_text(text)


# ---- replay from the run folder's durable records -------------------------------------------
def read_results(trial_dir: Path) -> list[dict[str, Any]]:
    f = trial_dir / "result.json"
    if not f.exists():
        return []
    rows = []
    for line in f.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a killed process
            continue
    return rows


def trial_dirs(run_dir: Path) -> list[Path]:
    """The run folder's trial folders (Tune's: each with its ``params.json``)."""
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / "params.json").exists())


def attach_errors(run_dir: Path, trials: list[dict[str, Any]]) -> None:
    """An errored trial's row gets the last line of its traceback (Tune's error.txt in the
    trial's folder), so a sweep whose every trial of a batch size failed can name the cause."""
    for row in trials:
        if row.get("status") != "errored" or row.get("error"):
            continue
        for f in run_dir.glob(f"*{row['trial_id']}*/error.txt"):
            lines = [ln for ln in f.read_text(errors="replace").splitlines() if ln.strip()]
            row["error"] = lines[-1] if lines else None
            break


TRIAL_FOLDER_ID = re.compile(r"_([0-9a-f]{8})_\d+_")  # Tune's: <trainable>_<id>_<n>_<params>


def folder_trial_ids(run_dir: Path) -> set[str]:
    """Tune's trial ids in the names of every trial folder under a sweep's run folder, set
    aside ones included (their MLflow runs exist until the sweep reconciles)."""
    ids = set()
    for p in run_dir.rglob("params.json"):
        m = TRIAL_FOLDER_ID.search(p.parent.name)
        if m:
            ids.add(m.group(1))
    return ids


def logged_points(client: MlflowClient, run) -> set[tuple[str, int]]:
    """(metric, step) pairs MLflow holds for a run: one history query per metric it has."""
    return {
        (k, m.step) for k in run.data.metrics for m in client.get_metric_history(run.info.run_id, k)
    }


def reconcile(
    tracker: Tracker, run_dir: Path, records: dict[str, dict[str, Any]]
) -> dict[str, int]:
    """Make MLflow hold what the run folder holds, once: every trial's run with its params,
    every (metric, step) Tune recorded, and for finished trials (``records``: the journal by
    trial id) their status tag, final metrics, error and end. Child runs of no trial of the
    folder (a killed driver's abandoned attempts) are deleted. Returns counts of runs created
    and points sent; raises when MLflow is unreachable."""
    created = sent = 0
    known = set()
    for trial_dir in trial_dirs(run_dir):
        rows = read_results(trial_dir)
        if not rows:
            continue
        trial_id, config = rows[-1]["trial_id"], rows[-1].get("config", {})
        known.add(trial_id)
        had = trial_id in tracker.runs or tracker.find_child(trial_id) is not None
        params = tracker.params_for(config) | device_params(rows[0])
        run_id = tracker.ensure_child(trial_id, child_run_name(config), params)
        created += not had
        run = tracker.client.get_run(run_id)
        missing = [Param(k, v) for k, v in params.items() if k not in run.data.params]
        for i in range(0, len(missing), MAX_PARAMS):
            tracker.client.log_batch(run_id, params=missing[i : i + MAX_PARAMS])
        have = logged_points(tracker.client, run)
        points = []
        rec = records.get(trial_id)
        end = _result_end(rec)
        for r in rows:  # result.json may repeat steps after a restore: each (metric, step) once
            for m in metric_points(r):
                if (m.key, m.step) not in have and m.step <= end:
                    points.append(m)
                    have.add((m.key, m.step))
        sent += _log_points(tracker.client, run_id, points)
        if rec is not None:
            err = trial_dir / "error.txt"
            error = err.read_text() if rec["status"] == Status.ERRORED and err.exists() else None
            final, tags = final_parts(rec, rows[-1], error)
            stale = (
                run.data.tags.get(STATUS_TAG) != rec["status"]
                or run.info.status == "RUNNING"
                or any(m.key not in run.data.metrics for m in final)
            )
            if stale:
                tracker.end_run(trial_id, rec["status"], final, tags)
    _delete_orphans(tracker, known)
    return {"runs_created": created, "points_sent": sent}


def _result_end(record: dict[str, Any] | None) -> float:
    """The last step of a trial's result that MLflow holds: where the parallel search's virtual
    clock ended it (its record has ``at``; the steps it ran past that are not its result, and
    the live callback never logged them), else every step."""
    if record is None or "at" not in record or record["row"].get("steps_run") is None:
        return math.inf
    return float(record["row"]["steps_run"])


def _log_points(client: MlflowClient, run_id: str, points: Iterable[Metric]) -> int:
    points = list(points)
    for i in range(0, len(points), MAX_BATCH):
        client.log_batch(run_id, metrics=points[i : i + MAX_BATCH])
    return len(points)


def _delete_orphans(tracker: Tracker, known: set[str]) -> None:
    """Child runs whose trial the run folder does not hold (an attempt abandoned by a resume,
    or a run created just before the driver died) would count a trial twice: delete them."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        f"tags.`{PARENT_TAG}` = '{tracker.parent_run_id}'",
        max_results=50000,
    )
    for r in runs:
        if r.data.tags.get(TRIAL_ID_TAG) not in known:
            tracker.client.delete_run(r.info.run_id)
