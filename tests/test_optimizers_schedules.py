"""Each optimizer and LR schedule against values computed by hand, and how steps-to-target
meets a decaying schedule's horizon (trainables/schedules.py, docs/workloads.md)."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.api import Schedule, TrialConfig
from trainables.optimizers import make_optimizer
from trainables.registry import run_trial
from trainables.schedules import lr_at


def _two_steps(name: str, **kw) -> list[float]:
    """w after each of two steps on L(w) = 0.5 * w^2 (gradient w) from w = 1 at lr 0.1."""
    w = torch.nn.Parameter(torch.tensor([1.0]))
    cfg = TrialConfig(workload="x", batch_size=1, lr=0.1, optimizer=name, **kw)
    opt = make_optimizer([w], cfg)
    out = []
    for _ in range(2):
        opt.zero_grad()
        (0.5 * w**2).sum().backward()
        opt.step()
        out.append(float(w.detach()))
    return out


def test_sgd_with_momentum_and_l2_by_hand():
    # g1 = 1 + 0.1 * 1 = 1.1; w1 = 1 - 0.1 * 1.1 = 0.89; buffer b1 = 1.1
    # g2 = 0.89 * 1.1 = 0.979; b2 = 0.9 * 1.1 + 0.979 = 1.969; w2 = 0.89 - 0.1969 = 0.6931
    assert _two_steps("sgd", momentum=0.9, weight_decay=0.1) == pytest.approx([0.89, 0.6931])


def test_nesterov_by_hand():
    # g1 = 1; b1 = 1; step = g1 + 0.9 b1 = 1.9; w1 = 0.81
    # g2 = 0.81; b2 = 0.9 + 0.81 = 1.71; step = 0.81 + 0.9 * 1.71 = 2.349; w2 = 0.81 - 0.2349
    assert _two_steps("nesterov", momentum=0.9) == pytest.approx([0.81, 0.5751])


def test_adam_by_hand():
    b1, b2, eps = 0.5, 0.75, 1e-8
    # step 1: m = 0.5, v = 0.25, m_hat = 1, v_hat = 1: w1 = 1 - 0.1 * 1 / (1 + eps) = 0.9
    w1 = 1 - 0.1 / (1 + eps)
    m = b1 * 0.5 + (1 - b1) * w1
    v = b2 * 0.25 + (1 - b2) * w1**2
    m_hat, v_hat = m / (1 - b1**2), v / (1 - b2**2)
    w2 = w1 - 0.1 * m_hat / (math.sqrt(v_hat) + eps)
    assert _two_steps("adam", betas=(b1, b2), eps=eps) == pytest.approx([w1, w2], rel=1e-6)


def test_adamw_decouples_weight_decay_by_hand():
    # w1 = 1 * (1 - 0.1 * 0.5) - 0.1 * 1 = 0.85 (the decay is not in the gradient's moments)
    assert _two_steps("adamw", weight_decay=0.5)[0] == pytest.approx(0.85, rel=1e-6)
    # Adam's L2 adds it to the gradient instead: g = 1.5, and the first step is still lr * sign
    assert _two_steps("adam", weight_decay=0.5)[0] == pytest.approx(0.9, rel=1e-6)


def test_constant_warmup_and_step_decay_by_hand():
    s = Schedule(warmup_steps=4)
    assert [lr_at(k, 1.0, s, 10) for k in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])
    s = Schedule(warmup_epochs=0.5, decay_epochs=(2.0,), decay_factor=10)  # 10 steps per epoch
    assert lr_at(0, 1.0, s, 10) == pytest.approx(0.2) and lr_at(19, 1.0, s, 10) == 1.0
    assert lr_at(20, 1.0, s, 10) == pytest.approx(0.1)


def test_cosine_by_hand():
    s = Schedule(decay="cosine", warmup_steps=10, final_lr_fraction=0.1)
    # horizon = budget 110: cosine from step 10 (peak) to 110 (0.1 x peak)
    assert lr_at(10, 2.0, s, 50, 110) == pytest.approx(2.0)
    assert lr_at(60, 2.0, s, 50, 110) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # halfway
    assert lr_at(85, 2.0, s, 50, 110) == pytest.approx(
        2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(0.75 * math.pi)))
    )
    assert lr_at(110, 2.0, s, 50, 110) == pytest.approx(0.2)
    # an explicit horizon replaces the budget
    fixed = Schedule(decay="cosine", horizon_steps=100)
    assert lr_at(50, 1.0, fixed, 50, 10_000) == pytest.approx(0.5)


def test_wsd_by_hand():
    s = Schedule(decay="wsd", warmup_steps=10, wsd_decay_fraction=0.2, final_lr_fraction=0.0)
    # horizon 100: stable at the peak until step 80, then linear to 0 at step 100
    assert lr_at(79, 1.0, s, 50, 100) == 1.0
    assert lr_at(80, 1.0, s, 50, 100) == 1.0
    assert lr_at(90, 1.0, s, 50, 100) == pytest.approx(0.5)
    assert lr_at(95, 1.0, s, 50, 100) == pytest.approx(0.25)


def _steps_to_target(schedule: Schedule, budget: int) -> int | None:
    cfg = TrialConfig(workload="synthetic", batch_size=32, lr=0.05, seed=0, max_steps=budget,
                      eval_every=5, schedule=schedule, device="cpu")  # fmt: skip
    cfg = TrialConfig.from_dict({**cfg.to_dict(), "target": {"metric": "eval_loss", "value": 0.2}})
    out: list[dict] = []
    run_trial(cfg, lambda m, c=None: out.append(m))
    return out[-1].get("steps_to_target")


def test_horizon_is_the_budget_wsd_steps_do_not_depend_on_it_cosine_steps_do():
    """What docs/workloads.md promises: the horizon of cosine / WSD is each trial's budget
    (unless horizon_steps is set). WSD keeps the peak LR until the last 20% of the horizon, so
    a trial that reaches the target in the stable phase has the same steps-to-target under any
    budget; under cosine the LR at a step depends on the budget, and so do its steps."""
    wsd, cosine = Schedule(decay="wsd"), Schedule(decay="cosine")
    short, long = _steps_to_target(wsd, 400), _steps_to_target(wsd, 4000)
    assert short is not None and short == long and short < 0.8 * 400
    # (a budget of 150: the cosine LR at step ~110 is a third of its peak, not ~95% as under 400)
    c_short, c_long = _steps_to_target(cosine, 150), _steps_to_target(cosine, 4000)
    assert c_short is not None and c_long is not None and c_short != c_long
    # a fixed horizon makes cosine's steps independent of the budget again
    fixed = Schedule(decay="cosine", horizon_steps=1000)
    assert _steps_to_target(fixed, 400) == _steps_to_target(fixed, 4000)
