"""Two real sweeps of one workload (tuned and BLR, engine on local Ray, MLflow on SQLite):
what the parent runs carry, and `critbatch compare` on them, good input and bad."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from mlflow.tracking import MlflowClient

from analysis.compare import parent_run_metrics, sweep_numbers
from analysis.loaders import load_mlflow
from trainables.api import Target
from tune_jobs.cli import main

pytestmark = pytest.mark.slow  # two real sweeps: about 6 min on 2 shared cores
EXPERIMENT = "cmp-synthetic"


@dataclass
class Sweeps:
    uri: str
    tuned: object  # SweepResult
    blr: object
    root: object


def job(root, name: str, **over):
    from tune_jobs.job_file import parse_job

    d = {
        "name": name, "workload": "synthetic", "batch_sizes": [8, 32, 128],
        "lr_search": {"min": 0.003, "max": 1.0, "trials_per_batch_size": 3, "confirm_seeds": 0, "seed": 0},
        "target": {"metric": "eval_loss", "value": 0.3, "direction": "min"},
        "budget": {"max_steps": 300}, "eval_every": 10, "storage": str(root / "runs"),
        "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": EXPERIMENT},
    }  # fmt: skip
    d.update(over)
    return parse_job(d)


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory) -> Sweeps:
    from tune_jobs.sweep import run_sweep

    root = tmp_path_factory.mktemp("compare")
    tuned = run_sweep(job(root, "cmp-tuned"), num_cpus=2, progress=False)
    blr = run_sweep(
        job(root, "cmp-blr", strategy={"name": "blr", "base_batch_size": 8, "base_lr": 0.05},
            target={"metric": "eval_loss", "value": 0.32, "direction": "min"}),
        num_cpus=2, progress=False,
    )  # fmt: skip
    return Sweeps(f"sqlite:///{root / 'mlflow.db'}", tuned, blr, root)


def test_parent_runs_carry_the_analysis_numbers_and_the_ui_needs(two_sweeps):
    s = two_sweeps
    client = MlflowClient(s.uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    for result in (s.tuned, s.blr):
        parent = client.get_run(result.parent_run_id)
        p = parent.data.params
        target = Target(p["target_metric"], float(p["target_value"]), p["target_direction"],
                        "sweep target")  # fmt: skip
        # The analysis's own numbers, from what MLflow holds, with analyze's defaults.
        own = parent_run_metrics(sweep_numbers(load_mlflow(result.parent_run_id, s.uri), target))
        logged = parent.data.metrics
        assert set(own) == set(logged), (sorted(own), sorted(logged))
        for k, v in own.items():
            assert logged[k] == pytest.approx(v, rel=1e-9), k
        assert {"b_crit", "b_crit_ci_low", "b_crit_ci_high", "cbs", "s_min", "e_min", "trials",
                "device_hours", "recommended_batch_size"} <= set(logged)  # fmt: skip
        note = parent.data.tags["mlflow.note.content"]
        assert note.startswith(f"**B = {int(logged['recommended_batch_size'])}: target in")
        assert "B_crit = " in note
        kids = client.search_runs(
            [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'"
        )
        for k in kids:
            kp = k.data.params
            assert k.info.run_name == f"bs={kp['batch_size']} lr={float(kp['lr']):.3g} seed=0"
            assert float(kp["cpus"]) == 1.0 and float(kp["gpus"]) == 0.0
            assert kp["device_name"].startswith("CPU: ")
            assert "gpus" not in k.data.metrics  # per trial: a param, not a metric per step
            assert k.data.metrics["train_time"] <= k.data.metrics["wall_time"]


def common_target(s: Sweeps) -> float:
    """An eval_loss every batch size of both sweeps reached (2% above the worst best)."""
    worst = max(
        float(load_mlflow(r.parent_run_id, s.uri).groupby("batch_size")["eval_loss"].min().max())
        for r in (s.tuned, s.blr)
    )
    return worst * 1.02


def test_compare_two_real_sweeps_table_figures_page_in_mlflow(two_sweeps, capsys):
    s = two_sweeps
    out = s.root / "cmp-out"
    value = common_target(s)
    code = main(["compare", "cmp-tuned", "cmp-blr", "--tracking-uri", s.uri, "--out", str(out),
                 "--target-metric", "eval_loss", "--target-value", repr(value),
                 "--bootstrap", "200", "--price-per-device-hour", "0.05"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    assert text.startswith("cmp-tuned: B = ") and "\ncmp-blr: B = " in text
    table = (out / "compare.csv").read_text()
    assert table.count("\n") == 3 and "cmp-tuned,tuned," in table and "cmp-blr,blr," in table
    for name in ("compare_steps", "compare_time", "compare_pareto"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000
    page = (out / "compare.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "cost at recommended" in page
    client = MlflowClient(s.uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    [run] = client.search_runs([exp.experiment_id], "tags.`critbatch.role` = 'comparison'")
    assert run.info.run_name == "compare: cmp-tuned vs cmp-blr"
    files = [a.path for a in client.list_artifacts(run.info.run_id, "compare")]
    assert "compare/compare.html" in files and "compare/compare.csv" in files
    # The whole experiment names both sweeps (and only the sweeps, not the comparison run).
    assert main(["compare", EXPERIMENT, "--tracking-uri", s.uri, "--out", str(out / "exp"),
                 "--target-metric", "eval_loss", "--target-value", repr(value),
                 "--bootstrap", "0", "--no-log-artifacts"]) == 0  # fmt: skip
    assert (out / "exp" / "compare.csv").read_text().count("\n") == 3


def test_compare_bad_input_is_an_error_naming_the_fix(two_sweeps, capsys):
    s = two_sweeps
    base = ["--tracking-uri", s.uri, "--no-log-artifacts", "--bootstrap", "0"]
    assert main(["compare", "cmp-tuned", "no-such-sweep", *base]) == 2
    err = capsys.readouterr().err
    assert "no-such-sweep" in err and "Experiments there" in err
    # Different targets (eval_loss 0.3 and 0.32): an error stating both, unless allowed.
    out = s.root / "bad"
    assert main(["compare", "cmp-tuned", "cmp-blr", "--out", str(out), *base]) == 2
    err = capsys.readouterr().err
    assert "different targets" in err and "eval_loss <= 0.3 " in err and "eval_loss <= 0.32 " in err
    assert "--allow-different-targets" in err and not out.exists()
    code = main(["compare", "cmp-tuned", "cmp-blr", "--out", str(out),
                 "--allow-different-targets", *base])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = (out / "compare.csv").read_text()
    assert "eval_loss <= 0.3 (sweep target)" in rows and "eval_loss <= 0.32 (sweep target)" in rows
    assert main(["compare", "cmp-tuned", *base]) == 2
    assert "at least 2 sweeps" in capsys.readouterr().err
    assert main(["compare", "cmp-tuned", "cmp-blr", "--target-metric", "eval_loss", *base]) == 2
    assert "--target-value together" in capsys.readouterr().err
    assert main(["compare", "cmp-tuned", "cmp-blr", "--max-slowdown", "-1", *base]) == 2
    assert "--max-slowdown" in capsys.readouterr().err
    csv = s.root / "tp.csv"
    csv.write_text("batch_size,steps_per_second\n8,100\n32,90\n")
    assert main(["compare", "cmp-tuned", "cmp-blr", "--throughput", str(csv),
                 "--allow-different-targets", *base]) == 2  # fmt: skip
    assert "no row for batch size 128" in capsys.readouterr().err
