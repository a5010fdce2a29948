"""The whole pipeline finds the right critical batch size where the answer is known.

A real sweep (local Ray, Optuna studies, MLflow SQLite) on the exact noisy quadratic model,
then the analysis fit; compared with `critbatch nqm`'s ground truth (optimal LR over a
continuous range, exact steps). Tolerances from the issue: steps within 5% per batch size,
B_crit within 10%.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from analysis.ground_truth import ground_truth
from trainables.nqm_truth import NQM
from tune_jobs.job_file import parse_job
from tune_jobs.summary import sweep_summary
from tune_jobs.sweep import run_sweep

JOB = Path(__file__).resolve().parents[1] / "tune_jobs" / "jobs" / "nqm_small.yaml"


@pytest.mark.slow
def test_sweep_recovers_nqm_ground_truth(ray_local, tmp_path):
    d = yaml.safe_load(JOB.read_text())
    d.update(
        name="nqm-e2e",
        batch_sizes=[64, 256, 1024, 4096, 16384],
        storage=str(tmp_path / "runs"),
        tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "nqm-e2e"},
    )
    d["lr_search"]["trials_per_batch_size"] = 10
    job = parse_job(d)
    res = run_sweep(job, progress=False)
    summary, _ = sweep_summary(res, job)  # what `critbatch run` prints
    rows = summary.steps_table()

    o = job.options
    truth = ground_truth(
        NQM(o["dim"], o["exponent"], o["noise_scale"], o["s0"]), job.batch_sizes, job.target.value
    )
    for row, b, steps in zip(rows.itertuples(), truth["batch_sizes"], truth["steps"], strict=True):
        assert row.batch_size == b
        assert row.steps == row.steps, f"batch size {b} never reached the target"
        assert abs(row.steps / steps - 1) <= 0.05, (b, row.steps, steps)

    b_crit = summary.cbs.b_crit
    assert abs(b_crit / truth["b_crit"] - 1) <= 0.10, (b_crit, truth["b_crit"])
