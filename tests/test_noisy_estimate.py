"""B_crit on noisy training: a real sweep of nqm_sgd against the exact answer, one number
everywhere it is printed, EMA analysis of a sweep's own records, and the confirmation runs.

One real sweep (local Ray, Optuna, MLflow SQLite) of sampled SGD on a noisy quadratic model
whose answer is known exactly (`critbatch nqm`: the optimal LR and the exact steps of the
expected loss per batch size). dim 1000 keeps the loss's seed-to-seed scatter moderate.
"""

from __future__ import annotations

import re

import pytest

from analysis.ground_truth import ground_truth
from trainables.nqm_truth import NQM
from tune_jobs.cli import main
from tune_jobs.job_file import parse_job
from tune_jobs.summary import sweep_summary
from tune_jobs.sweep import run_sweep

SIZES = [4, 16, 64, 256]  # exact B_crit ~33: two on each side
TARGET = 0.3


def _job(tmp_path) -> dict:
    return {
        "name": "nqm-noisy",
        "workload": "nqm_sgd",
        "batch_sizes": SIZES,
        "lr_search": {"min": 0.1, "max": 2.0, "trials_per_batch_size": 8, "confirm_seeds": 4},
        "target": {"metric": "eval_loss", "value": TARGET, "direction": "min"},
        "budget": {"max_steps": 4000},
        "eval_every": 10,  # search trials; confirmation runs evaluate every ~2% of S
        "options": {"dim": 1000, "exponent": 1.0, "noise_scale": 1.0, "s0": 1.0},
        "resources": {"cpus": 1},
        "storage": str(tmp_path / "runs"),
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "nqm-noisy"},
    }


@pytest.mark.slow
@pytest.mark.timeout(2400)  # ~2 min alone; a shared 2-core host can take ten times that
def test_noisy_sweep_recovers_exact_b_crit_and_prints_one_number(ray_local, tmp_path, capsys):
    job = parse_job(_job(tmp_path))
    res = run_sweep(job, progress=False)
    confirm = [t for t in res.trials if t["seed"] >= 1_000_000]
    # every study reached: 4 fresh seeds at its chosen LR and 4 at the LR 1.5x below it
    assert len(confirm) == 2 * 4 * len(SIZES)
    for b in SIZES:
        lrs = sorted({t["lr"] for t in confirm if t["batch_size"] == b})
        tried = {t["lr"] for t in res.trials if t["batch_size"] == b and t["seed"] == 0}
        assert len(lrs) == 2 and lrs[1] in tried and lrs[0] == pytest.approx(lrs[1] / 1.5)

    summary, df = sweep_summary(res, job)
    truth = ground_truth(NQM(1000, 1.0, 1.0, 1.0), SIZES, TARGET)
    assert summary.estimator.startswith("crossing of the mean curve of the confirmation runs")
    # issue 11's goal: within 15% of the exact answer on one real sweep (benchmarks/noisy_truth.py
    # measures the bias over repeated sweeps, BENCHMARKS.md)
    error = summary.cbs.b_crit / truth["b_crit"] - 1
    with capsys.disabled():  # the figure, for `pytest -s`
        print(
            f"B_crit {summary.cbs.b_crit:.4g} CI {summary.cbs.b_crit_ci}, exact {truth['b_crit']:.4g}"
        )
    assert abs(error) <= 0.15, (summary.cbs.b_crit, summary.cbs.b_crit_ci, truth["b_crit"])
    assert (df["phase"] == "confirm").sum() > 0

    # `critbatch analyze` on the same sweep, with no target flags (it reads the sweep's own
    # target from the parent run), prints the same B_crit and CI as `run`'s summary
    uri = res.tracking_uri
    out = tmp_path / "report"
    base = ["analyze", res.parent_run_id, "--tracking-uri", uri, "--no-log-artifacts"]
    assert main([*base, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    line = re.search(r"B_crit = \S+ \(95% CI \S+\)", summary.headline()).group(0)
    assert line in printed
    assert "Verdict: B_crit" in printed

    # the sweep's own records carry the smoothed crossing: analyze --ema with the stop rule's
    # beta finds a crossing for every batch size
    assert main([*base, "--out", str(tmp_path / "ema"), "--target-metric", "eval_loss",
                 "--target-value", str(TARGET), "--ema", str(job.target.smoothing)]) == 0  # fmt: skip
    assert "B_crit = " in capsys.readouterr().out
