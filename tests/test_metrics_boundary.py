"""HD95 against a brute-force reference: every pair of boundary pixels, distances by numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unetseg.metrics_boundary import boundary, hd95


def _boundary_by_hand(region: np.ndarray) -> np.ndarray:
    """Region pixels with a 4-neighbour outside the region or outside the image."""
    padded = np.pad(region, 1, constant_values=False)
    inner = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return region & ~inner


def _hd95_brute(pred: np.ndarray, truth: np.ndarray, k: int) -> list[float]:
    out = []
    for c in range(k):
        p, t = (pred == c) & (truth >= 0), truth == c
        if not p.any() or not t.any():
            out.append(math.nan)
            continue
        a = np.argwhere(_boundary_by_hand(p)).astype(float)
        b = np.argwhere(_boundary_by_hand(t)).astype(float)
        d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # all pairs
        out.append(max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95)))
    return out


def _blobby(rng: np.random.Generator, shape: tuple[int, int], k: int) -> np.ndarray:
    """Class ids in patches (not salt and pepper), so regions have real boundaries."""
    small = rng.integers(0, k, size=(shape[0] // 4 + 1, shape[1] // 4 + 1))
    return np.kron(small, np.ones((4, 4), int))[: shape[0], : shape[1]]


@pytest.mark.parametrize("seed", range(8))
def test_hd95_matches_all_pairs_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(9, 30)), int(rng.integers(9, 30)))
    k = int(rng.integers(2, 5))
    truth = _blobby(rng, shape, k)
    pred = np.where(rng.random(shape) < 0.1, rng.integers(0, k, shape), _blobby(rng, shape, k))
    truth[rng.random(shape) < 0.05] = -1  # ignored
    np.testing.assert_allclose(hd95(pred, truth, k), _hd95_brute(pred, truth, k),
                               rtol=0, atol=1e-9, equal_nan=True)


def test_boundary_is_the_four_neighbour_edge_and_the_image_frame() -> None:
    region = np.zeros((6, 7), bool)
    region[1:5, 2:7] = True  # touches the right edge of the image
    assert np.array_equal(boundary(region), _boundary_by_hand(region))
    assert boundary(region)[2, 6] and not boundary(region)[2, 4]


def test_shifted_square_and_absent_classes() -> None:
    truth = np.zeros((20, 20), int)
    truth[5:12, 5:12] = 1
    pred = np.roll(truth, 3, axis=1)  # the square moved 3 pixels right
    got = hd95(pred, truth, 3)
    assert got[1] == pytest.approx(3.0)
    assert math.isnan(got[2])  # absent from both
    assert math.isnan(hd95(np.zeros_like(truth), truth, 2)[1])  # predicted nowhere
    assert hd95(truth, truth, 2).tolist() == [0.0, 0.0]
