"""`log_noise_scale: true` end to end: a real sweep (local Ray, MLflow SQLite) of `nqm_sgd`, the
B_simple metric in every trial's MLflow history, then `critbatch analyze` on the experiment:
the printed headline, summary.json and report.html show B_simple beside B_crit.

nqm_sgd also logs the same EMA of the closed-form B_simple at its iterates
(`noise_scale_bsimple_true`), so the value the analysis reads at the target is compared with
the truth at the same point. The estimator itself is checked to 10% in test_noise_scale.py;
here single runs at B < B_simple scatter by tens of percent (docs/nqm.md), hence a factor 1.5.
"""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from analysis import loaders
from analysis.noise_scale import BSIMPLE, bsimple_at_target
from analysis.steps import Target, best_per_batch_size, steps_to_target
from tune_jobs.cli import main
from tune_jobs.job_file import parse_job
from tune_jobs.sweep import run_sweep

TARGET = 0.05  # eval_loss; the start is 2.59 for dim 100


@pytest.mark.slow
def test_sweep_logs_bsimple_and_the_report_shows_it(ray_local, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = parse_job(
        {
            "name": "bsimple-e2e",
            "workload": "nqm_sgd",
            "batch_sizes": [16, 64, 256, 1024],
            # one trial per batch size at LR 0.5 (expected steps 313, 168, 154, 152)
            "strategy": {"name": "blr", "base_lr": 0.5, "base_batch_size": 16},
            "lr_search": {"confirm_seeds": 0},  # the four trials themselves, no repeats
            "target": {"metric": "eval_loss", "value": TARGET, "direction": "min"},
            "budget": {"max_steps": 1000},
            "eval_every": 5,
            "options": {"dim": 100},
            "log_noise_scale": True,
            "tracking": {"uri": uri, "experiment": "bsimple-e2e"},
            "storage": str(tmp_path / "runs"),
        }
    )
    res = run_sweep(job, progress=False)
    assert [t["status"] for t in res.trials] == ["reached"] * 4

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bsimple-e2e")
    kids = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("critbatch.role") == "trial"
    ]
    assert len(kids) == 4
    for k in kids:
        history = client.get_metric_history(k.info.run_id, BSIMPLE)
        assert len(history) >= 10 and all(m.value > 0 for m in history), k.data.params

    out = tmp_path / "report"
    args = ["analyze", "bsimple-e2e", "--tracking-uri", uri, "--out", str(out),
            "--target-metric", "eval_loss", "--target-value", str(TARGET), "--bootstrap", "50"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "B_crit = " in printed and "B_simple at target = " in printed, printed

    js = json.loads((out / "summary.json").read_text())
    b = js["b_simple"]
    assert b["n_batch_sizes"] == 4 and b["min"] <= b["median"] <= b["max"]
    assert b["b_crit"] == pytest.approx(js["b_crit"])
    assert f"B_simple at target = {b['median']:.3g}" in js["headline"]
    page = (out / "report.html").read_text()
    assert "<h3>Gradient noise scale</h3>" in page and "noise_scale.png" not in page  # embedded
    assert (out / "figures" / "noise_scale.png").exists()

    # the analysis reads B_simple where the closed form says it should be
    df = loaders.load("bsimple-e2e", uri)
    best = best_per_batch_size(steps_to_target(df, Target("eval_loss", TARGET)))
    est = bsimple_at_target(df, best).set_index("batch_size")["b_simple"]
    truth = bsimple_at_target(df.assign(**{BSIMPLE: df[BSIMPLE + "_true"]}), best)
    for bs, t in truth.set_index("batch_size")["b_simple"].items():
        assert 1 / 1.5 < est[bs] / t < 1.5, (bs, est[bs], t)
    per_b = {r["batch_size"]: r["b_simple"] for r in js["per_batch_size"]}
    assert per_b == pytest.approx(est.to_dict())
