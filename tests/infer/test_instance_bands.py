"""Objects of streamed images: band by band, the same objects as the whole image at once, and
one id for an object across every seam."""

from __future__ import annotations

import numpy as np
import pytest

from unetseg.config import InstanceConfig
from unetseg.data.instance_targets import boundary_classes
from unetseg.infer.instance_bands import BandObjects
from unetseg.infer.instances import InstanceMaps, instances_from_maps, measure_objects
from unetseg.metrics_instance import instance_scores


def scene(seed: int = 0, size: tuple[int, int] = (150, 90), *, bar: bool) -> np.ndarray:
    """Touching discs anywhere (across seams too), one on the image's edge, and with ``bar``
    a bar longer than a band and its context together, which discs touch."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros(size, np.int32)
    k = 0
    for _ in range(9):
        r = int(rng.integers(4, 8))
        cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - 3 * r))
        for dx in (0, 2 * r - 1):
            k += 1
            labels[((yy - cy) ** 2 + (xx - cx - dx) ** 2 <= r * r) & (labels == 0)] = k
    labels[0:6, 0:8] = k + 1  # on the image's edge
    if bar:  # 135 rows: longer than 16-row bands with 32 rows of context
        labels[5:140, 80:86] = k + 2
    return labels


def oracle(truth: np.ndarray) -> InstanceMaps:
    return InstanceMaps((truth > 0).astype(np.float32),
                        (boundary_classes(truth, 2) == 1).astype(np.float32))


def band_labels(maps: InstanceMaps, cfg: InstanceConfig, band: int, context: int
                ) -> tuple[np.ndarray, list[dict]]:
    h, w = maps.foreground.shape
    objects = BandObjects(cfg, h, w, context=context)
    provisional = np.zeros((h, w), np.int64)
    image = np.stack([maps.foreground, maps.seeds])

    def keep(given: list[tuple[int, np.ndarray]]) -> None:
        for top, ids in given:
            provisional[top: top + len(ids)] = ids
            objects.measure(top, ids, image[:, top: top + len(ids)])

    for top in range(0, h, band):
        keep(objects.add(top, maps.stack()[:, top: top + band]))
    keep(objects.finish())
    lookup, table, count = objects.resolve(cfg.min_size)
    labels = lookup[provisional]
    assert labels.max() == count == len(table)
    return labels, table


def same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images hold the same objects, whatever their ids."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return (len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
            and ((pairs[0] == 0) == (pairs[1] == 0)).all())


@pytest.mark.parametrize("band", [16, 37, 150])
def test_bands_give_the_objects_of_the_whole_image(band: int) -> None:
    truth = scene(bar=False)
    maps = oracle(truth)
    cfg = InstanceConfig(min_size=10)
    whole = instances_from_maps(maps, cfg)
    labels, table = band_labels(maps, cfg, band, context=32)
    assert same_objects(labels, whole)
    assert table == measure_objects(labels, np.stack([maps.foreground, maps.seeds]))


@pytest.mark.parametrize("band", [16, 37])
def test_an_object_longer_than_a_band_is_one_object(band: int) -> None:
    truth = scene(bar=True)
    maps = oracle(truth)
    cfg = InstanceConfig(min_size=10)
    whole = instances_from_maps(maps, cfg)
    labels, table = band_labels(maps, cfg, band, context=32)
    assert labels.max() == whole.max()
    scores = instance_scores(whole, labels, thresholds=(0.9,))
    assert scores.tp == (whole.max(),)  # every object the whole image's, within its ties
    assert len(np.unique(labels[5:140, 80:86])) == 1
    assert table == measure_objects(labels, np.stack([maps.foreground, maps.seeds]))


def test_an_object_wider_than_the_window_keeps_one_id() -> None:
    truth = np.zeros((120, 20), np.int32)
    truth[:, 5:15] = 1  # the whole height: every band and seam
    seeds = np.zeros(truth.shape, np.float32)
    seeds[:, 8:12] = 1.0
    maps = InstanceMaps((truth > 0).astype(np.float32), seeds)
    labels, table = band_labels(maps, InstanceConfig(min_size=0), band=8, context=4)
    assert labels.max() == 1 and (labels > 0).sum() == 1200
    assert table[0]["bbox_top"] == 0 and table[0]["bbox_bottom"] == 120
    assert table[0]["touches_border"] is True


def test_bands_must_come_in_order() -> None:
    objects = BandObjects(InstanceConfig(), 10, 4)
    objects.add(0, np.zeros((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match="in order"):
        objects.add(6, np.zeros((2, 4, 4), np.float32))
