"""Cityscapes reader and the `cityscapes_drn` workload, on small PNGs in the real layout."""

from __future__ import annotations

import math

import pytest
import torch
from datafiles import write_cityscapes

from trainables.api import REQUIRED_METRICS, Target, TrialConfig
from trainables.datasets import cityscapes
from trainables.registry import get_workload, run_trial
from trainables.workloads.segmentation import (
    DRND22,
    confusion_matrix,
    crop_and_flip,
    segmentation_metrics,
)


def _config(root, **kw) -> TrialConfig:
    base = dict(
        workload="cityscapes_drn",
        batch_size=2,
        lr=0.01,
        momentum=0.9,
        max_steps=4,
        eval_every=2,
        target=Target("eval_miou", 0.99, "max"),
        data_root=str(root),
        device="cpu",
        options={"crop": 32, "downscale": 2, "eval_images": 1},
    )
    base.update(kw)
    return TrialConfig(**base)


def test_label_ids_map_to_the_19_train_ids_and_the_rest_to_ignore():
    lut = cityscapes.label_lut()
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10}
    expected |= {24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    for label_id in range(256):
        assert lut[label_id] == expected.get(label_id, 255), label_id
    assert sorted(expected.values()) == list(range(19)) == list(range(len(cityscapes.CLASSES)))


def test_reader_pairs_images_with_label_ids_and_maps_them(tmp_path):
    write_cityscapes(tmp_path)
    pairs = cityscapes.list_pairs(tmp_path, "train")
    assert [p[0].name for p in pairs] == [
        "aachen_000000_000019_leftImg8bit.png",
        "aachen_000001_000029_leftImg8bit.png",
        "bochum_000000_000019_leftImg8bit.png",
    ]
    assert all(lab.name.endswith("_gtFine_labelIds.png") for _, lab in pairs)  # not *_color.png
    images, labels = cityscapes.load_split(str(tmp_path), "train", downscale=1)
    assert images.dtype == labels.dtype == torch.uint8
    assert images.shape == (3, 3, 64, 128) and labels.shape == (3, 64, 128)
    assert set(labels.unique().tolist()) == {0, 2, 10, 13, 255}  # road, building, sky, car, ignore
    assert labels[0, 0, 64].item() == 10  # sky (label id 23) at the top
    assert (labels[:, -2:] == 255).all()  # ego vehicle (label id 1): ignored
    assert (labels[:, -4, :16] == 255).all()  # parking (label id 9): ignored
    assert (
        labels[0, -4, 16:][labels[0, -4, 16:] != 13].eq(0).all()
    )  # road (7) elsewhere on that row


def test_downscale_halves_the_images_and_keeps_label_ids_intact(tmp_path):
    write_cityscapes(tmp_path)
    images, labels = cityscapes.load_split(str(tmp_path), "val", downscale=2)
    assert images.shape == (2, 3, 32, 64) and labels.shape == (2, 32, 64)
    assert set(labels.unique().tolist()) <= {0, 2, 10, 13, 255}  # nearest: no blended ids


def test_missing_images_name_the_folder_the_root_and_the_registration(tmp_path, monkeypatch):
    monkeypatch.delenv("CRITBATCH_DATA", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        run_trial(_config(tmp_path), lambda m, c=None: None)
    msg = str(e.value)
    assert str(tmp_path / "cityscapes" / "leftImg8bit" / "train") in msg
    assert "$CRITBATCH_DATA" in msg and "registered" in msg and "cityscapes-dataset.com" in msg


def test_missing_label_file_is_named(tmp_path):
    write_cityscapes(tmp_path)
    label = tmp_path / "cityscapes/gtFine/train/bochum/bochum_000000_000019_gtFine_labelIds.png"
    label.unlink()
    with pytest.raises(FileNotFoundError, match="bochum_000000_000019_gtFine_labelIds.png"):
        cityscapes.list_pairs(tmp_path, "train")


def test_download_refuses_with_the_manual_steps(tmp_path):
    with pytest.raises(RuntimeError, match="registered .*leftImg8bit_trainvaltest.zip"):
        cityscapes.download(tmp_path)


def test_miou_on_a_hand_made_case():
    target = torch.tensor([0, 0, 1, 1, 255, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    counts = confusion_matrix(pred, target)
    assert counts[0, 0] == 1 and counts[0, 1] == 1 and counts[1, 1] == 2 and counts[2, 0] == 1
    assert counts.sum() == 5  # the ignore pixel is not counted
    m = segmentation_metrics(counts)
    # IoU: class 0 = 1 / (2 + 2 - 1), class 1 = 2 / (2 + 3 - 2), class 2 = 0 / 1; 16 classes absent
    assert m["eval_miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert m["eval_pixel_accuracy"] == pytest.approx(3 / 5)
    assert segmentation_metrics(confusion_matrix(target.clamp(max=2), target))["eval_miou"] == 1.0


def test_crop_and_flip_cut_the_same_window_from_image_and_labels():
    n, h, w, crop = 8, 12, 20, 5
    cols = torch.arange(w).expand(n, h, w)
    rows = torch.arange(h)[:, None].expand(n, h, w)
    images = torch.stack([cols, rows, torch.arange(n)[:, None, None].expand(n, h, w)], 1).to(
        torch.uint8
    )
    labels = (cols + 100).to(torch.uint8)
    transform = crop_and_flip(crop, flip=True, out_device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    x, y = transform((images, labels), gen)
    assert x.shape == (n, 3, crop, crop) and y.shape == (n, crop, crop) and y.dtype == torch.long
    # undo the normalisation to read the pixel values back
    mean, std = (
        torch.tensor(cityscapes.MEAN).view(1, 3, 1, 1),
        torch.tensor(cityscapes.STD).view(1, 3, 1, 1),
    )
    raw = ((x * std + mean) * 255).round().long()
    flips = 0
    for i in range(n):
        assert (raw[i, 2] == i).all()  # each crop comes from its own image
        c, r = raw[i, 0, 0], raw[i, 1, :, 0]
        assert torch.equal(r, r[0] + torch.arange(crop))  # contiguous rows
        step = 1 if c[1] > c[0] else -1
        flips += step < 0
        assert torch.equal(c, c[0] + step * torch.arange(crop))  # contiguous, maybe mirrored
        assert torch.equal(y[i], raw[i, 0] + 100)  # labels follow the same window and flip
    assert 0 < flips < n


def test_drn_d_22_has_output_stride_8_and_its_published_size():
    model = DRND22()
    x = torch.randn(1, 3, 64, 96)
    assert model.base(x).shape == (1, 512, 8, 12)
    assert model(x).shape == (1, 19, 64, 96)
    # drn_d_22 is 16.4M parameters with its 1000-way ImageNet fc (512 * 1000 + 1000)
    trunk = sum(p.numel() for p in model.base.parameters())
    assert round((trunk + 513_000) / 1e6, 1) == 16.4


@pytest.mark.slow
def test_cpu_smoke_run_reports_every_metric(tmp_path):
    write_cityscapes(tmp_path)
    reports: list[dict] = []
    run_trial(_config(tmp_path), lambda m, c=None: reports.append(m))
    assert [r["step"] for r in reports] == [2, 4]
    for r in reports:
        assert set(REQUIRED_METRICS) | {"eval_loss", "eval_miou", "eval_pixel_accuracy"} <= set(r)
        assert 0 <= r["eval_miou"] <= 1 and 0 <= r["eval_pixel_accuracy"] <= 1
        assert math.isfinite(r["eval_loss"]) and math.isfinite(r["train_loss"])
    assert reports[-1]["epoch"] == pytest.approx(4 * 2 / 3)  # 3 training images
    assert reports[-1]["status"] == "not_reached"


def test_data_fraction_keeps_the_first_images(tmp_path):
    write_cityscapes(tmp_path)
    reports: list[dict] = []
    run_trial(
        _config(tmp_path, data_fraction=0.34, max_steps=1, eval_every=1),
        lambda m, c=None: reports.append(m),
    )
    assert reports[-1]["epoch"] == pytest.approx(2 / 1)  # round(3 * 0.34) = 1 image, batch 2


def test_a_misspelt_option_fails(tmp_path):
    write_cityscapes(tmp_path)
    with pytest.raises(ValueError, match="options.crop_size: unknown option .*did you mean `crop`"):
        run_trial(_config(tmp_path, options={"crop_size": 32}), lambda m, c=None: None)


def test_registry_entry():
    w = get_workload("cityscapes_drn")
    assert w.metrics == {"eval_loss": "min", "eval_miou": "max", "eval_pixel_accuracy": "max"}
    assert w.train_size == 2975 and w.dataset == "cityscapes"
