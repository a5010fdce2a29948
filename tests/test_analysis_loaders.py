"""analysis.loaders on real stores: SQLite, a real `mlflow server`, a real Ray Tune run folder."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import MlflowServer
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

import analysis.load_mlflow as mlflow_loader
from analysis.loaders import (
    SweepNotFoundError,
    fetch_histories,
    find_parent_run,
    find_trial_runs,
    load,
    load_steps_csv,
)
from benchmarks.load_mlflow import log_sweep
from tune_jobs.publish import log_report_artifacts

NAN = math.nan
TYPES = {"trial": str, "batch_size": int, "lr": float, "strategy": str, "seed": int}
TYPES |= {"step": int, "examples": int, "status": str}


def _log_known_sweep(client: MlflowClient, name: str) -> tuple[str, pd.DataFrame]:
    """Three trials with known values in the documented layout; the frame load() must return.

    Trial t-a reaches the target (``steps_to_target`` logged at its last step) and logs
    ``eval_loss`` twice at step 20, as a resumed trial does: the later point wins. Trial t-b
    diverges (NaN loss). The per-step ``lr`` metric is a warm-up, unlike the trial's peak LR.
    """
    exp = client.create_experiment(name)
    parent = client.create_run(exp, tags={"critbatch.role": "sweep"}).info.run_id
    specs = [
        ("t-a", 8, 0.1, "reached"),
        ("t-b", 64, 0.4, "diverged"),
        ("t-c", 512, 1.6, "not_reached"),
    ]
    rows = []
    for i, (tid, bs, lr, status) in enumerate(specs):
        tags = {"mlflow.parentRunId": parent, "critbatch.role": "trial", "critbatch.trial_id": tid}
        run = client.create_run(exp, tags=tags | {"critbatch.status": status}).info.run_id
        params = {"batch_size": bs, "lr": lr, "seed": i, "strategy": "tuned", "workload": "toy"}
        client.log_batch(run, params=[Param(k, str(v)) for k, v in params.items()])
        points = []
        for step in (10, 20, 30):
            vals = {"train_loss": 1 / 3 + step / 7 + i, "eval_loss": math.pi / step + i,
                    "lr": lr * step / 30, "examples": step * bs, "epoch": step * bs / 1e3}  # fmt: skip
            if status == "diverged" and step == 30:
                vals["train_loss"] = NAN
            points += [Metric(k, float(v), 1000 + step, step) for k, v in vals.items()]
            row = {"trial": tid, "batch_size": bs, "lr": lr, "strategy": "tuned", "seed": i,
                   "step": step, "examples": step * bs, "status": status, "epoch": vals["epoch"],
                   "eval_loss": vals["eval_loss"], "lr_at_step": vals["lr"],
                   "steps_to_target": NAN, "train_loss": vals["train_loss"]}  # fmt: skip
            rows.append(row)
        client.log_batch(run, metrics=points)
        if status == "reached":
            client.log_batch(run, metrics=[Metric("steps_to_target", 25.0, 2000, 30)])
            rows[-1]["steps_to_target"] = 25.0
            client.log_metric(run, "eval_loss", 0.125, timestamp=5000, step=20)  # resumed
            rows[-2]["eval_loss"] = 0.125
        client.set_terminated(run)
    expected = pd.DataFrame(rows).astype(TYPES)
    return parent, expected


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real `mlflow server` for this module (its start costs minutes on 2 busy cores);
    each test writes its own experiment. The GenAI job runner (8 extra processes) is off."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        srv = MlflowServer(tmp_path_factory.mktemp("loaders-server")).start(timeout=300)
    yield srv
    srv.stop()


@pytest.fixture(params=["sqlite", "server"])
def store_uri(request) -> str:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_uri")
    return request.getfixturevalue("server").uri


@pytest.mark.slow
def test_mlflow_round_trip_is_exact(store_uri):
    parent, expected = _log_known_sweep(MlflowClient(store_uri), "round-trip")
    by_name = load("round-trip", store_uri)
    pd.testing.assert_frame_equal(by_name, expected, check_exact=True)
    pd.testing.assert_frame_equal(load(parent, store_uri), expected, check_exact=True)
    per_metric = load("round-trip", store_uri, fetch="per-metric")
    pd.testing.assert_frame_equal(per_metric, expected, check_exact=True)


@pytest.mark.slow
def test_tracking_uri_from_environment(sqlite_uri, monkeypatch, tmp_path):
    _, expected = _log_known_sweep(MlflowClient(sqlite_uri), "known")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    pd.testing.assert_frame_equal(load("known"), expected, check_exact=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # no mlflow.db here: the default store is absent
    with pytest.raises(SweepNotFoundError, match=r"no MLflow store at sqlite:///mlflow\.db"):
        load("known")
    assert not Path("mlflow.db").exists()  # and loading did not create an empty one


@pytest.mark.slow
def test_clear_errors_for_missing_sweeps(sqlite_uri):
    client = MlflowClient(sqlite_uri)
    _log_known_sweep(client, "known")
    with pytest.raises(SweepNotFoundError, match=r"no MLflow experiment or run 'nope'.*'known'"):
        load("nope", sqlite_uri)
    client.create_experiment("empty")
    with pytest.raises(
        SweepNotFoundError, match=r"'empty'.*no sweep run \(tag critbatch.role=sweep\)"
    ):
        load("empty", sqlite_uri)
    exp = client.get_experiment_by_name("empty").experiment_id
    lonely = client.create_run(exp, tags={"critbatch.role": "sweep"}).info.run_id
    with pytest.raises(SweepNotFoundError, match=f"{lonely}.*no trial runs"):
        load(lonely, sqlite_uri)


@pytest.mark.slow
def test_latest_of_several_sweeps_with_a_warning(sqlite_uri):
    client = MlflowClient(sqlite_uri)
    first, expected = _log_known_sweep(client, "known")
    exp = client.get_experiment_by_name("known").experiment_id
    second = client.create_run(exp, tags={"critbatch.role": "sweep"}).info.run_id
    child = client.create_run(exp, tags={"mlflow.parentRunId": second, "critbatch.role": "trial"})
    client.log_batch(child.info.run_id, params=[Param("batch_size", "4"), Param("lr", "0.5")])
    client.log_metric(child.info.run_id, "train_loss", 2.0, step=10)
    with pytest.warns(UserWarning, match=f"2 sweeps; loading the latest, {second}.*{first}"):
        latest = load("known", sqlite_uri)
    assert latest["batch_size"].tolist() == [4] and latest["status"].tolist() == ["running"]
    pd.testing.assert_frame_equal(load(first, sqlite_uri), expected, check_exact=True)


@pytest.mark.slow
@pytest.mark.parametrize("limit", [45, 7])  # 45: cut-offs mid-chunk; 7: every run exceeds it
def test_server_bulk_fetch_equals_naive_loop(server, monkeypatch, limit):
    client = MlflowClient(server.uri)
    name = f"bulk-{limit}"
    log_sweep(client, name, trials=12, points=30, workers=2)
    runs = find_trial_runs(client, find_parent_run(name, server.uri))
    key = ["run_id", "key", "step", "timestamp"]

    def fetched(how: str) -> pd.DataFrame:
        return fetch_histories(client, runs, how).sort_values(key).reset_index(drop=True)

    naive = fetched("per-metric")
    assert naive["run_id"].nunique() == 12 and len(naive) > 2000
    assert naive["value"].isna().sum() == 4  # the last train_loss of the 4 diverged trials
    pd.testing.assert_frame_equal(fetched("rest-bulk"), naive, check_exact=True)
    # The server caps a bulk request's points; a smaller cap exercises the re-request path
    # (and, below one run's length, the per-run fallback) against the same real server.
    monkeypatch.setattr(mlflow_loader, "BULK_MAX_POINTS", limit)
    pd.testing.assert_frame_equal(fetched("rest-bulk"), naive, check_exact=True)
    sql = MlflowClient(f"sqlite:///{server.root / 'server.db'}")
    sql_runs = [sql.get_run(r.info.run_id) for r in runs]
    sql_rows = fetch_histories(sql, sql_runs, "sql").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(sql_rows, naive, check_exact=True)


def test_log_report_artifacts_on_the_parent_run(server, tmp_path):
    parent, _ = _log_known_sweep(MlflowClient(server.uri), "report")
    (tmp_path / "report.html").write_text("<html>cbs</html>")
    (tmp_path / "fit.png").write_bytes(b"\x89PNG\r\n")
    files = [tmp_path / "report.html", tmp_path / "fit.png"]
    assert log_report_artifacts("report", files, server.uri) == parent
    listed = MlflowClient(server.uri).list_artifacts(parent, "report")
    assert sorted(Path(f.path).name for f in listed) == ["fit.png", "report.html"]
    assert log_report_artifacts(str(tmp_path), files, server.uri) is None  # a folder
    with pytest.raises(FileNotFoundError, match="missing.png"):
        log_report_artifacts("report", [tmp_path / "missing.png"], server.uri)


# ---------------------------------------------------------------- Ray Tune run folder
@pytest.fixture(scope="module")
def ray_started():
    """A local Ray (2 CPUs), started the engine's way: it retries Ray's 15 s raylet start-up
    limit, which a busy 2-core machine misses (conftest's `ray_local` does not retry)."""
    from tune_jobs.sweep import init_ray

    init_ray(num_cpus=2)


@pytest.mark.slow
def test_ray_folder_from_a_real_tune_run(ray_started, tmp_path):
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    # Defined here so that Ray pickles it by value: its workers cannot import test modules.
    def _toy_trainable(config: dict) -> None:
        """Reports like a critbatch trainable: bs 8 reaches the target at step 30, bs 32 runs
        until Tune's stop rule ends it (still `running`), bs 64 raises after step 20."""
        from ray import tune

        bs = config["batch_size"]
        for step in range(10, 101, 10):
            reached = bs == 8 and step == 30
            tune.report({"step": step, "examples": step * bs, "lr": config["lr"] * step / 100,
                         "train_loss": 1 / step + bs, "status": "reached" if reached else "running"})  # fmt: skip
            if reached:
                return
            if bs == 64 and step == 20:
                raise RuntimeError("boom")

    space = {"batch_size": tune.grid_search([8, 32, 64]), "lr": 0.5, "seed": 3,
             "strategy": "tuned", "workload": "toy"}  # fmt: skip
    # result.json comes from Tune's JSON logger, named explicitly as the engine does (importing
    # tune_jobs.sweep switches Tune's automatic loggers off).
    run_config = tune.RunConfig(name="mini", storage_path=str(tmp_path), stop={"step": 50},
                                callbacks=[JsonLoggerCallback()], verbose=0)  # fmt: skip
    tune.Tuner(_toy_trainable, param_space=space, run_config=run_config).fit()
    df = load(tmp_path / "mini")
    # Tune names each trial folder <trainable>_<trial id>_<n>_<params>_<date>.
    folder = {bs: next(p.parent.name for p in (tmp_path / "mini").rglob("result.json")
                       if re.search(rf"batch_size={bs}(?!\d)", p.parent.name)) for bs in (8, 32, 64)}  # fmt: skip
    trial_of = {bs: df.loc[df["batch_size"] == bs, "trial"].iloc[0] for bs in folder}
    assert all(f"_{trial_of[bs]}_" in folder[bs] for bs in folder), (trial_of, folder)
    last = {8: 30, 32: 50, 64: 20}
    status = {8: "reached", 32: "stopped_early", 64: "errored"}
    rows = [
        {
            "trial": trial_of[bs],
            "batch_size": bs,
            "lr": 0.5,
            "strategy": "tuned",
            "seed": 3,
            "step": s,
            "examples": s * bs,
            "status": status[bs],
            "lr_at_step": 0.5 * s / 100,
            "train_loss": 1 / s + bs,
        }  # fmt: skip
        for bs in (8, 32, 64)
        for s in range(10, last[bs] + 1, 10)
    ]
    expected = pd.DataFrame(rows).astype(TYPES)
    pd.testing.assert_frame_equal(df, expected, check_exact=True)


def test_ray_folder_errors(tmp_path):
    with pytest.raises(SweepNotFoundError, match=r"no trial results \(\*/result.json\)"):
        load(tmp_path)
    csv = tmp_path / "steps.csv"
    csv.write_text("batch_size,steps\n8,100\n")
    with pytest.raises(SweepNotFoundError, match="load_steps_csv"):
        load(csv)


# ---------------------------------------------------------------- steps CSV
def test_steps_csv(tmp_path):
    p = tmp_path / "steps.csv"
    p.write_text("batch_size, steps,seed\n8,1200,0\n16,640,0\n8,1100,1\n")
    got = load_steps_csv(p)
    want = pd.DataFrame({"batch_size": [8, 16, 8], "steps": [1200, 640, 1100], "seed": [0, 0, 1]})
    pd.testing.assert_frame_equal(got, want)
    p.write_text("batch_size,steps\n8,1200\n")
    assert load_steps_csv(p).columns.tolist() == ["batch_size", "steps"]


@pytest.mark.parametrize(
    "text, error",
    [
        (
            "batch,steps\n8,10\n",
            r"missing column\(s\) \['batch_size'\]; found \['batch', 'steps'\]",
        ),
        ("batch_size,steps\n", "no rows"),
        ("batch_size,steps\n8,10\n16,0\n", r"row 3: steps=0 is not a positive integer"),
        ("batch_size,steps\n-8,10\n", r"row 2: batch_size=-8 is not a positive integer"),
        ("batch_size,steps\n8,abc\n", r"row 2: steps=abc is not a positive integer"),
        ("batch_size,steps\n8,10.5\n", r"row 2: steps=10.5 is not a positive integer"),
        ("batch_size,steps,seed\n8,10,-1\n", r"row 2: seed=-1 is not a non-negative integer"),
    ],
)
def test_steps_csv_errors(tmp_path, text, error):
    p = tmp_path / "steps.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=error):
        load_steps_csv(p)
    with pytest.raises(FileNotFoundError, match="no steps CSV"):
        load_steps_csv(tmp_path / "absent.csv")
