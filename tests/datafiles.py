"""Writers of tiny dataset files in the exact on-disk formats the real datasets use.

Each ``write_*(root, ...)`` creates, under ``root``, the layout that the dataset's official
download (through torchvision where it has one) leaves there, with a handful of examples, so
the readers and the workloads run the same code path as on the real data. Pixel values are
drawn from a seeded generator; labels cycle through every class so each one appears.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------- image datasets (vision.py)


def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _pickle(path: Path, obj: dict) -> None:
    # The official CIFAR pickles were written by Python 2 cPickle (protocol 2).
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _class_tinted(rng: np.random.Generator, labels: list[int]) -> np.ndarray:
    """N x 3072 CIFAR rows: uniform noise in [0, 128) plus a colour of the label's own (each
    channel 0 or 127), so a model can learn the classes, and crop and flip keep them."""
    colours = np.array([[(c >> k) & 1 for k in range(3)] for c in range(10)]) * 127  # 10 x RGB
    colours[8:] = colours[8:] // 2 + 32  # classes 8, 9 reuse 0, 1's bits: shift their level
    noise = rng.integers(0, 128, size=(len(labels), 3, 1024))
    return (noise + colours[labels][:, :, None]).astype(np.uint8).reshape(len(labels), 3072)


def write_cifar10(
    root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0, learnable: bool = False
) -> Path:
    """``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.

    Each batch is a dict with ``data`` (N x 3072 uint8, rows of R then G then B planes of a
    32x32 image), ``labels`` (list of int 0..9), ``batch_label`` and ``filenames``.
    ``n_train`` examples are spread over the five training batches. Pixels are noise; with
    ``learnable`` each image also carries its class's colour, so training reaches a target
    accuracy (``scripts/gpu_check.sh`` sweeps on such files).
    """
    rng = np.random.default_rng(seed)
    images = _class_tinted if learnable else (lambda r, labels: _images(r, len(labels), (3072,)))
    d = Path(root) / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    sizes = [len(a) for a in np.array_split(np.arange(n_train), 5)]
    start = 0
    for i, size in enumerate(sizes, 1):
        labels = [(start + j) % 10 for j in range(size)]
        _pickle(
            d / f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": labels,
                "data": images(rng, labels),
                "filenames": [f"img_{start + j}.png" for j in range(size)],
            },
        )
        start += size
    _pickle(
        d / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": [j % 10 for j in range(n_test)],
            "data": images(rng, [j % 10 for j in range(n_test)]),
            "filenames": [f"test_{j}.png" for j in range(n_test)],
        },
    )
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    _pickle(
        d / "batches.meta", {"num_cases_per_batch": 10000, "label_names": names, "num_vis": 3072}
    )
    return d


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """``root/cifar-100-python/{train, test, meta}`` with ``fine_labels`` 0..99 and ``coarse_labels`` 0..19."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = [j % 100 for j in range(n)]
        _pickle(
            d / split,
            {
                "filenames": [f"{split}_{j}.png" for j in range(n)],
                "batch_label": f"{split} batch",
                "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
                "data": _images(rng, n, (3072,)),
            },
        )
    _pickle(
        d / "meta",
        {
            "fine_label_names": [f"fine_{i}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i}" for i in range(20)],
        },
    )
    return d


def _idx_bytes(array: np.ndarray) -> bytes:
    # idx format: magic 0x0000 | type 0x08 (ubyte) | ndim, then big-endian int32 dims, then data.
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(
    root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0, gz: bool = False
) -> Path:
    """``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (as torchvision's MNIST
    leaves them), or only the ``.gz`` archives with ``gz=True`` (as the MNIST site serves them)."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "MNIST" / "raw"
    d.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        files = {
            f"{prefix}-images-idx3-ubyte": _images(rng, n, (28, 28)),
            f"{prefix}-labels-idx1-ubyte": np.arange(n, dtype=np.uint8) % 10,
        }
        for name, array in files.items():
            data = _idx_bytes(array)
            if gz:
                with gzip.open(d / f"{name}.gz", "wb") as f:
                    f.write(data)
            else:
                (d / name).write_bytes(data)
    return d


def write_svhn(
    root: Path, n_train: int = 50, n_test: int = 20, n_extra: int = 0, seed: int = 0
) -> Path:
    """``root/svhn/{train,test[,extra]}_32x32.mat`` (MATLAB v5 as scipy writes it).

    ``X`` is 32 x 32 x 3 x N uint8, ``y`` is N x 1 with labels 1..10, where 10 is the digit 0.
    """
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    d = Path(root) / "svhn"
    d.mkdir(parents=True, exist_ok=True)
    splits = [("train", n_train), ("test", n_test)] + ([("extra", n_extra)] if n_extra else [])
    for split, n in splits:
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n, dtype=np.uint8) % 10 + 1).reshape(n, 1)  # 1..10, 10 = digit 0
        savemat(d / f"{split}_32x32.mat", {"X": x, "y": y})
    return d


# ------------------------------------------------- language and segmentation (language.py, segmentation.py)

_WIKI_WORDS = (
    "the", "of", "and", "in", "to", "a", "was", "The", ",", ".", "is", "for", "as", "on",
    "with", "by", "he", "that", "from", "at", "his", "it", "an", "were", "which", "@-@", "@,@", "@.@",
    "1", "2", "3", "first", "album", "game", "season", "river", "song", "team", "year", "<unk>",
)  # fmt: skip


def _wiki_lines(rng: np.random.Generator, n_paragraphs: int, title: str) -> list[str]:
    # The real files: " = Title = " headings, " = = Section = = " subheadings, paragraphs of
    # space-separated tokens, and a blank line " " between them (every line starts with a space).
    lines = [" ", f" = {title} = ", " "]
    for p in range(n_paragraphs):
        if p % 3 == 2:
            lines += [f" = = Section {p} = = ", " "]
        words = rng.choice(_WIKI_WORDS, size=int(rng.integers(20, 40)))
        lines += [" " + " ".join(words) + " . ", " "]
    return lines


def write_wikitext2(
    root: Path, variant: str = "wikitext-2", seed: int = 0, train_paragraphs: int = 30
) -> Path:
    """``root/wikitext-2/wiki.{train,valid,test}.tokens`` (or ``root/wikitext-2-raw/wiki.*.raw``).

    UTF-8 text in the WikiText layout. The training file holds every word of the word list,
    so the tokenised variant's vocabulary is closed as the real one is; the raw variant's
    validation file adds one word (``zyzzyva``) that the training file lacks.
    """
    rng = np.random.default_rng(seed)
    d = Path(root) / variant
    d.mkdir(parents=True, exist_ok=True)
    ext = ".raw" if variant == "wikitext-2-raw" else ".tokens"
    train = _wiki_lines(rng, train_paragraphs, "Train Article") + [
        " " + " ".join([*_WIKI_WORDS, "Valid", "Test"]) + " "
    ]
    valid = _wiki_lines(rng, 6, "Valid Article")
    if variant == "wikitext-2-raw":
        valid.append(" zyzzyva . ")
    test = _wiki_lines(rng, 6, "Test Article")
    for split, lines in (("train", train), ("valid", valid), ("test", test)):
        (d / f"wiki.{split}{ext}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


def write_cityscapes(
    root: Path,
    splits: dict[str, dict[str, int]] | None = None,
    size: tuple[int, int] = (64, 128),
    seed: int = 0,
) -> Path:
    """``root/cityscapes/{leftImg8bit,gtFine}/<split>/<city>/...`` with small PNG pairs.

    ``splits`` maps split -> city -> number of frames (default: train aachen 2 + bochum 1,
    val frankfurt 2). Images are ``<city>_<seq>_<frame>_leftImg8bit.png`` (8-bit RGB,
    ``size`` = (height, width)); labels ``..._gtFine_labelIds.png`` (8-bit grey, Cityscapes
    label ids: sky 23 on top, building 11, a car 26, road 7 at the bottom, a parking patch 9
    and an ego-vehicle strip 1 (both ignored in train ids), plus a ``..._gtFine_color.png``
    beside it as in the real archive. Pixel colours follow the class, plus noise.
    """
    from PIL import Image

    splits = splits or {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}}
    rng = np.random.default_rng(seed)
    h, w = size
    colours = {
        23: (70, 130, 180),
        11: (70, 70, 70),
        26: (0, 0, 142),
        7: (128, 64, 128),
        9: (250, 170, 160),
        1: (0, 0, 0),
    }
    base = Path(root) / "cityscapes"
    for split, cities in splits.items():
        for city, frames in cities.items():
            img_dir = base / "leftImg8bit" / split / city
            gt_dir = base / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            for f in range(frames):
                labels = np.full((h, w), 11, dtype=np.uint8)
                horizon = h // 3 + int(rng.integers(-3, 4))
                labels[:horizon] = 23
                labels[2 * h // 3 :] = 7
                x0 = int(rng.integers(0, w - w // 4))
                labels[h // 2 : 5 * h // 6, x0 : x0 + w // 4] = 26
                labels[5 * h // 6 :, : w // 8] = 9
                labels[-2:] = 1
                rgb = np.zeros((h, w, 3), dtype=np.int16)
                for label_id, colour in colours.items():
                    rgb[labels == label_id] = colour
                rgb = np.clip(rgb + rng.integers(-20, 21, size=rgb.shape), 0, 255).astype(np.uint8)
                stem = f"{city}_{f:06d}_{19 + 10 * f:06d}"
                Image.fromarray(rgb, "RGB").save(img_dir / f"{stem}_leftImg8bit.png")
                Image.fromarray(labels, "L").save(gt_dir / f"{stem}_gtFine_labelIds.png")
                Image.fromarray(rgb, "RGB").save(gt_dir / f"{stem}_gtFine_color.png")
    return base
