"""Test-time augmentation: exact inverses, invariance of equivariant predictors, composition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unetseg.infer.predict import overlap_tile_logits, sliding_window_logits
from unetseg.infer.tta import (
    Dihedral,
    Rotation,
    dihedral_transforms,
    parse_tta,
    rotate,
    tta_predictor,
    with_tta,
)
from unetseg.model.geometry import valid_margin

# an isotropic 3x3 kernel: convolving with it commutes with flips and quarter turns
KERNEL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16


def symmetric_predictor(batch: torch.Tensor) -> torch.Tensor:
    """Same-padding, D4-equivariant: (B, 1, h, w) -> (B, 2, h, w)."""
    blurred = F.conv2d(batch, KERNEL.view(1, 1, 3, 3).to(batch.dtype), padding=1)
    return torch.cat([torch.tanh(3 * blurred), blurred**2], dim=1)


def ramp_predictor(batch: torch.Tensor) -> torch.Tensor:
    """Not equivariant: logits grow to the right."""
    cols = torch.arange(batch.shape[-1], dtype=batch.dtype)
    return torch.cat([batch * cols, -batch], dim=1)


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(1, 1, H, W) random values on a 16-pixel lattice, bicubically interpolated."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 1, height // 16 + 2, width // 16 + 2), generator=g)
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)


@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (1, 2, 6, 9), (3, 1, 33, 20)])
def test_dihedral_inverses_are_exact(shape):
    x = torch.rand(shape)
    seen = set()
    for t in dihedral_transforms():
        y = t.forward(x)
        assert torch.equal(t.inverse(y), x)
        seen.add(y.flatten().tolist().__repr__() if shape[-1] == shape[-2] else t)
    assert len(dihedral_transforms()) == 8 and len(set(dihedral_transforms())) == 8
    if shape[-1] == shape[-2]:
        assert len(seen) == 8  # eight different images of a random square


def test_rotation_inverse_is_close_in_the_interior():
    x = smooth_image(64, 64)
    for degrees in (20.0, 45.0, 137.0):
        back = Rotation(degrees).inverse(Rotation(degrees).forward(x))
        inner = (slice(None), slice(None), slice(12, -12), slice(12, -12))
        assert (back - x)[inner].abs().max() < 0.01
    assert torch.allclose(rotate(x, 90.0), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5)


@pytest.mark.parametrize("mode", ["flip", "d4", "rot:4", "rot:8"])
def test_tta_of_an_equivariant_predictor_equals_the_plain_one(mode):
    x = torch.cat([smooth_image(48, 63, seed=2), torch.rand(1, 1, 48, 63)])
    plain = symmetric_predictor(x)
    got = with_tta(symmetric_predictor, mode)(x)
    if mode == "rot:8":  # 45-degree steps resample: only a smooth interior is comparable
        inner = (0, slice(None), slice(12, -12), slice(12, -12))
        assert (got - plain)[inner].abs().max() < 0.03
    else:
        assert torch.allclose(got, plain, atol=1e-6)
    assert not torch.allclose(with_tta(ramp_predictor, "flip")(x), ramp_predictor(x))


def test_rotation_tta_of_a_pointwise_predictor_is_close_away_from_borders():
    x = smooth_image(80, 80, seed=1)

    def pointwise(b: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.sigmoid(4 * b - 2), b**3], dim=1)

    got = with_tta(pointwise, "rot:7")(x)
    inner = (slice(None), slice(None), slice(16, -16), slice(16, -16))
    assert (got - pointwise(x))[inner].abs().max() < 0.02
    assert (got - pointwise(x)).abs().mean() < 0.03  # mirrored corners included


def test_modes_call_the_predictor_once_per_transform():
    calls: list[tuple[int, ...]] = []

    def counting(b: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(b.shape))
        return b

    for mode, n in (("flip", 4), ("d4", 8), ("rot:7", 7), ("rot:1", 1)):
        calls.clear()
        out = with_tta(counting, mode)(torch.rand(1, 1, 10, 12))
        assert len(calls) == n and out.shape == (1, 1, 10, 12)
    assert {type(t) for t in parse_tta("rot:7")} == {Dihedral, Rotation}
    assert parse_tta("rot:4") == [Dihedral(0), Dihedral(1), Dihedral(2), Dihedral(3)]
    angles = [t.degrees for t in parse_tta("rot:7") if isinstance(t, Rotation)]
    assert angles == pytest.approx([360 * k / 7 for k in range(1, 7)])
    assert parse_tta(None) == [] and tta_predictor(counting, []) is counting
    for bad in ("flips", "rot:0", "rot:x", "d8"):
        with pytest.raises(ValueError, match="flip, d4 or rot:N"):
            parse_tta(bad)


def test_tta_composes_with_sliding_windows():
    image = torch.rand(1, 45, 70)
    plain = sliding_window_logits(symmetric_predictor, image, tile=32, overlap=0.25)
    wrapped = tta_predictor(symmetric_predictor, dihedral_transforms())
    tiled = sliding_window_logits(wrapped, image, tile=32, overlap=0.25)
    assert torch.allclose(tiled, plain, atol=1e-6)


def test_tta_composes_with_overlap_tiles():
    depth = 2
    margin = valid_margin(depth)

    def valid_predictor(batch: torch.Tensor) -> torch.Tensor:
        out = symmetric_predictor(batch)
        return out[..., margin:-margin, margin:-margin]  # centred, as a valid U-Net

    image = torch.rand(1, 37, 50)
    plain = overlap_tile_logits(valid_predictor, image, depth=depth, out_tile=16)
    wrapped = tta_predictor(valid_predictor, dihedral_transforms())
    tiled = overlap_tile_logits(wrapped, image, depth=depth, out_tile=16)
    assert torch.allclose(tiled, plain, atol=1e-6)
    assert math.isfinite(float(tiled.sum()))
