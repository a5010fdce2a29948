"""Ground truth of the NQM: the optimal LR search, the B_crit fit, and `critbatch nqm`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from analysis.ground_truth import ground_truth
from trainables.nqm_truth import NQM, SGDPath, optimal_lr, steps_to_target
from tune_jobs.cli import main

REFERENCE = NQM()  # dim 10^4, h_i = 1/i, c_i = h_i, s0 = 1


@pytest.mark.parametrize("batch_size", [4, 512, 2**21])
def test_optimal_lr_within_half_percent_of_a_dense_scan(batch_size):
    """The continuous-LR optimum's exact integer steps are no more than 0.5% above the best
    of a dense scan: 80 log-spaced LRs over the whole stable range, then 160 over the two grid
    cells around the scan's best (relative LR spacing 0.25%), where the integer steps change by
    less than 0.5% from one scanned LR to the next: the scan's best is the minimum to within
    that resolution. At 2^21 the optimum sits at the stability edge lr -> 2 / h_max."""
    lr_opt, k_opt = optimal_lr(REFERENCE, batch_size, 0.01)
    assert steps_to_target(REFERENCE, batch_size, lr_opt, 0.01) == k_opt
    coarse = np.geomspace(2e-7, 2 * (1 - 1e-9), 80)

    def steps(lr: float) -> float:
        k = steps_to_target(REFERENCE, batch_size, lr, 0.01)
        return math.inf if k is None else k

    ks = np.array([steps(lr) for lr in coarse])
    j = int(np.argmin(ks))
    fine = np.geomspace(coarse[max(j - 1, 0)], coarse[min(j + 1, 79)], 160)
    kf = np.array([steps(lr) for lr in fine])
    scan_min = min(ks.min(), kf.min())
    assert k_opt <= scan_min * 1.005, (k_opt, scan_min)
    i = int(np.argmin(kf))
    near = kf[max(i - 1, 0) : i + 2]
    near = near[np.isfinite(near)]
    assert len(near) >= 2 and near.max() / near.min() - 1 < 0.005  # the scan resolves the minimum
    # Steps are a real function of the LR: 2x off the optimum costs clearly more steps.
    assert min(steps(lr_opt * 2), steps(lr_opt / 2)) > 1.01 * k_opt


def test_crossing_time_is_continuous_version_of_steps():
    path = SGDPath(REFERENCE, 256, 0.7)
    t = path.crossing_time(0.01)
    assert math.floor(t) + 1 == path.first_step(below=0.01)
    assert path.loss(t) == pytest.approx(0.01, rel=1e-9)


def test_ground_truth_obeys_the_known_regimes():
    sizes = [4, 64, 1024, 16384, 262144]
    truth = ground_truth(REFERENCE, sizes, 0.01)
    k, lr = np.array(truth["steps"]), np.array(truth["best_lr"])
    assert np.all(np.diff(k) < 0) and np.all(np.diff(k * sizes) > 0)  # fewer steps, more examples
    assert np.all(np.diff(lr) > 0) and lr.max() < 2  # saturating best LR below 2 / h_max
    assert k[1] / k[0] == pytest.approx(4 / 64, rel=0.02)  # perfect scaling at small B
    assert k[-1] / k[-2] > 0.9  # maximal data parallelism at large B
    assert 64 < truth["b_crit"] < 16384


def test_cli_json_reference(capsys):
    assert main(["nqm", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["batch_sizes"] == [2**j for j in range(2, 22)]
    assert len(out["best_lr"]) == len(out["steps"]) == 20
    assert out["b_crit"] == pytest.approx(out["e_min"] / out["s_min"])
    assert out["steps"][4] == steps_to_target(REFERENCE, 64, out["best_lr"][4], 0.01)


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--dim", "0"], "--dim"),
        (["--momentum", "1.5"], "--momentum"),
        (["--batch-sizes", "4,x"], "--batch-sizes"),
        (["--batch-sizes", "4"], "--batch-sizes"),
        (["--target", "100"], "--target"),
        (["--noise-scale", "-1"], "--noise-scale"),
    ],
)
def test_cli_bad_options_name_the_flag(argv, flag, capsys):
    assert main(["nqm", *argv]) == 2
    err = capsys.readouterr().err
    assert flag in err and "give" in err
