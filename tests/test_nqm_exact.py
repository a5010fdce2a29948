"""The exact NQM dynamics (trainables/nqm_truth.py) and the `nqm_exact` trainable.

Closed forms are checked against plain step-by-step iteration of the same recurrence (to
float rounding), the momentum recurrence against Monte Carlo sampling (within 5 standard
errors), and the exact first-crossing searches against brute force over every step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.api import REQUIRED_METRICS, Schedule, Status, Target, TrialConfig
from trainables.nqm_truth import NQM, MomentumPath, SGDPath, momentum_matrix, steps_to_target
from trainables.registry import get_workload
from trainables.schedules import lr_at
from trainables.workloads.nqm import train_exact


def _brute_sgd(nqm: NQM, B: int, lr: float, steps: int, s_init=None) -> np.ndarray:
    s = np.full(nqm.dim, nqm.s0) if s_init is None else np.array(s_init, float)
    out = [0.5 * nqm.h @ s]
    for _ in range(steps):
        s = (1 - lr * nqm.h) ** 2 * s + lr**2 * nqm.c / B
        out.append(0.5 * nqm.h @ s)
    return np.array(out)


def _brute_momentum(nqm: NQM, B: int, lr: float, beta: float, steps: int) -> np.ndarray:
    m, n = momentum_matrix(nqm, B, lr, beta)
    x = np.zeros((3, nqm.dim))
    x[0] = nqm.s0
    out = [0.5 * nqm.h @ x[0]]
    for _ in range(steps):
        x = (m * x[None]).sum(1) + n
        out.append(0.5 * nqm.h @ x[0])
    return np.array(out)


def _first(losses: np.ndarray, below=-math.inf, above=math.inf) -> int | None:
    idx = np.nonzero((losses < below) | (losses > above) | ~np.isfinite(losses))[0]
    return int(idx[0]) if len(idx) else None


@pytest.mark.parametrize("lr", [0.01, 0.7, 1.0, 1.9, 2.05])
def test_sgd_closed_form_equals_iteration(lr):
    nqm = NQM(dim=50, exponent=1.0)
    brute = _brute_sgd(nqm, 8, lr, 400)
    path = SGDPath(nqm, 8, lr)
    closed = np.array([path.loss(k) for k in range(401)])
    np.testing.assert_allclose(closed, brute, rtol=1e-9)


def test_momentum_jumps_equal_iteration():
    nqm = NQM(dim=50)
    brute = _brute_momentum(nqm, 8, 0.3, 0.9, 300)
    path = MomentumPath(nqm, 8, 0.3, 0.9)
    np.testing.assert_allclose(
        path.losses([1, 7, 64, 65, 200, 300]), brute[[1, 7, 64, 65, 200, 300]], rtol=1e-9
    )
    path0 = MomentumPath(nqm, 8, 0.3, 0.0)  # beta = 0 is plain SGD
    np.testing.assert_allclose(
        path0.losses([5, 100]), [SGDPath(nqm, 8, 0.3).loss(k) for k in (5, 100)], rtol=1e-9
    )


def test_momentum_recurrence_matches_sampling():
    """E theta^2, E v^2, E theta v of sampled heavy-ball SGD (torch.optim.SGD's update) after
    25 steps agree with the 3-state recurrence within 5 standard errors per entry (9 entries:
    a false failure has probability < 1e-5); the plain-SGD moments are > 20 SE away, so the
    test separates the two."""
    nqm = NQM(dim=3, noise_scale=2.0)
    B, lr, beta, steps, n = 4, 0.4, 0.8, 25, 400_000
    h = torch.tensor(nqm.h)
    gen = torch.Generator().manual_seed(0)
    theta = torch.full((n, 3), math.sqrt(nqm.s0), dtype=torch.float64)
    v = torch.zeros_like(theta)
    std = torch.sqrt(torch.tensor(nqm.c) / B)
    for _ in range(steps):
        g = h * theta + std * torch.randn(theta.shape, generator=gen, dtype=torch.float64)
        v = beta * v + g
        theta = theta - lr * v
    samples = torch.stack([theta**2, v**2, theta * v]).numpy()  # (3 moments, n, 3 coords)
    mean, se = samples.mean(1), samples.std(1) / math.sqrt(n)
    exact = MomentumPath(nqm, B, lr, beta).jump(MomentumPath(nqm, B, lr, beta).x_init, steps)
    assert np.all(np.abs(mean - exact) < 5 * se), (mean, exact, se)
    sgd = SGDPath(nqm, B, lr).moments(steps)
    assert np.any(np.abs(mean[0] - sgd) > 20 * se[0])


def test_sgd_first_step_is_the_first_crossing_even_when_not_monotone():
    nqm = NQM(dim=40, noise_scale=4.0)
    B, lr = 2, 0.5
    # Half the coordinates start below their stationary value: the loss falls, then rises.
    s_init = np.where(np.arange(40) % 2 == 0, 1.0, 0.0)
    brute = _brute_sgd(nqm, B, lr, 3000, s_init)
    assert brute.argmin() not in (0, len(brute) - 1)  # really not monotone
    path = SGDPath(nqm, B, lr, s_init=s_init)
    for target in np.linspace(brute.min() * 1.0001, brute[0] * 0.99, 7):
        assert path.first_step(below=target, k_max=3000) == _first(brute, below=target)
    assert path.first_step(below=brute.min() * 0.999, k_max=3000) is None
    rise = brute[brute.argmin() + 1 :].max() * 0.999  # crossed again on the way up
    assert path.first_step(above=rise, k_max=3000) == _first(brute, above=rise)


def test_sgd_first_step_divergence_and_monotone_fast_path():
    nqm = NQM(dim=100)
    brute = _brute_sgd(nqm, 16, 2.02, 2000)
    limit = 10 * brute[0]
    assert SGDPath(nqm, 16, 2.02).first_step(above=limit) == _first(brute, above=limit)
    # An overflowing (unstable) run never counts as below the target.
    assert SGDPath(nqm, 16, 2.02).first_step(below=0.01, k_max=10**6) is None
    assert MomentumPath(nqm, 16, 4.0, 0.5).first_step(below=0.01, k_max=10**6) is None
    brute = _brute_sgd(nqm, 16, 0.8, 5000)
    for target in (brute[0] * 0.5, 0.05, brute[-1] * 1.01):
        assert SGDPath(nqm, 16, 0.8).first_step(below=target) == _first(brute, below=target)


@pytest.mark.parametrize("lr,beta", [(0.05, 0.9), (0.5, 0.5), (1.2, 0.9)])
def test_momentum_first_step_matches_brute_force(lr, beta):
    nqm = NQM(dim=100)
    brute = _brute_momentum(nqm, 64, lr, beta, 6000)
    for target in (brute[0] * 0.3, brute[-1] * 1.05):
        assert MomentumPath(nqm, 64, lr, beta).first_step(below=target, k_max=6000) == _first(
            brute, below=target
        )


def _run(**kw) -> list[dict]:
    out: list[dict] = []
    cfg = TrialConfig(workload="nqm_exact", **kw)
    train_exact(cfg, lambda m, c=None: out.append(m))
    return out


def test_nqm_exact_trainable_reports_and_exact_steps():
    opts = {"dim": 1000, "max_reports": 50}
    out = _run(
        batch_size=256,
        lr=0.6,
        max_steps=10**7,
        eval_every=10,
        target=Target("eval_loss", 0.01),
        options=opts,
    )
    exact = steps_to_target(NQM(dim=1000), 256, 0.6, 0.01)
    assert (
        out[-1]["status"] == Status.REACHED
        and out[-1]["steps_to_target"] == out[-1]["step"] == exact
    )
    assert out[-1]["eval_loss"] < 0.01 <= SGDPath(NQM(dim=1000), 256, 0.6).loss(exact - 1)
    assert len(out) <= 50 and all(set(REQUIRED_METRICS) <= set(m) for m in out)
    steps = [m["step"] for m in out]
    assert steps == sorted(steps) and all(s % 10 == 0 for s in steps[:-1])
    assert all(m["status"] == Status.RUNNING for m in out[:-1])
    assert out[-1]["examples"] == exact * 256 and out[-1]["epoch"] == exact * 256 / 1e6

    div = _run(batch_size=256, lr=2.1, max_steps=10**6, options=opts)
    assert (
        div[-1]["status"] == Status.DIVERGED
        and div[-1]["eval_loss"] > 10 * NQM(dim=1000).initial_loss()
    )
    short = _run(
        batch_size=256,
        lr=0.6,
        max_steps=exact - 1,
        eval_every=7,
        target=Target("eval_loss", 0.01),
        options=opts,
    )
    assert short[-1]["status"] == Status.NOT_REACHED and short[-1]["step"] == exact - 1


def test_nqm_exact_warmup_and_momentum_match_iteration():
    nqm = NQM(dim=200)
    sched = Schedule(strategy="tuned", warmup_steps=40)
    out = _run(
        batch_size=32,
        lr=0.5,
        max_steps=5000,
        eval_every=1,
        schedule=sched,
        target=Target("eval_loss", 0.05),
        options={"dim": 200, "max_reports": 10**6},
    )
    s = np.full(200, 1.0)
    losses = [0.5 * nqm.h @ s]
    for k in range(5000):
        lr = lr_at(k, 0.5, sched, 1e6 / 32)
        s = (1 - lr * nqm.h) ** 2 * s + lr**2 * nqm.c / 32
        losses.append(0.5 * nqm.h @ s)
    np.testing.assert_allclose(
        [m["eval_loss"] for m in out], [losses[m["step"]] for m in out], rtol=1e-9
    )
    assert out[-1]["steps_to_target"] == _first(np.array(losses), below=0.05)
    mom = _run(
        batch_size=32,
        lr=0.1,
        momentum=0.9,
        max_steps=5000,
        eval_every=50,
        target=Target("eval_loss", 0.05),
        options={"dim": 200},
    )
    brute = _brute_momentum(nqm, 32, 0.1, 0.9, 5000)
    assert mom[-1]["steps_to_target"] == _first(brute, below=0.05)
    np.testing.assert_allclose(
        [m["eval_loss"] for m in mom], brute[[m["step"] for m in mom]], rtol=1e-9
    )


def test_registered_with_their_own_loops():
    for name in ("nqm_exact", "nqm_sgd"):
        w = get_workload(name)
        assert w.train is not None and w.build is None and w.default_target.value == 0.01


def test_a_paced_trial_reports_in_the_time_its_steps_would_take() -> None:
    """``seconds_per_step``: the reports of an ``nqm_exact`` trial arrive as if each step took
    that long (a sweep's stops then act when they would in real training); the same reports
    otherwise. A negative pace is an input error naming the option."""
    import time as _time

    from trainables.api import InputError, Target, TrialConfig
    from trainables.workloads.nqm import train_exact

    def run(options: dict) -> tuple[list[dict], list[float]]:
        out, at = [], []
        cfg = TrialConfig(workload="nqm_exact", batch_size=256, lr=0.5, max_steps=20_000,
                          eval_every=1000, target=Target("eval_loss", 1e-9), options=options)  # fmt: skip
        t0 = _time.perf_counter()
        train_exact(
            cfg, lambda m, checkpoint=None: (out.append(m), at.append(_time.perf_counter() - t0))
        )
        return out, at

    fast, _ = run({"dim": 100})
    paced, at = run({"dim": 100, "seconds_per_step": 2e-5})
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]  # noqa: E731
    assert strip(paced) == strip(fast)
    assert at[-1] >= 2e-5 * paced[-1]["step"]  # 20,000 steps: at least 0.4 s
    assert at[9] >= 2e-5 * paced[9]["step"] and at[9] < at[-1]
    with pytest.raises(InputError, match="seconds_per_step"):
        run({"dim": 100, "seconds_per_step": -1.0})
