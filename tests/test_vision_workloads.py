"""The image workloads end to end on tiny files in the real formats, through ``run_trial``.

Models keep the paper's sizes (ResNet-34 is 21M parameters); the runs are kept short instead:
batch 8, two steps, eight test images.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from tests.datafiles import write_cifar10, write_cifar100, write_mnist, write_svhn
from trainables.api import REQUIRED_METRICS, TrialConfig
from trainables.datasets.images import DatasetNotFoundError
from trainables.microbatch import backward_mean
from trainables.registry import get_workload, run_trial
from trainables.workloads import vision

IMAGE_WORKLOADS = [
    "cifar10_resnet34",
    "cifar10_vgg16",
    "cifar10_alexnet",
    "cifar10_mobilenetv2",
    "cifar100_resnet34",
    "svhn_resnet34",
    "mnist_resnet34",
]
N_TRAIN = {"cifar10": 50, "cifar100": 200, "svhn": 40, "mnist": 40}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("images")
    write_cifar10(r, n_train=N_TRAIN["cifar10"], n_test=20)
    write_cifar100(r, n_train=N_TRAIN["cifar100"], n_test=100)
    write_mnist(r, n_train=N_TRAIN["mnist"], n_test=20, gz=True)
    write_svhn(r, n_train=N_TRAIN["svhn"], n_test=20, n_extra=10)
    return r


def _run(
    root: Path | str, workload: str, steps: int = 2, state=None, device: str = "cpu", **kw
) -> list[dict]:
    options = {"eval_limit": 8, **kw.pop("options", {})}
    config = TrialConfig(
        workload=workload,
        batch_size=8,
        lr=0.01,
        momentum=0.9,
        max_steps=steps,
        eval_every=2,
        data_root=str(root),
        device=device,
        options=options,
        **kw,
    )
    reports: list[dict] = []

    def report(metrics: dict, checkpoint: dict | None = None) -> None:
        # a runner serialises the checkpoint at once; copy it before training mutates the weights
        reports.append({**metrics, "_ckpt": copy.deepcopy(checkpoint)})

    run_trial(config, report, state)
    return reports


@pytest.mark.slow
@pytest.mark.parametrize("workload", IMAGE_WORKLOADS)
def test_workload_trains_and_reports_every_metric(root, workload):
    w = get_workload(workload)
    assert set(w.metrics) == {"eval_loss", "eval_accuracy", "eval_error"} and not w.cpu_friendly
    [last] = _run(root, workload)
    for key in (*REQUIRED_METRICS, "eval_loss", "eval_accuracy", "eval_error"):
        assert key in last
    assert last["status"] == "not_reached" and last["step"] == 2 and last["examples"] == 16
    assert last["epoch"] == pytest.approx(16 / N_TRAIN[w.dataset])
    assert math.isfinite(last["train_loss"]) and math.isfinite(last["eval_loss"])
    assert last["eval_accuracy"] * 8 == pytest.approx(round(last["eval_accuracy"] * 8))  # 8 images
    assert last["eval_error"] == pytest.approx(1 - last["eval_accuracy"])


def _task(root: Path, workload: str, data_fraction: float = 1.0, **options):
    config = TrialConfig(
        workload=workload,
        batch_size=8,
        lr=0.1,
        data_root=str(root),
        data_fraction=data_fraction,
        options=options,
    )
    return get_workload(workload).build(config, torch.device("cpu"))


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25])
def test_data_fraction_is_a_fixed_subset_on_the_device(root, fraction):
    task = _task(root, "cifar10_alexnet", fraction)
    x, y = task.batches.tensors
    assert task.train_size == round(50 * fraction) == x.shape[0] == y.shape[0]
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32)  # raw bytes; normalised per batch
    again = _task(root, "cifar10_alexnet", fraction)
    assert torch.equal(again.batches.tensors[0], x)  # the same subset for every trial
    x_batch, _ = next(task.batches)
    assert x_batch.dtype == torch.float32 and x_batch.shape == (8, 3, 32, 32)


def test_limit_train_and_svhn_extra(root):
    assert _task(root, "svhn_resnet34").train_size == 40  # tiny file: under the 50k cut
    assert _task(root, "svhn_resnet34", limit_train=30).train_size == 30
    assert _task(root, "svhn_resnet34", 0.5, limit_train=30).train_size == 15
    assert _task(root, "svhn_resnet34", extra=True).train_size == 50
    assert _task(root, "svhn_extra_resnet34").train_size == 50  # the workload with extra by default
    assert _task(root, "svhn_extra_resnet34", extra=False).train_size == 40  # the job's options win
    mnist = _task(root, "mnist_resnet34")
    assert mnist.batches.tensors[0].shape[1:] == (1, 32, 32)  # 28x28 padded to 32x32
    assert mnist.batches.tensors[0][:, :, :2].sum() == 0  # the padding is zeros


def test_registered_train_sizes_follow_the_paper():
    assert get_workload("cifar10_resnet34").train_size == 50_000
    assert get_workload("mnist_resnet34").train_size == 50_000  # cut from 60,000
    assert get_workload("svhn_resnet34").train_size == 50_000  # cut from 73,257
    assert vision.train_size("svhn", {"limit_train": 0}) == 73_257
    assert get_workload("svhn_extra_resnet34").train_size == 604_388  # Fig. 4: train + extra
    assert vision.train_size("svhn", {"limit_train": 0, "extra": True}, 0.25) == round(604_388 / 4)


def test_missing_data_names_path_setting_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CRITBATCH_DATA", str(tmp_path / "from-env"))
    with pytest.raises(DatasetNotFoundError) as e:
        _run(tmp_path / "empty", "cifar100_resnet34")
    msg = str(e.value)
    assert str(tmp_path / "empty" / "cifar-100-python" / "train") in msg
    assert (
        "data_root" in msg
        and f"critbatch data download cifar100 --root {tmp_path / 'empty'}" in msg
    )
    with pytest.raises(DatasetNotFoundError, match=r"\$CRITBATCH_DATA"):
        _run("", "svhn_resnet34")  # no data_root: the environment variable is the setting


def test_unknown_option_is_refused(root):
    with pytest.raises(ValueError, match="unknown option"):
        _task(root, "cifar10_alexnet", crop_pad=4)
    with pytest.raises(ValueError, match="options.limit_train: must be an integer >= 0"):
        _task(root, "cifar10_alexnet", limit_train=-1)
    with pytest.raises(ValueError, match="options.eval_batch_size: must be an integer >= 1"):
        _task(root, "cifar10_alexnet", eval_batch_size=0)


def test_bf16_and_channels_last_path_on_cpu(root):
    [last] = _run(root, "cifar10_alexnet", options={"bf16": True, "channels_last": True})
    assert math.isfinite(last["train_loss"]) and math.isfinite(last["eval_loss"])


def test_resume_from_checkpoint_reproduces_the_run(root):
    full = _run(root, "cifar10_alexnet", steps=4, checkpoint_every=1)
    assert [r["step"] for r in full] == [2, 4] and full[0]["_ckpt"] is not None
    resumed = _run(root, "cifar10_alexnet", steps=4, checkpoint_every=1, state=full[0]["_ckpt"])
    assert [r["step"] for r in resumed] == [4]
    for key in ("train_loss", "eval_loss", "eval_accuracy"):  # same batches, same crops and flips
        assert resumed[0][key] == pytest.approx(full[1][key], rel=1e-5)


def test_compile_option(root):
    # aot_eager: TorchDynamo tracing and AOT autograd as with `compile: true`, without inductor's
    # C++ code generation (minutes on a 2-core CPU)
    [last] = _run(root, "cifar10_alexnet", options={"compile": "aot_eager"})
    assert math.isfinite(last["train_loss"]) and math.isfinite(last["eval_loss"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resnet34_on_cuda_defaults_bf16_channels_last(root):
    config = TrialConfig(workload="cifar10_resnet34", batch_size=8, lr=0.1, data_root=str(root))
    task = get_workload("cifar10_resnet34").build(config, torch.device("cuda"))
    x, _ = next(task.batches)
    assert x.is_cuda and x.is_contiguous(memory_format=torch.channels_last)  # on by default on cuda
    model = task.model.cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_sum = torch.zeros((), device="cuda")
    # any host sync in batching, augmentation, forward, backward (whole or in micro-batches),
    # the optimizer step or the loss accumulation raises
    torch.cuda.set_sync_debug_mode("error")
    try:
        for micro in (0, 3):
            opt.zero_grad(set_to_none=True)
            loss_sum += backward_mean(model, task.loss, next(task.batches), micro)
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    [last] = _run(root, "cifar10_resnet34", device="cuda")
    assert math.isfinite(last["train_loss"]) and last["eval_error"] == pytest.approx(
        1 - last["eval_accuracy"]
    )


IMAGE_JOBS = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "tune_jobs" / "jobs").glob("paper_*.yaml")
    if p.name.split("_")[1] in ("cifar10", "cifar100", "svhn", "mnist")
)


def test_paper_image_jobs_follow_table_1():
    from tune_jobs.job_file import load_job

    assert len(IMAGE_JOBS) == 33
    for path in IMAGE_JOBS:
        job = load_job(path)
        assert get_workload(job.workload).dataset is not None, path
        assert set(job.batch_sizes) <= {2**k for k in range(6, 15)}, path  # Table 1: 2^6 .. 2^14
        s = job.strategy
        if s.name == "tuned":
            assert job.budget.max_steps > 0, path
            continue
        assert (s.base_lr, s.base_batch_size, job.budget.epochs) == (0.1, 64, 200), path
        assert s.warmup_epochs == (10 if s.name == "lsr" else 0), path
        assert (
            job.options.get("limit_train", 50_000) == 50_000
            or job.workload == "svhn_extra_resnet34"
        )
