"""The exact local critical batch size along training on the NQM, by branching (Merrill et al. 2025).

`trainables.nqm_truth.branched_losses` against the second-moment recursion iterated step by step,
how the local CBS moves along training and why, and `critbatch nqm --branch-at`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trainables.branching import BranchPlan
from trainables.nqm_truth import NQM, branched_losses
from tune_jobs.cli import main


def iterate_second_moments(nqm: NQM, s: np.ndarray, batch_size: int, lr: float, steps: int):
    """s_i <- (1 - lr h_i)^2 s_i + lr^2 c_i / B, one step at a time (science.md §6)."""
    h, c = nqm.h, nqm.c
    for _ in range(steps):
        s = (1 - lr * h) ** 2 * s + lr**2 * c / batch_size
    return s


def test_branched_losses_match_the_recursion_step_by_step():
    nqm = NQM(dim=50, exponent=1.0, noise_scale=1.0, s0=1.0)
    # lr0 * 32 = 3.2 > 2 / h_max = 2: the k = 32 branch is past the stability edge
    plan = BranchPlan(4, 0.1, (0, 37, 400), (1, 2, 4, 8, 16, 32), 160, tolerance=0.002).check()
    out = branched_losses(nqm, plan)
    assert out["branch_at"] == [0, 37, 400] and out["batch_sizes"] == [4, 8, 16, 32, 64, 128]
    for j, t in enumerate(plan.branch_at):
        s_t = iterate_second_moments(nqm, np.full(50, 1.0), 4, 0.1, t)
        assert out["base_loss"][j] == pytest.approx(0.5 * nqm.h @ s_t, rel=1e-10)
        expected = []
        for k in plan.factors:
            s = iterate_second_moments(nqm, s_t, 4 * k, 0.1 * k, 160 // k)
            expected.append(0.5 * float(nqm.h @ s))
        assert expected[-1] > 10 * expected[0]  # the unstable branch really blows up ...
        assert out["losses"][j][:-1] == pytest.approx(expected[:-1], rel=1e-10)
        assert out["losses"][j][-1] == math.inf and out["stable"][j] == [True] * 5 + [False]
        passed = [x <= 1.002 * expected[0] for x in expected[:-1]] + [False]  # ... and fails
        assert out["passes"][j] == passed
        assert out["local_cbs"][j] == max(
            b for b, p in zip(out["batch_sizes"], passed, strict=True) if p
        )
    assert len(set(out["local_cbs"])) > 1  # the tolerance separates the factors here


def test_local_cbs_grows_when_noise_fills_ever_flatter_directions():
    """On the NQM a linearly scaled LR costs a branch about (k - 1) lr0 h_i / 2 of coordinate
    i's loss (its noise floor is (2 - lr0 h) / (2 - k lr0 h) times higher; the signal decays at
    least as fast for k lr0 h < 1), so the local CBS is set by the share of the loss held by
    sharp directions. Started below its noise floor (s0 = 1e-6), the base run fills ever
    flatter directions with noise: the sharp share falls and the local CBS grows with t,
    starting small, as Merrill et al. report for language models."""
    nqm = NQM(dim=1000, exponent=2.0, noise_scale=1.0, s0=1e-6)
    factors = tuple(2**j for j in range(9))
    plan = BranchPlan(1, 0.001, (0, 100, 1000, 10_000, 100_000), factors, 256).check()
    cbs = branched_losses(nqm, plan)["local_cbs"]
    assert cbs == sorted(cbs)
    assert cbs[-1] >= 4 * cbs[0] and cbs[0] < max(factors)


def test_local_cbs_falls_from_the_usual_start_as_the_run_reaches_its_noise_floor():
    """From the reference start (s0 = 1, far above the floor) the loss after a window is first
    held by flat directions still decaying (nothing lost to a larger batch), later by the noise
    floor of the sharp ones: the local CBS starts at the largest factor and falls. The NQM with
    a constant LR does not reproduce Merrill et al.'s growth from this start."""
    plan = BranchPlan(8, 0.05, (0, 100, 1000, 10_000, 100_000), (1, 2, 4, 8, 16, 32), 3200)
    out = branched_losses(NQM(), plan.check())
    cbs = out["local_cbs"]
    assert cbs[0] == 256 and cbs == sorted(cbs, reverse=True) and cbs[-1] < 256
    assert all(out["passes"][0])
    assert out["losses"][-1][-1] / out["losses"][-1][0] > 1.01  # k = 32 fails at the floor


def test_cli_json_is_the_exact_answer(capsys):
    argv = ["--branch-at", "0,100,1000", "--base-batch-size", "8", "--base-lr", "0.05"]
    argv += ["--factors", "1,2,4,8,16,32", "--window-steps", "3200", "--tolerance", "0.01"]
    assert main(["nqm", *argv, "--dim", "1000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    plan = BranchPlan(8, 0.05, (0, 100, 1000), (1, 2, 4, 8, 16, 32), 3200, 0.01)
    assert out == json.loads(json.dumps(branched_losses(NQM(dim=1000), plan)))
    assert out["factors"] == [1, 2, 4, 8, 16, 32] and len(out["local_cbs"]) == 3
    assert len(out["losses"]) == len(out["passes"]) == 3 and len(out["losses"][0]) == 6
    assert main(["nqm", *argv, "--dim", "1000"]) == 0  # the table
    table = capsys.readouterr().out
    assert "local_cbs" in table and len(table.strip().splitlines()) == 2 + 1 + 3


@pytest.mark.parametrize(
    "argv,flag,fix",
    [
        (["--window-steps", "3000"], "--window-steps", "use a multiple of 32, e.g. 3008"),
        (["--factors", "2,4,8"], "--factors", "1 included"),
        (["--factors", "1,0,2"], "--factors", "positive integers"),
        (["--factors", "1,x"], "--factors", "comma-separated integers"),
        (["--base-lr", "0"], "--base-lr", "give a learning rate > 0"),
        (["--base-lr", "2.5"], "--base-lr", "stability edge"),
        (["--tolerance", "-0.1"], "--tolerance", ">= 0"),
        (["--base-batch-size", "0"], "--base-batch-size", "positive integer"),
        (["--momentum", "0.9"], "--momentum", "drop --momentum"),
        (["--target", "0.1"], "--target", "drop --target"),
    ],
)
def test_cli_bad_branch_flags_name_the_flag_and_fix(argv, flag, fix, capsys):
    assert main(["nqm", "--branch-at", "0,100", "--dim", "100", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"critbatch: error: {flag}") and fix in err


@pytest.mark.parametrize("branch_at", ["100,0", "0,0", "-5,10"])
def test_cli_branch_points_nonnegative_and_increasing(branch_at, capsys):
    assert main(["nqm", f"--branch-at={branch_at}", "--dim", "100"]) == 2
    assert "--branch-at" in capsys.readouterr().err


def test_cli_branch_flags_need_branch_at(capsys):
    assert main(["nqm", "--factors", "1,2", "--dim", "100"]) == 2
    assert "--factors: applies only with --branch-at" in capsys.readouterr().err


def test_nqm_exact_branches_from_base_checkpoints_give_the_exact_answer():
    """The trainable path the Ray runner takes: a base run of `nqm_exact` checkpoints its
    moments at its `checkpoint_at` steps (the last one its final step); a branch handed such a
    checkpoint goes on from it at its own batch size and LR to its max_steps."""
    import dataclasses

    from trainables.api import Target, TrialConfig
    from trainables.workloads.nqm import train_exact

    plan = BranchPlan(8, 0.05, (0, 100, 1000), (1, 2, 4, 8, 16, 32), 3200, 0.01).check()
    exact = branched_losses(NQM(dim=1000), plan)
    never = Target("eval_loss", -1e300, "min")  # a branch trains its whole window
    base = TrialConfig("nqm_exact", 8, 0.05, max_steps=1000, eval_every=70, target=never,
                       checkpoint_at=(100, 1000), options={"dim": 1000})  # fmt: skip
    checkpoints = {}

    def keep(metrics, checkpoint=None):
        if checkpoint is not None:
            checkpoints[metrics["step"]] = checkpoint

    train_exact(base, keep)
    assert sorted(checkpoints) == [100, 1000]  # 100 is no multiple of eval_every: added
    for j, t in enumerate(plan.branch_at):
        for i, k in enumerate(plan.factors):
            cfg = dataclasses.replace(base, batch_size=plan.batch_size(k), lr=plan.lr(k),
                                      max_steps=t + plan.steps(k), checkpoint_at=())  # fmt: skip
            reports: list[dict] = []
            train_exact(cfg, lambda m, c=None, out=reports: out.append(m), checkpoints.get(t))
            assert reports[-1]["step"] == t + plan.steps(k)
            assert reports[-1]["eval_loss"] == pytest.approx(exact["losses"][j][i], rel=1e-12)


def test_branch_plan_rules():
    plan = BranchPlan(16, 0.01, (0,), (1, 4, 9), 36, 0.05, "sqrt").check()
    assert [plan.batch_size(k) for k in plan.factors] == [16, 64, 144]
    assert [plan.steps(k) for k in plan.factors] == [36, 9, 4]  # the same 576 examples each
    assert [plan.lr(k) for k in plan.factors] == pytest.approx([0.01, 0.02, 0.03])  # lr0 sqrt(k)
    linear = BranchPlan(16, 0.01, (0,), (1, 4, 9), 36, 0.05, "linear")
    assert linear.lr(9) == pytest.approx(0.09)
    from trainables.branching import local_critical_batch_size, passes

    assert passes(1.05, 1.0, 0.05) and not passes(1.0501, 1.0, 0.05)
    assert not passes(math.nan, 1.0, 0.05) and not passes(math.inf, 1.0, 0.05)
    assert local_critical_batch_size([8, 16, 32], [True, False, True]) == 32
    assert local_critical_batch_size([8, 16], [False, False]) is None
    with pytest.raises(ValueError, match="lr_rule must be linear"):
        branched_losses(NQM(dim=10), plan)
