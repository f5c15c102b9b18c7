"""Instance targets against brute-force definitions, and instance labels through the patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unetseg.config import DataConfig, InstanceConfig
from unetseg.data.classes import IGNORE_INDEX, ClassTable
from unetseg.data.dataset import LoadedPair, PatchDataset
from unetseg.data.instance_targets import (
    BOUNDARY,
    INTERIOR,
    attach_instances,
    batch_targets,
    boundary_classes,
    instance_targets,
    normalized_distance,
    output_channels,
    relabel_consecutive,
    target_class_names,
    target_ids,
)
from unetseg.data.weights import border_weight_map


def random_labels(seed: int, size: tuple[int, int] = (14, 17), objects: int = 5) -> np.ndarray:
    """Rectangles and discs of random ids (later ones over earlier ones) on background."""
    rng = np.random.default_rng(seed)
    h, w = size
    labels = np.zeros(size, np.int64)
    yy, xx = np.mgrid[:h, :w]
    for k in range(objects):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, 5)
        shape = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if k % 2 else (
            (abs(yy - cy) <= r) & (abs(xx - cx) <= r + 1))
        labels[shape] = int(rng.integers(1, 1000))
    return labels


def brute_boundary(labels: np.ndarray, width: int) -> np.ndarray:
    h, w = labels.shape
    out = np.zeros(labels.shape, np.int64)
    for y in range(h):
        for x in range(w):
            if labels[y, x] < 0:
                out[y, x] = IGNORE_INDEX
            elif labels[y, x] > 0:
                window = labels[max(0, y - width): y + width + 1, max(0, x - width): x + width + 1]
                out[y, x] = BOUNDARY if (window != labels[y, x]).any() else INTERIOR
    return out


def brute_distance(labels: np.ndarray) -> np.ndarray:
    h, w = labels.shape
    out = np.zeros(labels.shape)
    ys, xs = np.mgrid[:h, :w]
    for value in np.unique(labels[labels > 0]):
        inside = labels == value
        outside = ~inside
        d = np.full(labels.shape, 0.0)
        for y, x in zip(*np.nonzero(inside)):
            d[y, x] = np.sqrt(((ys[outside] - y) ** 2 + (xs[outside] - x) ** 2).min())
        out[inside] = d[inside] / d[inside].max()
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("width", [1, 2, 3])
def test_boundary_classes_match_the_definition(seed: int, width: int) -> None:
    labels = random_labels(seed)
    labels[0, :3] = -1  # ignored pixels are a label of their own
    np.testing.assert_array_equal(boundary_classes(labels, width), brute_boundary(labels, width))


def test_boundary_by_hand_two_touching_squares() -> None:
    labels = np.zeros((7, 12), np.int64)
    labels[1:6, 1:6] = 1
    labels[1:6, 6:11] = 2  # touches object 1 along a column
    expected = np.zeros_like(labels)
    expected[1:6, 1:11] = BOUNDARY
    expected[2:5, 2:5] = INTERIOR
    expected[2:5, 7:10] = INTERIOR
    np.testing.assert_array_equal(boundary_classes(labels, 1), expected)


def test_the_image_border_is_no_boundary() -> None:
    labels = np.full((6, 6), 3)
    assert (boundary_classes(labels, 2) == INTERIOR).all()
    assert (normalized_distance(labels) == 1).all()


@pytest.mark.parametrize("seed", range(6))
def test_normalized_distance_matches_brute_force(seed: int) -> None:
    labels = random_labels(seed)
    np.testing.assert_allclose(normalized_distance(labels), brute_distance(labels), atol=1e-6)


def test_distance_of_a_disc_peaks_at_its_centre() -> None:
    yy, xx = np.mgrid[:21, :21]
    labels = ((yy - 10) ** 2 + (xx - 10) ** 2 <= 49).astype(np.int64)
    d = normalized_distance(labels)
    assert d[10, 10] == 1.0 and d.max() == 1.0
    assert 0 < d[10, 3] < d[10, 6] < d[10, 10]  # rises towards the centre
    assert d[0, 0] == 0


def test_targets_in_the_loss_order_and_weights_around_interiors() -> None:
    labels = random_labels(3, (24, 24), 8)
    boundary = InstanceConfig(target="boundary", boundary_width=2)
    ids, weights = instance_targets(labels, boundary, weighted=True, w0=10, sigma=5)
    np.testing.assert_array_equal(ids, boundary_classes(labels, 2))
    interiors = np.where(ids == INTERIOR, labels, 0)
    np.testing.assert_allclose(weights, border_weight_map(ids, 3, instances=interiors))
    distance = InstanceConfig(target="distance")
    ids, dist = instance_targets(labels, distance)
    np.testing.assert_array_equal(ids, (labels > 0).astype(np.int64))
    np.testing.assert_allclose(dist, normalized_distance(labels))
    for cfg in (boundary, distance):
        np.testing.assert_array_equal(target_ids(labels, cfg), instance_targets(labels, cfg)[0])
    assert output_channels(boundary) == 3 == len(target_class_names(boundary))
    assert output_channels(distance) == 3 and len(target_class_names(distance)) == 2


def test_batch_targets_stack_the_images_targets() -> None:
    labels = np.stack([random_labels(s) for s in range(3)])
    labels[1, 2:4, 2:4] = -1
    cfg = InstanceConfig(target="distance")
    ids, dist, weights = batch_targets(torch.from_numpy(labels), cfg, weighted=True)
    assert ids.dtype == torch.int64 and dist.dtype == torch.float32
    assert weights.shape == ids.shape == labels.shape
    for k in range(3):
        want = instance_targets(labels[k], cfg, weighted=True)
        for got, expected in zip((ids, dist, weights), want):
            np.testing.assert_allclose(got[k].numpy(), expected)
    assert (ids[1, 2:4, 2:4] == IGNORE_INDEX).all()


def test_relabel_consecutive() -> None:
    labels = np.array([[0, 70000, 5], [5, -1, 9]])
    np.testing.assert_array_equal(relabel_consecutive(labels), [[0, 3, 1], [1, -1, 2]])


def _pair(tmp_path: Path, ids: np.ndarray, instances: np.ndarray | None) -> LoadedPair:
    from PIL import Image

    (tmp_path / "masks").mkdir(parents=True, exist_ok=True)
    if instances is not None:
        (tmp_path / "instances").mkdir(exist_ok=True)
        Image.fromarray(instances.astype(np.uint16)).save(tmp_path / "instances" / "a.png")
    return LoadedPair("a", np.zeros((1, *ids.shape), np.float32), ids, tmp_path / "images/a.png",
                      tmp_path / "masks" / "a.png")


def test_attach_instances_reads_the_folder_or_labels_components(tmp_path: Path) -> None:
    ids = np.zeros((6, 8), np.int16)
    ids[1:5, 1:7] = 1  # one blob in the mask ...
    ids[0, 0] = IGNORE_INDEX
    classes = ClassTable.from_values((0, 255))
    pair = _pair(tmp_path / "cc", ids, None)
    attach_instances([pair], classes, DataConfig())
    assert pair.instances is not None
    assert set(np.unique(pair.instances)) == {-1, 0, 1}
    truth = np.zeros((6, 8), np.int64)
    truth[1:5, 1:4], truth[1:5, 4:7] = 300, 7  # ... that is two touching objects
    pair = _pair(tmp_path / "folder", ids, truth)
    attach_instances([pair], classes, DataConfig())
    assert pair.instances is not None
    assert pair.instances[0, 0] == -1
    np.testing.assert_array_equal(pair.instances[1:], relabel_consecutive(truth)[1:])


def test_patches_crop_the_instances_with_the_image() -> None:
    rng = np.random.default_rng(0)
    instances = rng.integers(0, 50, (40, 30)).astype(np.int32)
    image = instances[None].astype(np.float32)
    pair = LoadedPair("a", image, (instances > 0).astype(np.int16), Path("a"), Path("b"),
                      instances=instances)
    dataset = PatchDataset([pair], 16, length=6, seed=1)
    for i in range(6):
        crop, ids, labels = dataset[i]
        assert labels.dtype == torch.int64
        np.testing.assert_array_equal(crop[0].numpy(), labels.numpy().astype(np.float32))
        np.testing.assert_array_equal(ids.numpy(), (labels > 0).numpy())
