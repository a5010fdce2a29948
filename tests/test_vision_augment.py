"""On-device augmentation and normalisation of the image workloads; the models' 32x32 adaptation.

The augmentation tests run on CPU and, marked ``gpu``, on CUDA: the same code on both.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.models import build_model
from trainables.workloads.vision import DeviceImages, random_crop_flip

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ],
    ),
]


def _which_crop(out: torch.Tensor, src: torch.Tensor, pad: int) -> set[tuple[int, int, bool]]:
    """Every (dy, dx, flipped) whose crop of the zero-padded ``src`` equals ``out``."""
    padded = torch.nn.functional.pad(src, (pad,) * 4)
    h, w = src.shape[-2:]
    found = set()
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            for flipped in (False, True):
                if torch.equal(crop.flip(-1) if flipped else crop, out):
                    found.add((dy, dx, flipped))
    return found


@pytest.mark.parametrize("device", DEVICES)
def test_each_image_is_a_padded_crop_maybe_flipped(device):
    x = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8, device=device)  # no zeros
    gen = torch.Generator(device=device).manual_seed(0)
    out = random_crop_flip(x, gen, pad=4, flip=True)
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.device == x.device
    crops = [_which_crop(o.cpu(), s.cpu(), 4) for o, s in zip(out, x, strict=True)]
    assert all(len(c) == 1 for c in crops)  # random pixels: exactly one crop matches
    chosen = [next(iter(c)) for c in crops]
    assert len({(dy, dx) for dy, dx, _ in chosen}) > 20  # offsets drawn per image
    n_flipped = sum(f for _, _, f in chosen)
    assert 15 < n_flipped < 49  # about half of 64


@pytest.mark.parametrize("device", DEVICES)
def test_no_flip_for_digits_and_pad_zero_is_identity(device):
    x = torch.randint(1, 256, (32, 1, 32, 32), dtype=torch.uint8, device=device)
    gen = torch.Generator(device=device).manual_seed(1)
    out = random_crop_flip(x, gen, pad=4, flip=False)
    assert all(
        not f for o, s in zip(out, x, strict=True) for _, _, f in _which_crop(o.cpu(), s.cpu(), 4)
    )
    assert torch.equal(random_crop_flip(x, gen, pad=0, flip=False), x)


@pytest.mark.parametrize("device", DEVICES)
def test_augmentation_is_seeded_by_the_generator(device):
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, device=device)

    def run(seed: int) -> torch.Tensor:
        return random_crop_flip(x, torch.Generator(device=device).manual_seed(seed), 4, True)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


@pytest.mark.parametrize("device", DEVICES)
def test_normalise_and_channels_last(device):
    dev = torch.device(device)
    images = DeviceImages(
        (100.0, 50.0, 0.0),
        (2.0, 5.0, 10.0),
        dev,
        augment=False,
        pad=4,
        flip=True,
        channels_last=True,
    )
    x = torch.full((4, 3, 32, 32), 100, dtype=torch.uint8, device=dev)
    y = torch.arange(4, device=dev)
    out, labels = images((x, y), torch.Generator(device=dev).manual_seed(0))
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        out[:, :, 0, 0].cpu(), torch.tensor([[0.0, 10.0, 10.0]]).expand(4, 3)
    )
    assert labels is y


def _spatial_before_classifier(
    model: nn.Module, layer: nn.Module, channels: int
) -> tuple[int, ...]:
    seen: dict[str, tuple[int, ...]] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:  # None: output kept
        seen["shape"] = tuple(output.shape)

    handle = layer.register_forward_hook(hook)
    with torch.no_grad():
        model.eval()(torch.randn(2, channels, 32, 32))
    handle.remove()
    return seen["shape"]


@pytest.mark.parametrize(
    ("name", "params", "last"),
    [
        # parameter counts of the usual CIFAR adaptations (3 input channels, 10 classes)
        ("resnet34", 21_282_122, lambda m: m.layer4),
        ("vgg16", 14_728_266, lambda m: m.features),
        ("alexnet", 2_472_266, lambda m: m.features),
        ("mobilenetv2", 2_236_682, lambda m: m.features),
    ],
)
def test_models_sized_for_32x32(name, params, last):
    model = build_model(name, 10)
    assert sum(p.numel() for p in model.parameters()) == params
    shape = _spatial_before_classifier(model, last(model), 3)
    expected = {"resnet34": (4, 4), "mobilenetv2": (4, 4), "vgg16": (1, 1), "alexnet": (1, 1)}[name]
    assert shape[-2:] == expected  # resolution kept by the adapted stems, not thrown away
    grey = build_model(name, 100, in_channels=1).eval()
    with torch.no_grad():
        assert grey(torch.randn(2, 1, 32, 32)).shape == (2, 100)
