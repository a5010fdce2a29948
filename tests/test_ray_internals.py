"""The private Ray and MLflow APIs critbatch uses, pinned: an upgrade that changes them fails
here, not on a cluster. Each test also exercises the adapter for real."""

from __future__ import annotations

import inspect
import json

import mlflow
import pytest
import ray
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import TrialScheduler

from analysis.loaders import MLFLOW_VERSION, tracking_store
from tune_jobs.ray_internals import (
    RAY_VERSION,
    asha_bracket,
    use_auth_token_if_present,
    validate_cluster_config,
)


def test_installed_versions_are_the_ones_the_adapters_were_checked_against():
    assert ray.__version__ == RAY_VERSION, (
        f"Ray {ray.__version__} installed, adapters checked against {RAY_VERSION}: re-check "
        "tune_jobs/ray_internals.py and update RAY_VERSION"
    )
    assert mlflow.__version__ == MLFLOW_VERSION, (
        f"MLflow {mlflow.__version__} installed, tracking_store checked against {MLFLOW_VERSION}"
    )


def test_asha_bracket_signature_and_behaviour():
    from ray.tune.schedulers.async_hyperband import _Bracket

    params = list(inspect.signature(_Bracket.__init__).parameters)
    assert params[:6] == ["self", "min_t", "max_t", "reduction_factor", "s", "stop_last_trials"]
    assert list(inspect.signature(_Bracket.on_result).parameters) == [
        "self", "trial", "cur_iter", "cur_rew"
    ]  # fmt: skip

    class Trial:  # on_result only uses the trial as a key
        def __init__(self, name: str):
            self.trial_id = name

    bracket = asha_bracket(grace=1, max_t=9, reduction_factor=3)
    good, bad = Trial("good"), Trial("bad")
    assert bracket.on_result(good, 1, 10.0) == TrialScheduler.CONTINUE
    # A clearly worse trial at the first rung, after a better one: cut (top 1/3 continue).
    assert bracket.on_result(bad, 1, -10.0) == TrialScheduler.STOP


def test_cluster_config_validation_is_rays_own():
    cfg = validate_cluster_config({
        "cluster_name": "t", "provider": {"type": "local", "head_ip": "10.0.0.1",
                                           "worker_ips": []},
        "auth": {"ssh_user": "u"},
    })  # fmt: skip
    assert cfg["provider"]["type"] == "local" and "available_node_types" in cfg  # defaults filled
    with pytest.raises(Exception) as e:
        validate_cluster_config({"cluster_name": "t", "provider": {"type": "aws"},
                                 "max_workers": "many"})  # fmt: skip
    assert "max_workers" in str(e.value) or "many" in str(e.value)


def test_auth_token_setup_runs_without_a_token(tmp_path, monkeypatch):
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    assert (
        "warn_if_disabled"
        in inspect.signature(maybe_enable_token_auth_if_token_available).parameters
    )
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token here
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    use_auth_token_if_present()  # must not raise when there is nothing to send


def test_mlflow_store_accessor(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    assert isinstance(tracking_store(client), SqlAlchemyStore)


def test_release_finished_trial_leaves_tune_nothing_per_trial_it_does_not_read(ray_local, tmp_path):
    """A real Tuner whose scheduler releases each finished trial as the sweep's does
    (tune_jobs.scheduler.PerBatchSizeScheduler): Tune's per-metric statistics and the
    auto-filled-metrics ObjectRef are gone, also from the experiment snapshot Tune wrote,
    while ``last_result`` (which the callbacks read) is kept."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from tune_jobs.ray_internals import release_finished_trial

    def trainable(config):
        for step in range(1, 6):
            tune.report({"step": step} | {f"m{i}": float(step * i) for i in range(8)})

    seen: dict = {"stats": []}

    class Releasing(FIFOScheduler):
        def on_trial_complete(self, tune_controller, trial, result):
            super().on_trial_complete(tune_controller, trial, result)
            seen["stats"].append(len(trial.run_metadata.metric_analysis))
            release_finished_trial(tune_controller, trial)
            seen["controller"] = tune_controller

    tune.Tuner(
        trainable,
        param_space={"x": tune.grid_search(list(range(6)))},
        tune_config=tune.TuneConfig(scheduler=Releasing(), reuse_actors=True),
        run_config=tune.RunConfig(name="rel", storage_path=str(tmp_path), verbose=0),
    ).fit()
    # Ray keeps statistics of every reported metric per trial: there was something to release
    assert len(seen["stats"]) == 6 and min(seen["stats"]) >= 8
    trials = seen["controller"].get_trials()
    assert len(trials) == 6 and {t.status for t in trials} == {"TERMINATED"}
    for t in trials:
        assert t.run_metadata.metric_analysis == {} and t.run_metadata.metric_n_steps == {}
        assert t.last_result["m7"] == 35.0 and t.last_result["step"] == 5
        assert not isinstance(t._default_result_or_future, ray.ObjectRef)
    (snapshot,) = (tmp_path / "rel").glob("experiment_state-*.json")
    data = json.loads(snapshot.read_text())["trial_data"]
    assert len(data) == 6
    for _, meta in data:
        assert json.loads(meta)["metric_analysis"] == {}


def test_a_cancelled_actor_request_keeps_its_queued_tasks_until_dropped(ray_local):
    """Ray 2.60's actor manager leaks the queued tasks of an actor request cancelled before
    the actor started (Tune does this for nearly every trial with ``reuse_actors``); the
    adapter drops them. Fails when Ray stops leaking (then the workaround can go) or when the
    manager's bookkeeping changes."""
    from ray.air.execution._internal.actor_manager import RayActorManager
    from ray.air.execution.resources import FixedResourceManager
    from ray.air.execution.resources.request import ResourceRequest

    from tune_jobs.ray_internals import drop_cancelled_tasks_of

    @ray.remote
    class Worker:
        def setup(self, config):
            return config

    manager = RayActorManager(FixedResourceManager())
    big = ResourceRequest([{"CPU": 10_000}])  # never granted: the actor stays a request
    actor = manager.add_actor(Worker, kwargs={}, resource_request=big)
    manager.schedule_actor_task(actor, "setup", args=({"payload": "x" * 10_000},))
    assert actor in manager._pending_actors_to_enqueued_actor_tasks  # queued until it starts
    assert manager.remove_actor(actor) is False  # cancelled: it never started
    assert actor in manager._pending_actors_to_enqueued_actor_tasks  # ...and kept: the leak
    assert drop_cancelled_tasks_of(manager) == 1
    assert actor not in manager._pending_actors_to_enqueued_actor_tasks
    live = manager.add_actor(Worker, kwargs={}, resource_request=big)
    manager.schedule_actor_task(live, "setup", args=({},))
    assert drop_cancelled_tasks_of(manager) == 0  # a pending request's tasks are kept
    manager.remove_actor(live)


def test_no_result_frames_skips_only_the_per_trial_dataframes(ray_local, tmp_path):
    """A real Tuner fit inside ``no_result_frames``: its ResultGrid has every trial's last
    metrics and path but no metrics DataFrame (Tune reads none of the result.json files it
    would otherwise load into pandas at a fit's end); outside, Tune's behaviour is back."""
    from ray import tune
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis
    from ray.tune.logger import JsonLoggerCallback

    from tune_jobs.ray_internals import no_result_frames

    def trainable(config):
        for step in range(1, 4):
            tune.report({"step": step, "x": config["x"]})

    def fit(name: str):
        return tune.Tuner(
            trainable,
            param_space={"x": tune.grid_search([1, 2, 3])},
            run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0,
                                      callbacks=[JsonLoggerCallback()]),  # (critbatch turns
        ).fit()  # Tune's default loggers off; this writes each trial's result.json)  # fmt: skip

    fetch = ExperimentAnalysis._fetch_trial_dataframes
    with no_result_frames():
        grid = fit("frameless")
    assert ExperimentAnalysis._fetch_trial_dataframes is fetch
    assert sorted(r.metrics["x"] for r in grid) == [1, 2, 3]
    assert all(r.metrics_dataframe is None and r.metrics["step"] == 3 for r in grid)
    grid = fit("framed")
    assert all(len(r.metrics_dataframe) == 3 for r in grid)


def test_a_trial_answered_noop_waits_in_its_report_until_resumed_or_stopped(ray_local, tmp_path):
    """A real Tuner whose scheduler answers NOOP to two trials' first report, as the parallel
    search's scheduler holds a trial at a report its clock holds back: each waits inside
    ``tune.report`` (no step past it) until a third trial ends; then one goes on
    (:func:`resume_training`, Tune's own CONTINUE) to its end and the other is stopped where it
    waited (Tune's ``stop_trial``)."""
    import time

    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from tune_jobs.ray_internals import resume_training

    def trainable(config):
        for step in range(1, 4):
            if config["x"] == 2:
                time.sleep(1.0)  # the trial the others wait for
            tune.report({"step": step, "at": time.time()})

    held: dict = {}
    ended: dict = {}
    seen: dict = {0: [], 1: [], 2: []}  # x -> (step, when it was reported) of each report

    started = time.time()
    starved: list = []

    class Holding(FIFOScheduler):
        def choose_trial_to_run(self, tune_controller):
            # The held trials wait for the third; should it never start (the shared Ray's
            # CPUs taken), let them go and fail below rather than hang the suite.
            slow = [t for t in tune_controller.get_trials() if t.config["x"] == 2]
            if held and slow and slow[0].status == "PENDING" and time.time() - started > 60:
                starved.append(ray.available_resources())
                for x in list(held):
                    resume_training(tune_controller, held.pop(x))
            return super().choose_trial_to_run(tune_controller)

        def on_trial_result(self, tune_controller, trial, result):
            seen[trial.config["x"]].append((result["step"], result["at"]))
            if trial.config["x"] < 2 and result["step"] == 1 and not ended and not starved:
                held[trial.config["x"]] = trial
                return TrialScheduler.NOOP
            return TrialScheduler.CONTINUE

        def on_trial_complete(self, tune_controller, trial, result):
            super().on_trial_complete(tune_controller, trial, result)
            ended[trial.config["x"]] = (result["step"], time.time())
            if trial.config["x"] == 2 and not starved:
                resume_training(tune_controller, held.pop(0))
                tune_controller.stop_trial(held.pop(1))

    assert list(inspect.signature(
        ray.tune.execution.tune_controller.TuneController._schedule_trial_train
    ).parameters) == ["self", "trial"]  # fmt: skip
    # the shared Ray frees the previous test's placement groups asynchronously
    while ray.available_resources().get("CPU", 0) < 1.5 and time.time() - started < 30:
        time.sleep(0.2)
    tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0.5}),  # all three at once on 2 CPUs
        param_space={"x": tune.grid_search([0, 1, 2])},
        tune_config=tune.TuneConfig(scheduler=Holding(), reuse_actors=True),
        run_config=tune.RunConfig(name="hold", storage_path=str(tmp_path), verbose=0),
    ).fit()
    assert not starved, f"the third trial never started; Ray had free {starved[0]}"
    assert not held and set(ended) == {0, 1, 2}
    assert ended[0][0] == 3  # resumed: ran to its end
    assert ended[1][0] == 1  # stopped where it waited: no step past it
    # the resumed one took its second step only after the slow trial ended
    assert [s for s, _ in seen[0]] == [1, 2, 3] and seen[0][1][1] >= ended[2][1] - 0.05
    assert [s for s, _ in seen[1]] == [1]
