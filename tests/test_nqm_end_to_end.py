"""The whole pipeline finds the right critical batch size where the answer is known.

A real sweep (local Ray, Optuna studies, MLflow SQLite) on the exact noisy quadratic model,
then the analysis fit; compared with `critbatch nqm`'s ground truth (optimal LR over a
continuous range, exact steps). Tolerances from the issue: steps within 5% per batch size,
B_crit within 10%.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from analysis.fits import fit_mccandlish
from analysis.ground_truth import ground_truth
from trainables.nqm_truth import NQM
from tune_jobs.job_file import parse_job
from tune_jobs.summary import per_batch_size
from tune_jobs.sweep import run_sweep

JOB = Path(__file__).resolve().parents[1] / "tune_jobs" / "jobs" / "nqm_small.yaml"


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
    rows = per_batch_size(res.trials)

    o = job.options
    truth = ground_truth(NQM(o["dim"], o["exponent"], o["noise_scale"], o["s0"]), job.batch_sizes, job.target.value)
    for row, b, steps in zip(rows, truth["batch_sizes"], truth["steps"], strict=True):
        assert row.batch_size == b
        assert row.steps_to_target is not None, f"batch size {b} never reached the target"
        assert abs(row.steps_to_target / steps - 1) <= 0.05, (b, row.steps_to_target, steps)

    fit = fit_mccandlish([r.batch_size for r in rows], [r.steps_to_target for r in rows])
    assert abs(fit.b_crit / truth["b_crit"] - 1) <= 0.10, (fit.b_crit, truth["b_crit"])
