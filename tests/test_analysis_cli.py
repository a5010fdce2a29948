"""`critbatch fit` and `critbatch analyze` end to end through tune_jobs.cli.main."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_analysis_frames import B_CRIT, make_sweep_frame

from tune_jobs.cli import main


def _write_steps_csv(path, rows) -> None:
    path.write_text("batch_size,steps\n" + "".join(f"{b},{s}\n" for b, s in rows))


def test_fit_json_has_the_headline_and_the_cbs_definition(tmp_path, capsys):
    # S = 1000 (1 + 256/B) exactly: B_crit = 256, CBS(20%, B_ref=8) = 1.2*8 + 0.2*256 = 60.8
    csv = tmp_path / "steps.csv"
    _write_steps_csv(
        csv, [(b, round(1000 * (1 + 256 / b))) for b in (8, 16, 32, 64, 128, 256, 512)]
    )
    assert main(["fit", str(csv), "--json", "--bootstrap", "200"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["b_crit"] == pytest.approx(256.0, rel=1e-3)
    assert d["s_min"] == pytest.approx(1000.0, rel=1e-3) and d["e_min"] == pytest.approx(
        256000, rel=1e-3
    )
    assert d["cbs"] == pytest.approx(60.8, rel=1e-3)
    assert d["cbs_overhead"] == 0.2 and d["cbs_reference_batch_size"] == 8
    assert len(d["b_crit_ci"]) == 2 and d["b_crit_ci"][0] <= d["b_crit"] <= d["b_crit_ci"][1]
    assert d["n_boot"] == 200 and "B_ref = 8" in d["cbs_definition"]


def test_fit_options_change_the_cbs_definition(tmp_path, capsys):
    csv = tmp_path / "steps.csv"
    _write_steps_csv(csv, [(b, round(1000 * (1 + 256 / b))) for b in (8, 16, 32, 64, 128)])
    args = ["fit", str(csv), "--json", "--overhead", "0.5", "--reference-batch-size", "16"]
    assert main(args + ["--bootstrap", "0"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["cbs"] == pytest.approx(1.5 * 16 + 0.5 * 256, rel=1e-3)  # = 152
    assert d["cbs_reference_batch_size"] == 16 and d["n_boot"] == 0
    assert main(["fit", str(csv)]) == 0  # the human-readable form
    out = capsys.readouterr().out
    assert "B_crit = 256" in out and "CBS = 60.8" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("batch_size,steps\n8,100\n16,60\n", "at least 3 distinct batch sizes"),
        ("batch,steps\n8,100\n16,60\n32,40\n", "missing column"),
        ("batch_size,steps\n8,100\n16,0\n32,40\n", "steps"),
    ],
)
def test_fit_bad_csv_is_a_usage_error(tmp_path, capsys, content, message):
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    assert main(["fit", str(csv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("critbatch: error:") and message in err


def test_fit_missing_file_is_a_usage_error(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "nope.csv")]) == 2
    assert "no steps CSV" in capsys.readouterr().err


def _write_ray_folder(df, root) -> None:
    """The run-folder layout Ray Tune writes: one folder per trial with result.json lines."""
    for trial, g in df.groupby("trial"):
        (root / trial).mkdir(parents=True)
        first = g.iloc[0]
        config = {"batch_size": int(first["batch_size"]), "lr": float(first["lr"]),
                  "seed": int(first["seed"]), "strategy": first["strategy"]}  # fmt: skip
        lines = [
            json.dumps(
                {
                    "step": int(r.step),
                    "examples": int(r.examples),
                    "train_loss": r.train_loss,
                    "eval_accuracy": r.eval_accuracy,
                    "status": r.status,
                    "trial_id": trial,
                    "config": config,
                }
            )  # fmt: skip
            for r in g.sort_values("step").itertuples()
        ]
        (root / trial / "result.json").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_analyze_a_run_folder_end_to_end(tmp_path, capsys):
    sweep = make_sweep_frame([8, 32, 128, 512], lr_multipliers=(0.5, 1.0), eval_every=20)
    run_dir = tmp_path / "critbatch_runs" / "synthetic"
    _write_ray_folder(sweep, run_dir)
    out = tmp_path / "report"
    rc = main(["analyze", str(run_dir), "--out", str(out), "--target-metric", "train_loss",
               "--target-value", "1.0", "--bootstrap", "100"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "B_crit = " in printed and "CBS = " in printed and "train_loss <= 1" in printed
    d = json.loads((out / "summary.json").read_text())
    # noise-free curves, exact crossings: the fit recovers the constructed B_crit
    assert d["b_crit"] == pytest.approx(B_CRIT, rel=1e-3)
    assert (out / "report.html").stat().st_size > 50_000 and (out / "summary.csv").exists()
    assert np.isfinite(d["b_crit_ci"]).all()


def test_analyze_usage_errors(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing_folder_or_experiment")]) == 2
    assert "cannot load" in capsys.readouterr().err
    run_dir = tmp_path / "run"
    _write_ray_folder(make_sweep_frame([8, 32, 128], lr_multipliers=(1.0,)), run_dir)
    assert main(["analyze", str(run_dir), "--target-value", "1.0"]) == 2
    assert "--target-metric" in capsys.readouterr().err
    assert main(["analyze", str(run_dir), "--paper-threshold", "--target-value", "1"]) == 2
    assert "not both" in capsys.readouterr().err
    rc = main(["analyze", str(run_dir), "--target-metric", "no_such_metric", "--target-value", "1"])
    assert rc == 2 and "no_such_metric" in capsys.readouterr().err


@pytest.mark.slow  # MLflow import and SQLite migrations: ~2 min on 2 busy cores
def test_analyze_an_mlflow_sweep_logs_the_report_on_the_parent_run(sqlite_uri, tmp_path, capsys):
    """A real SQLite MLflow store in the documented layout: parent run + one child per trial."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sqlite_uri)
    exp = client.create_experiment("cli-sweep", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={"critbatch.role": "sweep"}).info.run_id
    sweep = make_sweep_frame([8, 64, 512], lr_multipliers=(1.0,), eval_every=100)
    for trial, g in sweep.groupby("trial"):
        first = g.iloc[0]
        tags = {"mlflow.parentRunId": parent, "critbatch.role": "trial",
                "critbatch.trial_id": trial, "critbatch.status": "reached"}  # fmt: skip
        run = client.create_run(exp, tags=tags).info.run_id
        params = {"batch_size": int(first["batch_size"]), "lr": float(first["lr"]),
                  "strategy": "tuned", "seed": 0}  # fmt: skip
        metrics = [Metric(k, float(r[k]), 0, int(r["step"])) for _, r in g.iterrows()
                   for k in ("train_loss", "eval_accuracy")]  # fmt: skip
        client.log_batch(run, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        client.set_terminated(run)
    out = tmp_path / "report"
    args = ["analyze", "cli-sweep", "--tracking-uri", sqlite_uri, "--out", str(out),
            "--target-metric", "train_loss", "--target-value", "1.0", "--bootstrap", "50"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"parent run {parent}" in printed and "B_crit = 128" in printed
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.html", "report/summary.csv", "report/summary.json"} <= logged
    figures = {a.path for a in client.list_artifacts(parent, "report/figures")}
    assert "report/figures/steps_fit.png" in figures and "report/figures/steps_fit.svg" in figures
