"""The datasets the workloads read: where each comes from, and fetching it into the data root.

Image datasets come through torchvision's downloaders, which leave exactly the layout the
readers in :mod:`trainables.datasets.images` expect. WikiText-2 and Cityscapes belong to
:mod:`trainables.datasets.wikitext` and :mod:`trainables.datasets.cityscapes`: when such a
module has ``download(root)`` it is called; otherwise the manual step is printed (Cityscapes
needs a login on its site, so it cannot be fetched by a script).

``--root`` defaults to the data root every trial uses when its job sets no ``data_root``:
``$CRITBATCH_DATA``, else ``~/.critbatch/data``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainables.api import InputError
from trainables.datasets import images


@dataclass(frozen=True)
class DataSource:
    name: str
    description: str
    size: str  # download size, for the listing
    files: tuple[str, ...]  # paths under the root that must exist (the first is shown)
    fetch: Callable[[Path], None] | None = None  # None: `module` provides download(), or manual
    module: str = ""  # trainables.datasets module owning a non-image dataset
    manual: str = ""  # the manual step when nothing can fetch it

    def present(self, root: Path) -> bool:
        # MNIST's idx files count when only their .gz archives are there (the reader takes both)
        return all((root / f).exists() or (root / f"{f}.gz").exists() for f in self.files)


def _cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10

    CIFAR10(str(root), train=True, download=True)


def _cifar100(root: Path) -> None:
    from torchvision.datasets import CIFAR100

    CIFAR100(str(root), train=True, download=True)


def _mnist(root: Path) -> None:
    from torchvision.datasets import MNIST

    MNIST(str(root), train=True, download=True)  # fetches all four idx files into MNIST/raw


def _svhn(*splits: str) -> Callable[[Path], None]:
    def fetch(root: Path) -> None:
        from torchvision.datasets import SVHN

        for split in splits:
            SVHN(str(root / images.SVHN_DIR), split=split, download=True)

    return fetch


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

SOURCES: dict[str, DataSource] = {
    s.name: s
    for s in (
        DataSource(
            "cifar10",
            "CIFAR-10, 50,000 train / 10,000 test 32x32 colour images, 10 classes",
            "163 MB",
            tuple(
                f"{images.CIFAR10_DIR}/{f}" for f in (*images.CIFAR10_TRAIN, *images.CIFAR10_TEST)
            ),
            _cifar10,
        ),
        DataSource(
            "cifar100",
            "CIFAR-100, 50,000 train / 10,000 test 32x32 colour images, 100 classes",
            "161 MB",
            (f"{images.CIFAR100_DIR}/train", f"{images.CIFAR100_DIR}/test"),
            _cifar100,
        ),
        DataSource(
            "mnist",
            "MNIST, 60,000 train / 10,000 test 28x28 grey digits (idx files)",
            "12 MB",
            tuple(f"{images.MNIST_DIR}/{f}" for f in _MNIST_FILES),
            _mnist,
        ),
        DataSource(
            "svhn",
            "SVHN cropped digits, 73,257 train / 26,032 test 32x32 colour images (.mat)",
            "246 MB",
            (f"{images.SVHN_DIR}/train_32x32.mat", f"{images.SVHN_DIR}/test_32x32.mat"),
            _svhn("train", "test"),
        ),
        DataSource(
            "svhn-extra",
            "SVHN's 531,131 'extra' training images (option extra: true of svhn_resnet34)",
            "1.3 GB",
            (f"{images.SVHN_DIR}/extra_32x32.mat",),
            _svhn("extra"),
        ),
        DataSource(
            "wikitext2",
            "WikiText-2 (tokenised), 2.1M train tokens; wikitext2_lstm",
            "4 MB",
            ("wikitext-2",),
            module="trainables.datasets.wikitext",
            manual="unpack https://wikitext.smerity.com/wikitext-2-v1.zip into the root "
            "(it makes wikitext-2/wiki.{train,valid,test}.tokens)",
        ),
        DataSource(
            "cityscapes",
            "Cityscapes fine annotations, 2,975 train / 500 val images; the segmentation workload",
            "11 GB",
            ("cityscapes",),
            module="trainables.datasets.cityscapes",
            manual="Cityscapes needs a (free) login: download leftImg8bit_trainvaltest.zip and "
            "gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com/downloads/ and unzip "
            "both into ROOT/cityscapes (the layout trainables/datasets/cityscapes.py and "
            "docs/workloads.md describe)",
        ),
    )
}


def _module_download(source: DataSource) -> Callable[[Path], object] | None:
    if not source.module:
        return None
    try:
        mod = importlib.import_module(source.module)
    except ModuleNotFoundError as e:
        if e.name != source.module:
            raise
        return None
    return getattr(mod, "download", None)


def download(name: str, root: Path, force: bool = False) -> str:
    """Fetch dataset ``name`` into ``root``; returns what happened, in words.

    Raises :class:`InputError` with the manual step when it cannot be fetched by a script, or
    naming the dataset and the folder when the fetch fails (no network, a proxy, a full disk).
    """
    source = SOURCES[name]
    if source.present(root) and not force:
        return f"{name}: already present under {root} ({source.files[0]}); --force fetches it again"
    root.mkdir(parents=True, exist_ok=True)
    fetch = source.fetch or _module_download(source)
    if fetch is None:
        raise InputError(
            f"{name} cannot be downloaded by critbatch: {source.manual.replace('ROOT', str(root))}"
        )
    try:
        fetch(root)
    except OSError as e:
        raise InputError(
            f"downloading {name} into {root} failed: {e}; check the network, or place the files "
            "there by hand (critbatch data list shows where)"
        ) from None
    return f"{name}: downloaded into {root}"
