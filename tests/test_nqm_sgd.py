"""`nqm_sgd`: sampled SGD whose mean loss over seeds is the exact recurrence."""

from __future__ import annotations

import math

import numpy as np

from trainables.api import Status, Target, TrialConfig
from trainables.nqm_truth import NQM, MomentumPath
from trainables.workloads.nqm import train_sgd


def _curve(seed: int, **kw) -> list[dict]:
    out: list[dict] = []
    cfg = TrialConfig(workload="nqm_sgd", seed=seed, **kw)
    train_sgd(cfg, lambda m, c=None: out.append((m, c)))
    return out


def _check_mean_matches_exact(B: int, lr: float, beta: float, seeds: int = 300) -> None:
    """Mean loss over seeds at 10 eval points vs the exact expected loss.

    |mean - exact| < 4.5 standard errors at every point: with 10 (correlated) points,
    Bonferroni bounds a false failure by 10 * P(|z| > 4.5) < 1e-4 (300 seeds: the mean of a
    sum of 20 chi-square-like terms is close to normal). The exact curve of a model with half
    the batch size is > 4.5 SE away somewhere, so the check can tell the noise level apart.
    """
    kw = dict(batch_size=B, lr=lr, momentum=beta, max_steps=100, eval_every=10, options={"dim": 20})
    kw["target"] = Target("eval_loss", 0.0)  # never reached: run the whole budget
    losses = np.array([[m["eval_loss"] for m, _ in _curve(s, **kw)] for s in range(seeds)])
    mean, se = losses.mean(0), losses.std(0, ddof=1) / math.sqrt(seeds)
    nqm = NQM(dim=20)
    steps = list(range(10, 101, 10))
    exact = MomentumPath(nqm, B, lr, beta).losses(steps)
    assert np.all(np.abs(mean - exact) < 4.5 * se), (mean, exact, se)
    wrong = MomentumPath(nqm, B // 2, lr, beta).losses(steps)
    assert np.any(np.abs(mean - wrong) > 4.5 * se)


def test_mean_over_seeds_matches_exact_sgd():
    _check_mean_matches_exact(B=8, lr=0.3, beta=0.0)


def test_mean_over_seeds_matches_exact_momentum():
    _check_mean_matches_exact(B=8, lr=0.05, beta=0.9)


def test_seeded_statuses_and_resume():
    kw = dict(
        batch_size=16, lr=0.5, max_steps=400, eval_every=20, options={"dim": 50}, checkpoint_every=2
    )
    kw["target"] = Target("eval_loss", 0.0)  # never reached
    a, b, c = _curve(0, **kw), _curve(0, **kw), _curve(1, **kw)
    assert [m for m, _ in a] == [
        {**m, "wall_time": a[i][0]["wall_time"]} for i, (m, _) in enumerate(b)
    ]
    assert a[-1][0]["eval_loss"] != c[-1][0]["eval_loss"]
    ckpt = a[3][1]
    assert ckpt is not None and ckpt["step"] == 80
    resumed: list[dict] = []
    train_sgd(
        TrialConfig(workload="nqm_sgd", seed=0, **kw), lambda m, c=None: resumed.append(m), ckpt
    )
    assert [m["eval_loss"] for m in resumed] == [m["eval_loss"] for m, _ in a[4:]]
    reached = _curve(0, **{**kw, "target": Target("eval_loss", 0.5)})
    assert (
        reached[-1][0]["status"] == Status.REACHED
        and reached[-1][0]["steps_to_target"] == reached[-1][0]["step"]
    )
    diverged = _curve(0, **{**kw, "lr": 2.5})
    assert diverged[-1][0]["status"] == Status.DIVERGED
