"""Readers of the image datasets in their official on-disk formats, and the data root.

Every reader returns an :class:`ImageSplit`: ``images`` uint8 N x C x H x W (numpy, C-contiguous)
and ``labels`` int64 N. Nothing is converted to float here: the workloads move the uint8 arrays
to the training device once and normalise there.

Layout under the data root (what ``critbatch data download`` and torchvision leave):

- ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (Python pickles)
- ``cifar-100-python/{train, test, meta}`` (pickles; ``fine_labels`` are the 100 classes)
- ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (idx; the ``.gz`` files also work)
- ``svhn/{train,test,extra}_32x32.mat`` (MATLAB v5; label 10 means the digit 0)

The data root is, in order: the job's ``data_root`` field (``TrialConfig.data_root``), else
the ``CRITBATCH_DATA`` environment variable, else ``~/.critbatch/data``.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables.api import InputError

ENV_VAR = "CRITBATCH_DATA"
DEFAULT_ROOT = "~/.critbatch/data"


@dataclass(frozen=True)
class ImageSplit:
    images: np.ndarray  # uint8, N x C x H x W
    labels: np.ndarray  # int64, N

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class DatasetNotFoundError(InputError, FileNotFoundError):
    """A dataset's files are not where the data root says; the message says how to get them."""


def data_root(configured: str = "") -> tuple[Path, str]:
    """The data root and where that setting came from (for error messages)."""
    if configured:
        return Path(configured).expanduser(), "the job's data_root field"
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    return Path(
        DEFAULT_ROOT
    ).expanduser(), f"the default {DEFAULT_ROOT} (no data_root, ${ENV_VAR} unset)"


def missing(dataset: str, looked_in: Path, root: Path, source: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{dataset} not found: looked for {looked_in} under the data root {root} (set by {source}). "
        f"Get it with `critbatch data download {dataset} --root {root}`, or point the job's "
        f"data_root (or ${ENV_VAR}) at a folder that holds it."
    )


# ------------------------------------------------------------------------------- CIFAR


CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("test_batch",)
CIFAR100_DIR = "cifar-100-python"


def _unpickle(path: Path) -> dict[str, object]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")  # the official files are Python 2 pickles
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar(paths: list[Path], label_key: str) -> ImageSplit:
    images, labels = [], []
    for p in paths:
        d = _unpickle(p)
        images.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(d[label_key], dtype=np.int64))
    return ImageSplit(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


def _require(dataset: str, paths: list[Path], root: Path, source: str) -> None:
    for p in paths:
        if not p.is_file():
            raise missing(dataset, p, root, source)


def read_cifar10(root: Path, train: bool, source: str = "") -> ImageSplit:
    d = root / CIFAR10_DIR
    paths = [d / name for name in (CIFAR10_TRAIN if train else CIFAR10_TEST)]
    _require("cifar10", paths, root, source)
    return _cifar(paths, "labels")


def read_cifar100(root: Path, train: bool, source: str = "") -> ImageSplit:
    path = root / CIFAR100_DIR / ("train" if train else "test")
    _require("cifar100", [path], root, source)
    return _cifar([path], "fine_labels")


# ------------------------------------------------------------------------------- MNIST

MNIST_DIR = "MNIST/raw"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (LeCun's MNIST format), raw or gzipped: magic 00 00 TYPE NDIM, then big-endian
    int32 dims, then the data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {tuple(dims)}, file holds {data.size} values")
    return data.reshape(tuple(dims))


def _idx_path(d: Path, name: str) -> Path:
    gz = d / f"{name}.gz"  # the archive as the MNIST site serves it; read when alone
    return gz if gz.is_file() and not (d / name).is_file() else d / name


def read_mnist(root: Path, train: bool, source: str = "") -> ImageSplit:
    d = root / MNIST_DIR
    prefix = "train" if train else "t10k"
    img = _idx_path(d, f"{prefix}-images-idx3-ubyte")
    lab = _idx_path(d, f"{prefix}-labels-idx1-ubyte")
    _require("mnist", [img, lab], root, source)
    images = read_idx(img).astype(np.uint8)[:, None]  # N x 1 x 28 x 28
    return ImageSplit(np.ascontiguousarray(images), read_idx(lab).astype(np.int64))


# -------------------------------------------------------------------------------- SVHN

SVHN_DIR = "svhn"


def read_svhn(root: Path, split: str, source: str = "") -> ImageSplit:
    """``split``: train (73,257), test (26,032) or extra (531,131). Label 10 becomes 0."""
    from scipy.io import loadmat

    path = root / SVHN_DIR / f"{split}_32x32.mat"
    _require("svhn-extra" if split == "extra" else "svhn", [path], root, source)
    mat = loadmat(path)
    images = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)))  # HWCN -> NCHW
    labels = mat["y"].astype(np.int64).reshape(-1)
    labels[labels == 10] = 0
    return ImageSplit(images, labels)


# ------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class ImageDataset:
    """What a workload needs to know about a dataset. ``mean``/``std`` per channel in 0..255
    units (the usual published values of each training set)."""

    name: str
    num_classes: int
    channels: int
    train_size: int
    test_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool  # horizontal flips preserve the label (not for digits)


DATASETS: dict[str, ImageDataset] = {
    "cifar10": ImageDataset(
        "cifar10", 10, 3, 50_000, 10_000, (125.3, 123.0, 113.9), (63.0, 62.1, 66.7), True
    ),
    "cifar100": ImageDataset(
        "cifar100", 100, 3, 50_000, 10_000, (129.3, 124.1, 112.4), (68.2, 65.4, 70.4), True
    ),
    "svhn": ImageDataset(
        "svhn", 10, 3, 73_257, 26_032, (111.6, 113.2, 120.6), (50.5, 51.3, 50.2), False
    ),
    "mnist": ImageDataset("mnist", 10, 1, 60_000, 10_000, (33.3,), (78.6,), False),
}
SVHN_EXTRA_SIZE = 531_131


def read_split(
    name: str, train: bool, configured_root: str = "", extra: bool = False
) -> ImageSplit:
    """The train or test split of dataset ``name`` under the data root (see module docstring).

    ``extra`` (SVHN only): append the 531,131 ``extra`` images to the training split, as the seed
    paper does for its data-fraction experiment (604,388 images in all).
    """
    root, source = data_root(configured_root)
    if name in ("cifar10", "cifar100"):
        reader = read_cifar10 if name == "cifar10" else read_cifar100
        return reader(root, train, source)
    if name == "mnist":
        return read_mnist(root, train, source)
    if name == "svhn":
        split = read_svhn(root, "train" if train else "test", source)
        if train and extra:
            more = read_svhn(root, "extra", source)
            split = ImageSplit(
                np.concatenate([split.images, more.images]),
                np.concatenate([split.labels, more.labels]),
            )
        return split
    raise KeyError(f"unknown image dataset {name!r}; known: {', '.join(DATASETS)}")


def subset_indices(n: int, limit: int | None, fraction: float, seed: int) -> np.ndarray:
    """Indices of a fixed training subset: a seeded permutation of ``range(n)``, cut to ``limit``
    examples (if given), then to ``fraction`` of that. Subsets are nested: the 25% subset is
    inside the 50% one, which is inside the full (or limited) set."""
    if not 0 < fraction <= 1:
        raise ValueError(f"data_fraction must be in (0, 1], got {fraction}")
    base = min(n, limit) if limit else n
    keep = max(1, int(round(base * fraction)))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:keep])
