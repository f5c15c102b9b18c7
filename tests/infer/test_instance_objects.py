"""From an instance network's maps to objects: the flooding, the post-processing, the object
table, the choice of parameters and tiled prediction without seams."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from unetseg.config import InstanceConfig, ModelConfig
from unetseg.data.instance_targets import boundary_classes, normalized_distance
from unetseg.data.normalize import ChannelStats
from unetseg.data.write import write_instances
from unetseg.infer.engine import ImagePredictor
from unetseg.infer.instances import (
    InstanceMaps,
    choose_postprocess,
    instance_maps,
    instances_from_logits,
    instances_from_maps,
    measure_objects,
    object_csv,
    remove_small,
    seeded_watershed,
)
from unetseg.metrics_instance import instance_scores


def touching_discs(size: tuple[int, int] = (40, 60), r: int = 10) -> np.ndarray:
    """Two discs of radius ``r`` side by side, touching along a column: ids 1 and 2."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h // 2, w // 2 - r
    labels = np.zeros(size, np.int32)
    labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    second = (yy - cy) ** 2 + (xx - cx - 2 * r + 1) ** 2 <= r * r
    labels[second & (labels == 0)] = 2
    return labels


def oracle_maps(labels: np.ndarray, target: str = "boundary") -> InstanceMaps:
    """The maps a perfect network of ``target`` would predict for ``labels``."""
    foreground = (labels > 0).astype(np.float32)
    if target == "boundary":
        seeds = (boundary_classes(labels, 2) == 1).astype(np.float32)
    else:
        seeds = normalized_distance(labels)
    return InstanceMaps(foreground, seeds)


@pytest.mark.parametrize("target", ["boundary", "distance"])
def test_watershed_splits_touching_discs_that_components_merge(target: str) -> None:
    truth = touching_discs()
    assert ndimage.label(truth > 0)[1] == 1  # connected components: one object
    labels = instances_from_maps(oracle_maps(truth, target), InstanceConfig(min_size=0))
    assert labels.max() == 2
    scores = instance_scores(truth, labels)
    assert scores.f1[0] == 1.0 and scores.tp[-4] == 2  # both found, IoU > 0.8
    disagree = (labels != truth)[truth > 0].sum()
    assert disagree <= 2 * truth.shape[0]  # at most the dividing column, off by one


def test_the_split_lies_between_the_seeds_from_either_side() -> None:
    truth = touching_discs((41, 60))
    for flip in (False, True):
        seen = truth[:, ::-1].copy() if flip else truth
        labels = instances_from_maps(oracle_maps(seen), InstanceConfig(min_size=0))
        assert (labels > 0).sum() == (seen > 0).sum()
        sizes = np.bincount(labels.ravel())[1:]
        assert len(sizes) == 2 and abs(int(sizes[0]) - int(sizes[1])) <= truth.shape[0] // 2


def test_flooding_agrees_with_scikit_image() -> None:
    segmentation = pytest.importorskip("skimage.segmentation")
    rng = np.random.default_rng(0)
    h = w = 160
    yy, xx = np.mgrid[:h, :w]
    seeds, mask = np.zeros((h, w)), np.zeros((h, w), bool)
    for _ in range(40):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(5, 15)
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        mask |= d <= r
        seeds = np.maximum(seeds, np.clip(1 - d / r, 0, 1))
    markers, count = ndimage.label(seeds > 0.5)
    ours = seeded_watershed(1 - seeds, markers, mask)
    theirs = segmentation.watershed(1 - seeds, markers, mask=mask, connectivity=1)
    assert len(np.unique(ours)) == len(np.unique(theirs)) == count + 1
    assert (ours != theirs)[mask].mean() < 0.01


def test_seedless_parts_holes_and_small_objects() -> None:
    foreground = np.zeros((30, 30), np.float32)
    foreground[2:12, 2:12] = 1.0  # a square with a seed and a hole
    foreground[6, 6] = 0.0
    foreground[20:26, 20:26] = 1.0  # a square without a seed
    foreground[28, 0] = 1.0  # a one-pixel speck
    seeds = np.zeros_like(foreground)
    seeds[5:9, 5:9] = 1.0
    maps = InstanceMaps(foreground, seeds)
    labels = instances_from_maps(maps, InstanceConfig(min_size=0))
    assert labels.max() == 3 and labels[6, 6] == labels[2, 2] > 0
    assert labels[22, 22] > 0 and labels[28, 0] > 0
    labels = instances_from_maps(maps, InstanceConfig(min_size=2, fill_holes=False))
    assert labels.max() == 2 and labels[6, 6] == 0 and labels[28, 0] == 0
    np.testing.assert_array_equal(np.unique(labels), [0, 1, 2])


def test_remove_small_keeps_the_rest() -> None:
    labels = np.array([[1, 1, 2], [3, 3, 3]])
    np.testing.assert_array_equal(remove_small(labels, 2), [[1, 1, 0], [3, 3, 3]])
    np.testing.assert_array_equal(remove_small(labels, 0), labels)


def test_maps_of_each_target() -> None:
    logits = torch.randn(3, 5, 6)
    probs = torch.softmax(logits, 0)
    maps = instance_maps(logits, InstanceConfig(target="boundary"))
    np.testing.assert_allclose(maps.foreground, (probs[1] + probs[2]).numpy(), atol=1e-6)
    np.testing.assert_allclose(maps.seeds, probs[1].numpy(), atol=1e-6)
    maps = instance_maps(logits, InstanceConfig(target="distance"))
    np.testing.assert_allclose(maps.foreground, torch.softmax(logits[:2], 0)[1].numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(maps.seeds, torch.sigmoid(logits[2]).numpy(), atol=1e-6)
    assert maps.stack().shape == (2, 5, 6)


def test_object_table_against_brute_force() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, (9, 11))
    labels[labels == 3] = 0  # an id that does not occur
    image = rng.random((2, 9, 11))
    table = measure_objects(labels, image)
    assert [row["id"] for row in table] == [1, 2, 4]
    for row in table:
        ys, xs = np.nonzero(labels == row["id"])
        assert row["area"] == len(ys)
        assert row["centroid_y"] == pytest.approx(ys.mean(), abs=1e-3)
        assert row["centroid_x"] == pytest.approx(xs.mean(), abs=1e-3)
        assert (row["bbox_top"], row["bbox_left"]) == (ys.min(), xs.min())
        assert (row["bbox_bottom"], row["bbox_right"]) == (ys.max() + 1, xs.max() + 1)
        for c in range(2):
            assert row[f"mean_c{c}"] == pytest.approx(image[c, ys, xs].mean(), abs=1e-6)
        on_edge = (ys == 0) | (ys == 8) | (xs == 0) | (xs == 10)
        assert row["touches_border"] == bool(on_edge.any())
    inner = np.zeros((5, 5), np.int32)
    inner[2, 2] = 7
    assert measure_objects(inner, np.ones((1, 5, 5)))[0]["touches_border"] is False


def test_object_csv_has_its_header_without_objects() -> None:
    text = object_csv(np.zeros((4, 4), np.int32), np.zeros((3, 4, 4)))
    assert text.splitlines() == ["id,area,centroid_y,centroid_x,bbox_top,bbox_left,bbox_bottom,"
                                 "bbox_right,mean_c0,mean_c1,mean_c2,touches_border"]
    rows = list(csv.DictReader(io.StringIO(object_csv(touching_discs(), np.ones((1, 40, 60))))))
    assert [r["id"] for r in rows] == ["1", "2"]


def test_write_instances_png_or_tiff(tmp_path: Path) -> None:
    import tifffile
    from PIL import Image

    labels = touching_discs().astype(np.int64) * 300
    path = write_instances(tmp_path, "a", labels)
    assert path.name == "a_instances.png"
    with Image.open(path) as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.array(im), labels)
    labels[0, 0] = 70_000
    path = write_instances(tmp_path, "b", labels)
    assert path.name == "b_instances.tif"
    np.testing.assert_array_equal(tifffile.imread(path), labels)


def test_choose_postprocess_finds_the_threshold_that_splits() -> None:
    truth = touching_discs()
    seeds = ndimage.distance_transform_edt(truth > 0)  # of the union: a low neck between them
    seeds = seeds / seeds.max()
    maps = InstanceMaps((truth > 0).astype(np.float32), seeds.astype(np.float32))
    cfg = InstanceConfig(target="distance", seed_threshold=0.1, min_size=0)
    assert instances_from_maps(maps, cfg).max() == 1  # seeds too low: merged
    chosen, record = choose_postprocess([(maps, truth)], cfg, seed_thresholds=(0.1, 0.5, 0.9),
                                        mask_thresholds=(0.5,), min_sizes=(0, 16))
    assert chosen.seed_threshold == 0.5 and chosen.min_size == 0
    assert instances_from_maps(maps, chosen).max() == 2
    assert record["dsb_score"] > record["default_dsb_score"]
    assert record["images"] == 1


class ClassFromImage(nn.Module):
    """A translation-equivariant stand-in for a boundary-target network: the image holds the
    class (0 background, 1 interior, 2 boundary) and the logits are its one-hot times 10."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig(num_classes=3, depth=2)
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x[:, 0].round().long().clamp(0, 2)
        return 10 * torch.nn.functional.one_hot(ids, 3).movedim(-1, 1).float() + self.anchor


def test_tiled_prediction_cuts_no_object() -> None:
    truth = np.zeros((96, 128), np.int32)
    truth[40:56, 4:124] = 1  # a bar across four 32-pixel tiles
    truth[10:30, 10:30], truth[10:30, 30:50] = 2, 3  # touching squares across a tile seam
    image = torch.from_numpy(boundary_classes(truth, 2)[None].astype(np.float32))
    stats = ChannelStats(mean=(0.0,), std=(1.0,))
    cfg = InstanceConfig(min_size=0)
    whole = instances_from_logits(ImagePredictor(ClassFromImage().eval(), stats, tile=128,
                                                 overlap=0.0).logits(image), cfg)
    tiled = instances_from_logits(ImagePredictor(ClassFromImage().eval(), stats, tile=32,
                                                 overlap=0.25).logits(image), cfg)
    np.testing.assert_array_equal(tiled, whole)
    assert tiled.max() == 3
    assert len(np.unique(tiled[40:56, 4:124])) == 1  # the bar is one object
    assert instance_scores(truth, tiled).dsb_score == 1.0


DSB2018 = Path(__file__).resolve().parents[3] / "shared" / "data" / "dsb2018"


def test_dsb2018_objects_split_where_components_merge() -> None:
    """On real nuclei: the post-processing of perfect boundary-target maps recovers the true
    nuclei, touching ones included, where the components of the semantic mask merge them."""
    from unetseg.data.instances import read_instances

    stems = sorted(p.stem for p in (DSB2018 / "instances").glob("*.png"))[:12]
    if not stems:
        pytest.skip("../shared/data/dsb2018 is not present")
    ours, components = [], []
    for stem in stems:
        truth = read_instances(DSB2018 / "instances" / f"{stem}.png").astype(np.int64)
        labels = instances_from_maps(oracle_maps(truth), InstanceConfig(min_size=0))
        ours.append(instance_scores(truth, labels).dsb_score)
        merged = ndimage.label(truth > 0, structure=ndimage.generate_binary_structure(2, 1))[0]
        components.append(instance_scores(truth, merged).dsb_score)
    assert np.mean(ours) > 0.9
    assert np.mean(ours) > np.mean(components) + 0.05
