"""Cityscapes (fine annotations) from its standard layout, decoded once into uint8 tensors.

Layout under ``<data root>/cityscapes/`` (what ``leftImg8bit_trainvaltest.zip`` and
``gtFine_trainvaltest.zip`` unpack to; the data root is ``TrialConfig.data_root``, else
``$CRITBATCH_DATA``, else ``~/.critbatch/data``):

- ``leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png``: 8-bit RGB, 2048x1024;
- ``gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png``: 8-bit label ids 0..33.

Label ids map to the 19 training classes of the official benchmark (``cityscapesscripts``'
``labels.py``: road = 0 ... bicycle = 18); every other id (void, parking, rail track, guard
rail, bridge, tunnel, pole group, caravan, trailer, license plate) becomes 255 = ignore.
Images are kept in sorted path order (city, then sequence, then frame), so the first
``data_fraction`` of the training set is well defined. Cityscapes cannot be downloaded by a
script: it needs a registered account (:func:`download` says how).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

IGNORE = 255
CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
# labelId -> trainId for the 19 evaluated classes (cityscapesscripts/helpers/labels.py).
LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
TRAIN_IMAGES, VAL_IMAGES = 2975, 500
# Per-channel RGB mean and std of the training images (the DRN repository's info.json).
MEAN = (0.290101, 0.328081, 0.286964)
STD = (0.182954, 0.186566, 0.184475)
SITE = "https://www.cityscapes-dataset.com/downloads/"


def data_root(root: str = "") -> Path:
    """The dataset root: ``root`` if given, else ``$CRITBATCH_DATA``, else ``~/.critbatch/data``."""
    return Path(
        root or os.environ.get("CRITBATCH_DATA") or Path.home() / ".critbatch" / "data"
    ).expanduser()


def label_lut() -> np.ndarray:
    """A 256-entry uint8 table: ``lut[label_id]`` is the train id (255 where ignored)."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for label_id, train_id in LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


def _instructions(root: Path) -> str:
    return (
        f"Cityscapes needs a registered (free) account at {SITE}: log in, download "
        f"leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, and unzip both into "
        f"{root / 'cityscapes'} (giving {root / 'cityscapes' / 'leftImg8bit'} and "
        f"{root / 'cityscapes' / 'gtFine'})."
    )


def _missing(what: Path, root: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"Cityscapes not found: looked for {what} (data root {root}, from TrialConfig.data_root / "
        f"the job's data.root, else $CRITBATCH_DATA, else ~/.critbatch/data). {_instructions(root)}"
    )


def list_pairs(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """(image, labelIds) paths of a split, sorted; raises FileNotFoundError naming what is missing."""
    root = Path(root)
    base = root / "cityscapes"
    image_dir = base / "leftImg8bit" / split
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise _missing(image_dir / "<city>" / "<city>_<seq>_<frame>_leftImg8bit.png", root)
    pairs = []
    for img in images:
        stem = img.name.removesuffix("_leftImg8bit.png")
        label = base / "gtFine" / split / img.parent.name / f"{stem}_gtFine_labelIds.png"
        if not label.is_file():
            raise _missing(label, root)
        pairs.append((img, label))
    return pairs


def _decode(
    pair: tuple[Path, Path], downscale: int, lut: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    with Image.open(pair[0]) as raw, Image.open(pair[1]) as lab:
        im = raw.convert("RGB")
        if lab.mode not in ("L", "P"):
            raise ValueError(f"{pair[1]}: expected an 8-bit labelIds PNG, got mode {lab.mode}")
        if im.size != lab.size:
            raise ValueError(f"{pair[0]} is {im.size} but its labels {pair[1]} are {lab.size}")
        if downscale > 1:
            size = (im.width // downscale, im.height // downscale)
            im = im.resize(size, Image.Resampling.BILINEAR)  # antialiased when shrinking
            lab = lab.resize(size, Image.Resampling.NEAREST)  # ids must not be blended
        image = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)  # CHW
        labels = lut[np.asarray(lab, dtype=np.uint8)]
    return np.ascontiguousarray(image), labels


@functools.lru_cache(maxsize=4)
def _load(
    root: str, split: str, downscale: int, limit: int, workers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = list_pairs(root, split)
    if limit > 0:
        pairs = pairs[:limit]
    lut = label_lut()
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes with the GIL released
        decoded = list(pool.map(lambda p: _decode(p, downscale, lut), pairs))
    shapes = {img.shape for img, _ in decoded}
    if len(shapes) != 1:
        raise ValueError(
            f"Cityscapes {split} images differ in size ({sorted(shapes)}); expected one size"
        )
    images = torch.from_numpy(np.stack([img for img, _ in decoded]))
    labels = torch.from_numpy(np.stack([lab for _, lab in decoded]))
    return images, labels


def load_split(
    root: str = "", split: str = "train", downscale: int = 1, limit: int = 0, workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, H, W) uint8 RGB and train-id labels (N, H, W) uint8 of a split.

    ``downscale``: integer factor applied to both sides (bilinear for images, nearest for
    labels). ``limit``: keep the first ``limit`` images (0 = all). Decoded once per process.
    """
    if downscale < 1:
        raise ValueError(f"downscale must be an integer >= 1, got {downscale}")
    workers = workers or min(8, os.cpu_count() or 1)
    return _load(str(data_root(root)), split, int(downscale), int(limit), workers)


def download(root: str | Path = "") -> None:
    """Cityscapes has no scripted download; raises with the manual steps."""
    raise RuntimeError(_instructions(data_root(str(root))))
