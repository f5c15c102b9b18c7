"""Window placement, mirror padding and blend weights, checked against direct counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unetseg.infer.blending import blend_weight, constant_weight, gaussian_weight
from unetseg.infer.tiling import (
    iter_windows,
    max_stride,
    mirror_pad,
    overlap_tile_input_size,
    reflect_indices,
    tile_starts,
)
from unetseg.model.geometry import is_legal_input_size, valid_margin

SIZES = [1, 2, 7, 33, 63, 64, 100, 257, 513]
TILES = [1, 4, 16, 32, 64, 100, 512]
OVERLAPS = [0.0, 0.25, 0.5, 0.9]


@pytest.mark.parametrize("overlap", OVERLAPS)
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("size", SIZES)
def test_tile_starts_cover_axis_within_bounds(size: int, tile: int, overlap: float) -> None:
    starts = tile_starts(size, tile, overlap)
    length = min(tile, size)
    coverage = np.zeros(size, dtype=int)
    for s in starts:
        assert s >= 0 and s + length <= size
        coverage[s : s + length] += 1
    assert (coverage >= 1).all()
    assert starts[0] == 0
    assert starts[-1] == max(0, size - tile)
    strides = np.diff(starts)
    assert (strides >= 1).all()
    assert (strides <= max(1.0, tile * (1 - overlap)) + 1e-9).all()
    if size > tile:  # nnU-Net's window count
        assert len(starts) == math.ceil((size - tile) / max_stride(tile, overlap)) + 1


def test_tile_starts_examples() -> None:
    assert tile_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert tile_starts(10, 4, 0.0) == [0, 3, 6]  # 3 windows, evenly spread, last ends at 10
    assert tile_starts(8, 4, 0.0) == [0, 4]
    assert tile_starts(3, 4, 0.5) == [0]
    assert tile_starts(4, 4, 0.5) == [0]
    assert tile_starts(5, 1, 0.5) == [0, 1, 2, 3, 4]  # stride floors at 1 pixel
    assert max_stride(10, 0.7) == 3  # not 2 from 10 * 0.3 = 2.9999...


@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5])
def test_tile_starts_rejects_bad_overlap(overlap: float) -> None:
    with pytest.raises(ValueError, match=r"overlap must be a fraction in \[0, 1\)"):
        tile_starts(100, 16, overlap)


def test_tile_starts_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="tile"):
        tile_starts(100, 0, 0.25)
    with pytest.raises(ValueError, match="size"):
        tile_starts(0, 16, 0.25)


@pytest.mark.parametrize("height, width", [(1, 1), (7, 33), (63, 100), (257, 64), (100, 513)])
@pytest.mark.parametrize("tile_h, tile_w", [(16, 16), (32, 64), (100, 7)])
@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_iter_windows_cover_image(height: int, width: int, tile_h: int, tile_w: int,
                                  overlap: float) -> None:
    coverage = np.zeros((height, width), dtype=int)
    for ys, xs in iter_windows(height, width, tile_h, tile_w, overlap):
        assert 0 <= ys.start < ys.stop <= height and 0 <= xs.start < xs.stop <= width
        assert (ys.stop - ys.start, xs.stop - xs.start) == (min(tile_h, height), min(tile_w, width))
        coverage[ys, xs] += 1
    assert (coverage >= 1).all()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 20])
@pytest.mark.parametrize("before, after", [(0, 0), (1, 2), (5, 0), (20, 44)])
def test_reflect_indices_match_numpy(size: int, before: int, after: int) -> None:
    expected = np.pad(np.arange(size), (before, after), mode="reflect")
    assert reflect_indices(size, before, after).tolist() == expected.tolist()


def test_mirror_pad_matches_numpy() -> None:
    image = torch.randn(2, 5, 9)
    padded = mirror_pad(image, 3, 12, 20, 1)
    expected = np.pad(image.numpy(), ((0, 0), (3, 12), (20, 1)), mode="reflect")
    assert padded.shape == (2, 20, 30)
    np.testing.assert_array_equal(padded.numpy(), expected)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_overlap_tile_input_size_is_legal(depth: int, k: int) -> None:
    out_tile = k * 2**depth
    in_tile = overlap_tile_input_size(out_tile, depth)
    assert is_legal_input_size(in_tile, depth)
    extra = in_tile - 2 * valid_margin(depth) - out_tile
    assert extra == (0 if depth <= 2 else 4)


def test_overlap_tile_input_size_errors_suggest_fix() -> None:
    with pytest.raises(ValueError, match=r"multiple of 2\*\*depth = 4 .* use 16 or 20"):
        overlap_tile_input_size(18, 2)
    with pytest.raises(ValueError, match="use 16$"):
        overlap_tile_input_size(0, 4)


@pytest.mark.parametrize("tile_h, tile_w", [(1, 1), (2, 3), (7, 7), (16, 33), (64, 64)])
def test_gaussian_weight_properties(tile_h: int, tile_w: int) -> None:
    w = gaussian_weight(tile_h, tile_w)
    assert w.shape == (tile_h, tile_w) and w.dtype == torch.float32
    assert (w > 0).all()
    assert w.max().item() == pytest.approx(1.0)
    torch.testing.assert_close(w, w.flip(0))
    torch.testing.assert_close(w, w.flip(1))
    if tile_h == tile_w:
        torch.testing.assert_close(w, w.T)
    if tile_h >= 3 and tile_w >= 3:  # the centre outweighs the corner
        assert w[tile_h // 2, tile_w // 2] > w[0, 0]


def test_gaussian_weight_sigma_and_floor() -> None:
    w = gaussian_weight(1, 65, sigma_scale=0.125, min_weight=1e-9)[0].double()
    sigma = 0.125 * 65
    expected = torch.exp(-0.5 * ((torch.arange(65) - 32) / sigma) ** 2).double()
    torch.testing.assert_close(w, expected, rtol=1e-6, atol=1e-7)
    assert gaussian_weight(64, 64, min_weight=0.01).min().item() == pytest.approx(0.01)
    with pytest.raises(ValueError, match="sigma_scale"):
        gaussian_weight(8, 8, sigma_scale=0)


def test_gaussian_weight_cached_and_cast() -> None:
    assert gaussian_weight(16, 16) is gaussian_weight(16, 16)
    w64 = gaussian_weight(16, 16, dtype=torch.float64, device="cpu")
    assert w64.dtype == torch.float64 and w64.device.type == "cpu"


def test_constant_and_blend_weight() -> None:
    assert torch.equal(constant_weight(3, 5), torch.ones(3, 5))
    assert torch.equal(blend_weight("constant", 3, 5), torch.ones(3, 5))
    assert torch.equal(blend_weight("gaussian", 3, 5), gaussian_weight(3, 5))
    with pytest.raises(ValueError, match="unknown blend mode"):
        blend_weight("mean", 3, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tile sides"):
        constant_weight(0, 5)
