"""Readers of the image datasets on tiny files in the real formats, the data root, and `critbatch data`."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat

from tests.datafiles import write_cifar10, write_cifar100, write_mnist, write_svhn
from trainables.datasets import download as data_cli
from trainables.datasets import images
from tune_jobs.cli import main as critbatch


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("images")
    write_cifar10(r, n_train=53, n_test=20)
    write_cifar100(r, n_train=200, n_test=100)
    write_mnist(r, n_train=40, n_test=15)
    write_svhn(r, n_train=30, n_test=12, n_extra=9)
    return r


def test_cifar10_shapes_labels_and_pixel_layout(root):
    train = images.read_split("cifar10", True, str(root))
    test = images.read_split("cifar10", False, str(root))
    assert train.images.shape == (53, 3, 32, 32) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64 and test.images.shape == (20, 3, 32, 32)
    np.testing.assert_array_equal(train.labels, np.arange(53) % 10)  # batches read in order 1..5
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"]
    # a row is the R plane, then G, then B, each 32x32 row-major
    np.testing.assert_array_equal(train.images[1, 1], raw[1, 1024:2048].reshape(32, 32))


def test_cifar100_uses_fine_labels(root):
    train = images.read_split("cifar100", True, str(root))
    assert train.images.shape == (200, 3, 32, 32)
    np.testing.assert_array_equal(train.labels, np.arange(200) % 100)
    assert train.labels.max() == 99  # fine labels, not the 20 coarse ones


def test_mnist_idx_matches_torchvision_reader(root):
    from torchvision.datasets import MNIST

    ours = images.read_split("mnist", True, str(root))
    theirs = MNIST(str(root), train=True, download=False)  # reads the same raw idx files
    assert ours.images.shape == (40, 1, 28, 28) and ours.images.dtype == np.uint8
    np.testing.assert_array_equal(ours.images[:, 0], theirs.data.numpy())
    np.testing.assert_array_equal(ours.labels, theirs.targets.numpy())


def test_mnist_gz_equals_raw(root, tmp_path):
    write_mnist(tmp_path, n_train=40, n_test=15, gz=True)
    assert not (tmp_path / "MNIST/raw/train-images-idx3-ubyte").exists()
    gz = images.read_split("mnist", False, str(tmp_path))
    raw = images.read_split("mnist", False, str(root))
    np.testing.assert_array_equal(gz.images, raw.images)
    np.testing.assert_array_equal(gz.labels, raw.labels)


def test_read_idx_rejects_other_files(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an idx file"):
        images.read_idx(bad)
    short = tmp_path / "y-idx1-ubyte"
    short.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05" + b"\x01\x02")
    with pytest.raises(ValueError, match="header says"):
        images.read_idx(short)


def test_svhn_label_10_is_digit_0_and_layout(root):
    train = images.read_split("svhn", True, str(root))
    mat = loadmat(root / "svhn" / "train_32x32.mat")
    assert train.images.shape == (30, 3, 32, 32) and train.images.dtype == np.uint8
    assert set(mat["y"].ravel()) == set(range(1, 11))
    np.testing.assert_array_equal(train.labels, mat["y"].ravel() % 10)  # 10 -> 0, others kept
    np.testing.assert_array_equal(train.images[7], mat["X"][:, :, :, 7].transpose(2, 0, 1))


def test_svhn_extra_appends_the_extra_split(root):
    train = images.read_split("svhn", True, str(root), extra=True)
    assert len(train) == 30 + 9
    extra = images.read_svhn(root, "extra")
    np.testing.assert_array_equal(train.images[30:], extra.images)


def test_data_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("CRITBATCH_DATA", str(tmp_path / "env"))
    assert images.data_root(str(tmp_path / "job"))[0] == tmp_path / "job"
    assert images.data_root("") == (tmp_path / "env", "$CRITBATCH_DATA")
    monkeypatch.delenv("CRITBATCH_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert images.data_root("")[0] == tmp_path / "home" / ".critbatch" / "data"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar-100-python/train"),
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("svhn", "svhn/train_32x32.mat"),
    ],
)
def test_missing_files_name_path_root_and_command(tmp_path, monkeypatch, name, expected):
    monkeypatch.setenv("CRITBATCH_DATA", str(tmp_path))
    with pytest.raises(images.DatasetNotFoundError) as e:
        images.read_split(name, True, "")
    msg = str(e.value)
    assert str(tmp_path / expected) in msg
    assert "$CRITBATCH_DATA" in msg
    assert f"critbatch data download {name} --root {tmp_path}" in msg


def test_subset_indices_fixed_nested_fractions():
    full = images.subset_indices(1000, None, 1.0, seed=0)
    half = images.subset_indices(1000, None, 0.5, seed=0)
    quarter = images.subset_indices(1000, None, 0.25, seed=0)
    assert (len(full), len(half), len(quarter)) == (1000, 500, 250)
    assert set(quarter) <= set(half)
    np.testing.assert_array_equal(half, images.subset_indices(1000, None, 0.5, seed=0))
    assert not np.array_equal(half, images.subset_indices(1000, None, 0.5, seed=1))
    cut = images.subset_indices(1000, 600, 1.0, seed=0)
    assert len(cut) == 600 and len(images.subset_indices(1000, 600, 0.5, seed=0)) == 300
    assert set(images.subset_indices(1000, 600, 0.5, seed=0)) <= set(cut)
    with pytest.raises(ValueError, match="data_fraction"):
        images.subset_indices(10, None, 0.0, seed=0)


def test_data_list_shows_present_and_missing(root, capsys):
    assert critbatch(["data", "list", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if ln.startswith("  ")}
    assert lines["cifar10"] == lines["cifar100"] == lines["mnist"] == lines["svhn"] == "present"
    assert lines["svhn-extra"] == "present" and lines["cityscapes"] == "missing"
    assert f"data root: {root}" in out


def test_data_download_skips_present_files(root, capsys):
    # present files are never fetched again (no network needed); --force would fetch
    assert critbatch(["data", "download", "cifar10", "--root", str(root)]) == 0
    assert "already present" in capsys.readouterr().out


def test_data_download_manual_step_when_nothing_can_fetch(tmp_path, monkeypatch, capsys):
    manual = data_cli.DataSource(
        "cityscapes",
        "d",
        "1 GB",
        ("cityscapes",),
        module="trainables.datasets.not_written",
        manual="unzip into ROOT/x",
    )
    monkeypatch.setitem(data_cli.SOURCES, "cityscapes", manual)
    assert (
        critbatch(["data", "download", "cityscapes", "--root", str(tmp_path)]) == 2
    )  # bad input like every other command
    assert f"unzip into {tmp_path}/x" in capsys.readouterr().err


def test_wikitext_download_comes_from_its_module():
    wikitext = pytest.importorskip("trainables.datasets.wikitext")
    assert data_cli._module_download(data_cli.SOURCES["wikitext2"]) is wikitext.download


def test_unknown_dataset_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        critbatch(["data", "download", "imagenet"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
