"""MLflow writing: one parent run per sweep, one nested child run per trial.

Kept on the driver (a Tune callback), so workers never talk to the tracking server. Metric
points are buffered and sent with ``log_batch``; when the server is unreachable the buffer
is kept and retried, and nothing is lost even if the driver dies meanwhile: Tune's own
per-trial ``result.json`` is the durable record, and :func:`reconcile` replays whatever MLflow
is missing from it (idempotent: only steps above the last one MLflow holds are sent). Child
runs are found by their ``critbatch.trial_id`` tag, so a resumed sweep never duplicates them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

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
from trainables.api import Status, final_status

log = logging.getLogger("critbatch.tracking")

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
MAX_PARAMS = 100  # and of params


def metric_points(result: dict[str, Any], timestamp_ms: int) -> list[Metric]:
    """The per-step metric points of one report, keyed by its step."""
    step = int(result.get("step", 0))
    out = []
    for k, v in result.items():
        if k in NON_METRICS or k in DEVICE_PARAMS or is_tune_key(k):
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        out.append(Metric(k, float(v) if math.isfinite(v) else float("nan"), timestamp_ms, step))
    return out


def child_run_name(config: dict[str, Any]) -> str:
    """``bs=64 lr=0.12 seed=0``: what tells trials apart in the MLflow runs table."""
    return f"bs={config['batch_size']} lr={float(config['lr']):.3g} seed={config.get('seed', 0)}"


class Tracker:
    """Writes a sweep to MLflow; every call survives an unreachable server (buffer + retry)."""

    def __init__(
        self, tracking_uri: str, experiment_id: str, parent_run_id: str, job_params: dict[str, Any]
    ):
        self.uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.job_params = job_params
        self._client: MlflowClient | None = None
        self.runs: dict[str, str] = {}  # tune trial id -> mlflow run id
        self.logged_step: dict[
            str, int
        ] = {}  # tune trial id -> last step sent (or found) in MLflow
        self.pending: dict[str, list[Metric]] = {}
        self.pending_params: dict[str, list[Param]] = {}  # sent with the run's first batch
        self.device_logged: set[str] = set()  # trials whose DEVICE_PARAMS are queued or sent
        self.pending_final: dict[str, tuple[str, dict[str, Any] | None, str | None]] = {}
        self.to_terminate: dict[str, str] = {}  # final batch sent; run status still to set
        self.last_failure = 0.0
        self.failures = 0
        self.ever_failed = False
        # A new sweep has no child runs yet: skip the per-trial lookup by tag (a query each).
        # Set by the engine for new sweeps; any failure turns it off (a run may have been
        # created on the server while its reply was lost).
        self.fresh = False

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_client"] = None
        return d

    def __setstate__(self, d):
        d.setdefault("pending_params", {})  # a tracker pickled by an older version
        d.setdefault("to_terminate", {})
        d.setdefault("device_logged", set())
        self.__dict__.update(d)
        self.fresh = False  # unpickled = a resumed sweep: its children may exist already

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            # MLflow's HTTP client retries a dead server for ~4 minutes per call (7 retries,
            # exponential backoff): that held the Tune driver, and every trial waiting on it,
            # for a whole server outage. This tracker buffers and retries by itself, so its
            # calls fail fast (a value the user set wins).
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            self._client = MlflowClient(self.uri)
        return self._client

    def _try(self, fn, *args, **kwargs) -> bool:
        if self.failures and time.time() - self.last_failure < min(30.0, 2.0**self.failures):
            return False  # back off while the server is down
        try:
            fn(*args, **kwargs)
        except Exception as e:  # any transport or server error: keep the data, retry later
            self.failures += 1
            self.ever_failed = True
            self.fresh = False
            self.last_failure = time.time()
            log.warning("MLflow unreachable (%s); buffering and retrying", type(e).__name__)
            return False
        self.failures = 0
        return True

    # ---- child runs ------------------------------------------------------------------------
    def find_child(self, trial_id: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TRIAL_ID_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
            max_results=5,
        )
        return runs[0].info.run_id if runs else None

    def ensure_child(self, trial_id: str, trial_name: str, config: dict[str, Any]) -> str | None:
        if trial_id in self.runs:
            return self.runs[trial_id]

        def create() -> None:
            run_id = None if self.fresh else self.find_child(trial_id)
            if run_id is not None:  # a resumed sweep: continue after what MLflow already holds
                self.logged_step[trial_id] = last_logged_step(self.client, run_id)
            else:
                tags = {
                    PARENT_TAG: self.parent_run_id,
                    ROLE_TAG: ROLE_TRIAL,
                    TRIAL_ID_TAG: trial_id,
                    STATUS_TAG: Status.RUNNING,
                }
                run = self.client.create_run(
                    self.experiment_id, tags=tags, run_name=child_run_name(config)
                )
                run_id = run.info.run_id
                params = {k: config[k] for k in TRIAL_PARAMS if k in config}
                params.update(self.job_params)
                # Sent with the run's first metrics (one request fewer per trial).
                self.pending_params[trial_id] = [Param(k, str(v)) for k, v in params.items()]
            self.runs[trial_id] = run_id

        self._try(create)
        return self.runs.get(trial_id)

    # ---- metrics ---------------------------------------------------------------------------
    def add_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Buffer a report's points; a step already sent (a trial restored from an older
        checkpoint reports it again) is skipped, so MLflow holds every step once."""
        step = int(result.get("step", 0))
        if step <= self.logged_step.get(trial_id, -1):
            return
        self.logged_step[trial_id] = step
        if trial_id not in self.device_logged and "device_name" in result:
            self.device_logged.add(trial_id)  # MLflow accepts a param logged again, same value
            self.pending_params.setdefault(trial_id, []).extend(
                Param(k, str(result[k])) for k in DEVICE_PARAMS if k in result
            )
        self.pending.setdefault(trial_id, []).extend(metric_points(result, int(time.time() * 1000)))

    def flush(self, force: bool = False) -> bool:
        """Send buffered points; True when nothing is left pending.

        Per trial, one ``log_batch`` carries its pending params, points and, once the trial
        has ended, its final metrics and status tag; then ``set_terminated``. Each piece is
        dropped from the buffer only after the request that carried it succeeded, so a retry
        never sends a point twice."""
        waiting = set(self.pending) | set(self.pending_final) | set(self.to_terminate)
        if force:  # params alone wait for the trial's first points (one request fewer)
            waiting |= set(self.pending_params)
        for trial_id in sorted(waiting):
            if trial_id in self.runs and not self._send(trial_id, self.runs[trial_id]):
                return False
        return not (self.pending or self.pending_params or self.pending_final or self.to_terminate)

    def _send(self, trial_id: str, run_id: str) -> bool:
        points = self.pending.get(trial_id, [])
        params = self.pending_params.get(trial_id, [])
        final = self.pending_final.get(trial_id)
        fmetrics, ftags = self._final_parts(*final) if final else ([], [])
        while points or params or final:
            room = MAX_BATCH - len(fmetrics)
            last = len(points) <= room and len(params) <= MAX_PARAMS
            metrics = points + fmetrics if last else points[:MAX_BATCH]
            chunk_params = params[:MAX_PARAMS]
            tags = ftags if last else []
            if not self._try(
                self.client.log_batch, run_id, metrics=metrics, params=chunk_params, tags=tags
            ):
                return False
            del params[: len(chunk_params)]
            if last:
                points.clear()
                if final:
                    self.to_terminate[trial_id] = final[0]
                    del self.pending_final[trial_id]
                    final = None
            else:
                del points[:MAX_BATCH]
        self.pending.pop(trial_id, None)
        self.pending_params.pop(trial_id, None)
        status = self.to_terminate.get(trial_id)
        if status is not None:
            end = "FAILED" if status == Status.ERRORED else "FINISHED"
            if not self._try(self.client.set_terminated, run_id, end):
                return False
            del self.to_terminate[trial_id]
        return True

    def finish(
        self, trial_id: str, status: str, last: dict[str, Any] | None, error: str | None = None
    ) -> None:
        self.pending_final[trial_id] = (status, last, error)
        self.flush()

    @staticmethod
    def _final_parts(
        status: str, last: dict[str, Any] | None, error: str | None
    ) -> tuple[list[Metric], list[RunTag]]:
        metrics, tags = [], [RunTag(STATUS_TAG, status)]
        now = int(time.time() * 1000)
        step = int((last or {}).get("step", 0))
        if last and last.get("steps_to_target") is not None:
            metrics.append(Metric("steps_to_target", float(last["steps_to_target"]), now, step))
        if last and last.get("objective") is not None:
            metrics.append(Metric("objective", float(last["objective"]), now, step))
        if error:
            tags.append(RunTag(ERROR_TAG, error[-4900:]))
        return metrics, tags

    def _finish(
        self, trial_id: str, status: str, last: dict[str, Any] | None, error: str | None
    ) -> bool:
        """Write a trial's final metrics, status tag and run status now (reconcile)."""
        run_id = self.runs[trial_id]
        metrics, tags = self._final_parts(status, last, error)

        def write() -> None:
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
            self.client.set_terminated(run_id, "FAILED" if status == Status.ERRORED else "FINISHED")

        return self._try(write)


class MlflowCallback(Callback):
    """Tune callback on the driver: feeds :class:`Tracker` from trial events."""

    def __init__(self, tracker: Tracker, objective_fn=None, flush_every_s: float = 2.0):
        self.tracker = tracker
        self.objective_fn = objective_fn  # (trial_id, last result) -> objective value
        self.flush_every_s = flush_every_s
        self._last_flush = 0.0
        self.last: dict[str, dict[str, Any]] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.tracker.ensure_child(trial.trial_id, str(trial), trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result
        self.tracker.ensure_child(trial.trial_id, str(trial), trial.config)
        self.tracker.add_result(trial.trial_id, result)
        if time.time() - self._last_flush > self.flush_every_s:
            self._last_flush = time.time()
            self.tracker.flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = self.last.pop(trial.trial_id, None) or trial.last_result
        status = final_status((last or {}).get("status"))
        if last is not None and self.objective_fn is not None:
            last = dict(last)
            last["objective"] = self.objective_fn(trial.trial_id, last)
        self.tracker.ensure_child(trial.trial_id, str(trial), trial.config)
        self.tracker.finish(trial.trial_id, status, last)

    def on_trial_error(self, iteration, trials, trial, **info):
        last = self.last.pop(trial.trial_id, None) or trial.last_result
        err = None
        if trial.error_file and Path(trial.error_file).exists():
            err = Path(trial.error_file).read_text()
        self.tracker.ensure_child(trial.trial_id, str(trial), trial.config)
        self.tracker.finish(trial.trial_id, Status.ERRORED, last, err or "error")

    def on_experiment_end(self, trials, **info):
        self.tracker.failures = 0
        self.tracker.flush(force=True)


# ---- replay from Tune's durable records -----------------------------------------------------
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


def logged_steps(client: MlflowClient, run_id: str, key: str = "train_loss") -> set[int]:
    """Steps MLflow holds for a run (every report logs `train_loss`, so one key tells)."""
    return {m.step for m in client.get_metric_history(run_id, key)}


def last_logged_step(client: MlflowClient, run_id: str, key: str = "train_loss") -> int:
    return max(logged_steps(client, run_id, key), default=-1)


def reconcile(
    tracker: Tracker, run_dir: Path, statuses: dict[str, tuple[str, str | None]]
) -> dict[str, int]:
    """Make MLflow hold every report Tune recorded, once. ``statuses``: trial id -> (final
    status, error text) for finished trials. Returns counts of runs created and points sent."""
    created = sent = 0
    for trial_dir in sorted(
        p for p in run_dir.iterdir() if p.is_dir() and (p / "result.json").exists()
    ):
        rows = read_results(trial_dir)
        if not rows:
            continue
        trial_id = rows[-1].get("trial_id")
        config = rows[-1].get("config", {})
        had = trial_id in tracker.runs or tracker.find_child(trial_id) is not None
        run_id = tracker.ensure_child(
            trial_id, trial_dir.name.split("_")[0] + "_" + trial_id, config
        )
        if run_id is None:
            raise ConnectionError(
                f"MLflow at {tracker.uri} is unreachable; run `critbatch sync` when it is back"
            )
        created += not had
        # Send every recorded step MLflow lacks, not just those past its last one: a killed
        # driver can die with steps 20-30 buffered while a resumed trial has logged 40-60.
        logged = logged_steps(tracker.client, run_id)
        points = []
        now = int(time.time() * 1000)
        for r in rows:  # result.json may repeat steps after a restore: send each step once
            step = int(r.get("step", 0))
            if step not in logged:
                points.extend(metric_points(r, now))
                logged.add(step)
        for i in range(0, len(points), MAX_BATCH):
            tracker.client.log_batch(run_id, metrics=points[i : i + MAX_BATCH])
        sent += len(points)
        params = tracker.pending_params.get(trial_id, [])
        queued = {p.key for p in params}  # and what the trial ran on, as its first report said
        params += [
            Param(k, str(rows[0][k])) for k in DEVICE_PARAMS if k in rows[0] and k not in queued
        ]
        for i in range(0, len(params), MAX_PARAMS):  # params that waited for points never sent
            tracker.client.log_batch(run_id, params=params[i : i + MAX_PARAMS])
        tracker.pending_params.pop(trial_id, None)
        if trial_id in statuses:
            status, err = statuses[trial_id]
            run = tracker.client.get_run(run_id)
            if run.data.tags.get(STATUS_TAG) != status or run.info.status == "RUNNING":
                tracker._finish(trial_id, status, rows[-1], err)
    return {"runs_created": created, "points_sent": sent}
