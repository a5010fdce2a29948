"""The private Ray and MLflow APIs critbatch uses, pinned: an upgrade that changes them fails
here, not on a cluster. Each test also exercises the adapter for real."""

from __future__ import annotations

import inspect

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
