"""HD95 and normalised surface Dice of volumes with physical spacing, against a brute-force
reference: boundary voxels found by looking at each voxel's six neighbours, every pair of them
measured by numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unetseg.metrics_boundary import boundary, hd95, surface_dice


def _boundary_by_hand(region: np.ndarray) -> np.ndarray:
    """Voxels of ``region`` with a face neighbour outside it or outside the volume."""
    padded = np.pad(region, 1, constant_values=False)
    inner = np.ones_like(region)
    for axis in range(region.ndim):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[tuple(slice(1, -1) for _ in region.shape)]
    return region & ~inner


def _pairs(pred: np.ndarray, truth: np.ndarray, c: int, spacing) -> tuple | None:
    p, t = (pred == c) & (truth >= 0), truth == c
    if not p.any() or not t.any():
        return None
    a = np.argwhere(_boundary_by_hand(p)) * np.asarray(spacing, float)
    b = np.argwhere(_boundary_by_hand(t)) * np.asarray(spacing, float)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return d.min(1), d.min(0)


def _blobby(rng: np.random.Generator, shape: tuple[int, ...], k: int) -> np.ndarray:
    small = rng.integers(0, k, size=tuple(s // 3 + 1 for s in shape))
    big = np.kron(small, np.ones((3,) * len(shape), int))
    return big[tuple(slice(0, s) for s in shape)]


def _case(seed: int):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(5, 13, size=3))
    k = int(rng.integers(2, 4))
    truth = _blobby(rng, shape, k)
    pred = np.where(rng.random(shape) < 0.1, rng.integers(0, k, shape), _blobby(rng, shape, k))
    truth[rng.random(shape) < 0.05] = -1
    spacing = tuple(float(v) for v in rng.choice([0.5, 1.0, 2.5], size=3))
    return pred, truth, k, spacing


def test_boundary_of_a_volume_is_its_six_neighbour_surface() -> None:
    region = np.zeros((5, 6, 7), bool)
    region[1:4, 1:6, 2:7] = True
    assert np.array_equal(boundary(region), _boundary_by_hand(region))
    assert not boundary(region)[2, 3, 4] and boundary(region)[2, 3, 6]


@pytest.mark.parametrize("seed", range(6))
def test_volume_hd95_with_spacing_matches_all_pairs(seed: int) -> None:
    pred, truth, k, spacing = _case(seed)
    expected = []
    for c in range(k):
        pairs = _pairs(pred, truth, c, spacing)
        expected.append(math.nan if pairs is None
                        else max(np.percentile(pairs[0], 95), np.percentile(pairs[1], 95)))
    np.testing.assert_allclose(hd95(pred, truth, k, spacing=spacing), expected,
                               rtol=0, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("seed", range(6))
def test_surface_dice_with_spacing_matches_all_pairs(seed: int) -> None:
    pred, truth, k, spacing = _case(seed)
    tolerance = 1.5
    expected = []
    for c in range(k):
        pairs = _pairs(pred, truth, c, spacing)
        if pairs is None:
            expected.append(math.nan)
            continue
        within = (pairs[0] <= tolerance).sum() + (pairs[1] <= tolerance).sum()
        expected.append(within / (pairs[0].size + pairs[1].size))
    got = surface_dice(pred, truth, k, tolerance, spacing=spacing)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12, equal_nan=True)


def test_a_slab_shifted_by_one_slice_is_one_slice_thickness_away() -> None:
    truth = np.zeros((10, 8, 8), int)
    truth[3:6, 2:6, 2:6] = 1
    pred = np.roll(truth, 1, axis=0)
    # 1 voxel along z is 3.0 units; along y and x 0.5
    assert hd95(pred, truth, 2, percentile=100, spacing=(3.0, 0.5, 0.5))[1] == pytest.approx(3.0)
    nsd = surface_dice(pred, truth, 2, tolerance=2.9, spacing=(3.0, 0.5, 0.5))[1]
    assert 0 < nsd < 1  # the side walls match, the top and bottom faces are one slice off
    assert surface_dice(pred, truth, 2, tolerance=3.0, spacing=(3.0, 0.5, 0.5))[1] == 1.0
    assert surface_dice(truth, truth, 2, tolerance=0.0)[1] == 1.0


def test_bad_spacing_is_refused() -> None:
    volume = np.zeros((3, 3, 3), int)
    volume[1, 1, 1] = 1
    with pytest.raises(ValueError, match="one positive size per axis"):
        hd95(volume, volume, 2, spacing=(1.0, 1.0))
