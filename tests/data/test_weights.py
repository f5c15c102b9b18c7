"""The border weight map against a slow brute-force reference on synthetic touching discs."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unetseg.config import DataConfig
from unetseg.data.classes import IGNORE_INDEX, ClassTable
from unetseg.data.dataset import LoadedPair, PatchDataset, load_data
from unetseg.data.weights import (
    attach_weight_maps,
    border_weight_map,
    class_balance_weights,
    cutoff_distance,
    nearest_two_distances,
    object_class_ids,
    objects_from_classes,
)
from unetseg.errors import UserError


def discs(shape: tuple[int, int], centres_radii: list[tuple[float, float, float]]) -> np.ndarray:
    """Instance labels: disc ``i`` (1-based) painted in order, later discs over earlier ones."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx, r) in enumerate(centres_radii, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = i
    return labels


# three discs, neighbours 1 or 2 pixels apart (centres 18 apart, radius 8.5 / 8)
TOUCHING = [(16, 14, 8.5), (16, 32, 8.5), (32, 23, 8.0)]


def brute_force(ids: np.ndarray, labels: np.ndarray, num_classes: int, w0: float,
                sigma: float) -> np.ndarray:
    """Eq. 2 of the U-Net paper by explicit loops over pixels and objects (every object pixel
    is visited for the distances)."""
    height, width = ids.shape
    counts = [int(np.sum(ids == k)) for k in range(num_classes)]
    present = sum(c > 0 for c in counts)
    objects = [np.argwhere(labels == i) for i in range(1, int(labels.max()) + 1)]
    out = np.zeros((height, width))
    for y in range(height):
        for x in range(width):
            k = int(ids[y, x])
            w = sum(counts) / (present * counts[k])
            if labels[y, x] == 0 and len(objects) >= 2:
                dists = sorted(float(np.min(np.hypot(pix[:, 0] - y, pix[:, 1] - x)))
                               for pix in objects)
                w += w0 * math.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
            out[y, x] = w
    return out


def test_touching_discs_from_connected_components_match_brute_force():
    labels = discs((48, 46), TOUCHING)
    ids = (labels > 0).astype(np.int16)  # class 1 = disc, class 0 = the gaps between them
    assert objects_from_classes(ids, [1]).max() == 3  # the gaps keep the discs apart
    got = border_weight_map(ids, 2)
    want = brute_force(ids, labels, 2, 10.0, 5.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    gap = (16, 23)  # between discs 1 and 2
    assert ids[gap] == 0 and got[gap] > 9.0  # w0 * exp(-(1 + 1)^2 / 50) = 9.23 plus w_c
    assert got.dtype == np.float32


def test_touching_instances_without_a_gap_use_the_instance_mask():
    labels = discs((40, 40), [(20, 12, 9), (20, 28, 9)])  # overlap: disc 2 painted over disc 1
    ids = (labels > 0).astype(np.int16)
    assert objects_from_classes(ids, [1]).max() == 1  # one blob as connected components
    got = border_weight_map(ids, 2, instances=labels * 7)  # any instance values
    want = brute_force(ids, labels, 2, 10.0, 5.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # without instances there is a single object and no border term
    np.testing.assert_allclose(border_weight_map(ids, 2), brute_force(ids, ids, 2, 10, 5))


@pytest.mark.parametrize("w0, sigma", [(10.0, 5.0), (3.0, 2.0), (25.0, 12.0)])
def test_windowed_distances_equal_the_full_transform(w0: float, sigma: float):
    rng = np.random.default_rng(3)
    spots = [(float(rng.uniform(0, 60)), float(rng.uniform(0, 150)), float(rng.uniform(2, 6)))
             for _ in range(12)]
    labels = discs((60, 150), spots)
    d1, d2 = nearest_two_distances(labels)
    w1, w2 = nearest_two_distances(labels, max_distance=cutoff_distance(w0, sigma))
    near = (d1 + d2) < cutoff_distance(w0, sigma)
    np.testing.assert_array_equal(d1[near], w1[near])
    np.testing.assert_array_equal(d2[near], w2[near])
    ids = (labels > 0).astype(np.int16)
    got = border_weight_map(ids, 2, w0=w0, sigma=sigma, connectivity=8)
    labels8 = objects_from_classes(ids, [1], connectivity=8)
    full1, full2 = nearest_two_distances(labels8)
    border = np.where(labels8 == 0, w0 * np.exp(-((full1 + full2) ** 2) / (2 * sigma**2)), 0)
    wc = class_balance_weights(ids, 2)[ids]
    np.testing.assert_allclose(got, wc + border, atol=1e-6)


def test_distances_by_brute_force_on_a_small_case():
    labels = discs((20, 25), [(5, 5, 3), (14, 18, 4), (4, 20, 2)])
    d1, d2 = nearest_two_distances(labels)
    objects = [np.argwhere(labels == i) for i in (1, 2, 3)]
    for y, x in [(0, 0), (10, 10), (19, 24), (5, 12)]:
        dists = sorted(float(np.min(np.hypot(p[:, 0] - y, p[:, 1] - x))) for p in objects)
        assert d1[y, x] == pytest.approx(dists[0]) and d2[y, x] == pytest.approx(dists[1])


def test_class_balance_and_ignored_pixels():
    ids = np.zeros((10, 10), np.int16)
    ids[:2] = 1  # 20 pixels of class 1, 80 of class 0
    ids[9, 9] = IGNORE_INDEX
    weights = border_weight_map(ids, 3)
    assert weights[9, 9] == 0
    valid = ids != IGNORE_INDEX
    assert weights[valid].mean() == pytest.approx(1.0)
    assert weights[0, 0] * 20 == pytest.approx(weights[5, 5] * 79)  # equal total per class
    np.testing.assert_allclose(class_balance_weights(ids, 3), [99 / 158, 99 / 40, 0.0])
    unbalanced = border_weight_map(ids, 3, balance=False)
    assert set(np.unique(unbalanced)) == {0.0, 1.0}


def test_object_classes_default_and_by_value():
    table = ClassTable.from_values((0, 255), ("membrane", "cell"))
    assert object_class_ids(table, None) == (1,)
    assert object_class_ids(table, (0,)) == (0,)
    with pytest.raises(UserError, match="--weight-objects 7"):
        object_class_ids(table, (7,))


def test_patch_dataset_crops_weights_with_the_ids():
    h, w = 37, 41
    ramp = np.arange(h * w, dtype=np.float32).reshape(h, w)
    pair = LoadedPair("a", ramp[None].copy(), (ramp % 3).astype(np.int16), Path("a"), Path("a"),
                      weights=ramp * 2)
    ds = PatchDataset([pair], 16, length=12, seed=1)
    for i in range(len(ds)):
        image, ids, weights = ds[i]
        assert weights.dtype == torch.float32 and weights.shape == (16, 16)
        assert torch.equal(weights, image[0] * 2)
        assert torch.equal(ids, (image[0] % 3).long())
    small = PatchDataset([pair], 48, length=2, seed=1)  # padded: weights mirrored like the image
    image, _, weights = small[0]
    assert torch.equal(weights, image[0] * 2)
    with pytest.raises(ValueError, match="every pair or none"):
        PatchDataset([pair, LoadedPair("b", pair.image, pair.ids, Path("b"), Path("b"))], 8,
                     length=1)


def test_attach_weight_maps_reads_instances(tmp_path: Path):
    root = tmp_path / "data"
    for sub in ("images", "masks", "instances"):
        (root / sub).mkdir(parents=True)
    labels = discs((40, 40), [(20, 12, 9), (20, 28, 9)])
    Image.fromarray(np.full((40, 40), 100, np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(((labels > 0) * 255).astype(np.uint8)).save(root / "masks" / "a.png")
    Image.fromarray(labels.astype(np.uint8)).save(root / "instances" / "a.png")
    table = ClassTable.from_values((0, 255))
    pairs = load_data(root).pairs
    attach_weight_maps(pairs, table, DataConfig())
    want = border_weight_map(pairs[0].ids, 2, instances=labels)
    np.testing.assert_array_equal(pairs[0].weights, want)
    assert pairs[0].weights.max() > 9  # the two touching instances are separated
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "instances" / "a.png")
    with pytest.raises(UserError, match="instances/a.png: instance image is 10x10"):
        load_data(root)  # the data check reads the instance images too
    fresh = [replace(p, weights=None) for p in pairs]
    with pytest.raises(UserError, match="instances/a.png"):
        attach_weight_maps(fresh, table, DataConfig())
    with pytest.raises(UserError, match="--weight-sigma"):
        attach_weight_maps(fresh, table, DataConfig(weight_sigma=0))


def test_isbi_mask_weights_are_high_on_thin_membranes(isbi_root: Path):
    table = ClassTable.from_values((0, 255), ("membrane", "cell"))
    pair = load_data(isbi_root).pairs[0]
    attach_weight_maps([pair], table, DataConfig())
    weights, ids = pair.weights, pair.ids
    assert weights.shape == ids.shape
    membrane = ids == 0
    assert weights[membrane].mean() > 2 * weights[~membrane].mean()
    assert np.all(weights[~membrane] == weights[~membrane][0])  # cells: w_c only
