"""Gradient accumulation (`micro_batch_size`): the same step as one pass over the whole batch,
in the pure function, in the shared training loop, with the B_simple hook, on an image
workload with BatchNorm, and refused where batches cannot be split."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from tests.datafiles import write_cifar10
from trainables.api import TrialConfig
from trainables.microbatch import backward_mean, batch_len, slice_batch
from trainables.noise_scale import GradientNoiseScale
from trainables.registry import run_trial
from tune_jobs.cli import main
from tune_jobs.config import JobError
from tune_jobs.job_file import parse_job


def _model_and_batch(n: int = 10):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the initial weights
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x, y = torch.randn(n, 5, generator=g), torch.randn(n, 1, generator=g)
    return model, (x, y)


def _loss(model, batch):
    x, y = batch
    return F.mse_loss(model(x), y)


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("micro", [1, 3, 4, 9])
def test_parts_give_the_full_batch_mean_gradient_and_loss(micro):
    model, batch = _model_and_batch(10)
    full = _loss(model, batch)
    full.backward()
    want = _grads(model)
    model.zero_grad()
    loss = backward_mean(model, _loss, batch, micro)
    assert loss.item() == pytest.approx(full.item(), rel=1e-6)
    for g, w in zip(_grads(model), want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_parts_are_near_equal_and_cover_the_batch():
    """10 examples in parts of at most 3: ceil(10/3) = 4 parts of 2, 3, 2, 3, in order."""
    model, batch = _model_and_batch(10)
    seen = []

    def spy(m, b):
        seen.append(b[0])
        return _loss(m, b)

    backward_mean(model, spy, batch, 3)
    assert [len(x) for x in seen] == [2, 3, 2, 3]
    assert torch.equal(torch.cat(seen), batch[0])
    assert batch_len({"x": batch[0]}) == 10 and len(slice_batch(list(batch), 2, 5)[1]) == 3


def test_weight_scales_the_gradient_not_the_returned_loss():
    model, batch = _model_and_batch(8)
    backward_mean(model, _loss, batch, 0)
    want = [0.25 * g for g in _grads(model)]
    model.zero_grad()
    loss = backward_mean(model, _loss, batch, 3, weight=0.25)
    assert loss.item() == pytest.approx(_loss(model, batch).item(), rel=1e-6)
    for g, w in zip(_grads(model), want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_noise_scale_hook_with_parts_matches_it_without():
    """Each half runs in parts; the gradient and both norm estimates are unchanged."""
    runs = []
    for micro in (0, 2):
        model, batch = _model_and_batch(12)
        hook = GradientNoiseScale(beta=0.0)
        loss = hook.backward(model, _loss, batch, micro)
        runs.append((loss.item(), _grads(model), hook.metrics()))
    (l0, g0, m0), (l1, g1, m1) = runs
    assert l1 == pytest.approx(l0, rel=1e-6)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for k in ("noise_scale_gsq", "noise_scale_trsigma"):
        assert m1[k] == pytest.approx(m0[k], rel=1e-4), k


def _trial(workload: str, micro: int, **kw) -> list[dict]:
    config = TrialConfig(workload=workload, batch_size=kw.pop("batch_size", 32), lr=0.05,
                         momentum=0.9, max_steps=kw.pop("max_steps", 30), eval_every=kw.pop("eval_every", 10),
                         device="cpu", micro_batch_size=micro, **kw)  # fmt: skip
    reports: list[dict] = []
    run_trial(config, lambda m, ckpt=None: reports.append(copy.deepcopy(m)))
    return reports


def test_shared_loop_trains_the_same_trajectory_in_parts():
    """synthetic (a linear model, no BatchNorm): 30 SGD steps at B = 32 in parts of 5 (7 parts)
    follow the one-pass run to float rounding, eval after eval."""
    whole, parts = _trial("synthetic", 0), _trial("synthetic", 5)
    assert [r["step"] for r in parts] == [10, 20, 30]
    for a, b in zip(parts, whole, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-4)
    assert parts[-1]["train_loss"] < parts[0]["train_loss"]  # and it trained


@pytest.mark.slow
def test_image_workload_with_batchnorm_runs_in_parts(tmp_path):
    """ResNet-34 (BatchNorm, on-device augmentation) at B = 8 in parts of 3: a CPU smoke run of
    the path the large-batch paper jobs take on a GPU. (The synthetic test above cannot tell
    whether the loop split the batch; BatchNorm can.)"""
    write_cifar10(tmp_path, n_train=20, n_test=8)
    kw = {"batch_size": 8, "max_steps": 2, "eval_every": 2, "data_root": str(tmp_path),
          "options": {"eval_limit": 8}}  # fmt: skip
    [last] = _trial("cifar10_resnet34", 3, **kw)
    assert math.isfinite(last["train_loss"]) and 0 <= last["eval_accuracy"] <= 1
    # BatchNorm normalised each part with its own statistics: the loop did split the batch
    [whole] = _trial("cifar10_resnet34", 0, **kw)
    assert last["train_loss"] != pytest.approx(whole["train_loss"], rel=1e-4)


GOOD = {
    "name": "m",
    "workload": "synthetic",
    "batch_sizes": [8, 64],
    "target": {"metric": "eval_loss", "value": 0.1, "direction": "min"},
    "budget": {"max_steps": 10},
}


def test_job_field_reaches_the_trial_and_check_prints_the_parts(tmp_path, capsys):
    job = parse_job({**GOOD, "micro_batch_size": 16})
    assert job.trial_config(64, 0.1, 0, 4096).micro_batch_size == 16
    p = tmp_path / "j.yaml"
    p.write_text(yaml.safe_dump({**GOOD, "micro_batch_size": 16}))
    assert main(["check", str(p)]) == 0
    assert "micro-batches of at most 16 examples; parts per step: 64:4" in capsys.readouterr().out


@pytest.mark.parametrize(
    "over, fix",
    [
        ({"micro_batch_size": -1}, "must be >= 0"),
        ({"micro_batch_size": 1.5}, "expected an integer"),
        (
            {"micro_batch_size": 64, "workload": "wikitext2_lstm",
             "target": {"metric": "eval_loss", "value": 5.0, "direction": "min"}},
            "hidden state carries across steps",
        ),
        (
            {"micro_batch_size": 64, "workload": "nqm_exact",
             "target": {"metric": "eval_loss", "value": 0.1, "direction": "min"}},
            "set micro_batch_size: 0",
        ),
    ],
)  # fmt: skip
def test_bad_micro_batch_size_names_the_field_and_the_fix(over, fix):
    with pytest.raises(JobError) as e:
        parse_job({**GOOD, **over})
    assert str(e.value).startswith("micro_batch_size") and fix in str(e.value), str(e.value)
