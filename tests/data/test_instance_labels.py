"""Instance labels: reading them, and the object statistics against pixel-by-pixel loops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from unetseg.data.instances import (
    components_by_value,
    instance_files,
    instances_from_mask,
    object_stats,
    object_table,
    read_instances,
)
from unetseg.errors import UserError


def _stats_brute(labels: np.ndarray) -> dict[str, object]:
    """Every pixel and each of its neighbours, one at a time."""
    height, width = labels.shape
    ids = sorted(int(v) for v in np.unique(labels) if v != 0)
    areas = [int((labels == i).sum()) for i in ids]
    pairs4: set[tuple[int, int]] = set()
    pairs8: set[tuple[int, int]] = set()
    border = set()
    for r in range(height):
        for c in range(width):
            a = int(labels[r, c])
            if a == 0:
                continue
            if r in (0, height - 1) or c in (0, width - 1):
                border.add(a)
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if (dr or dc) and 0 <= rr < height and 0 <= cc < width:
                        b = int(labels[rr, cc])
                        if b not in (0, a):
                            pair = (min(a, b), max(a, b))
                            pairs8.add(pair)
                            if dr == 0 or dc == 0:
                                pairs4.add(pair)
    fragmented = sum(ndimage.label(labels == i, structure=np.ones((3, 3)))[1] > 1 for i in ids)
    return {
        "objects": len(ids),
        "area_min": min(areas, default=None), "area_max": max(areas, default=None),
        "area_median": float(np.median(areas)) if areas else None,
        "touching_pairs_4": len(pairs4), "touching_pairs_8": len(pairs8),
        "touching_objects_4": len({i for p in pairs4 for i in p}),
        "touching_objects_8": len({i for p in pairs8 for i in p}),
        "border_objects": len(border), "fragmented_objects": int(fragmented),
    }


def _random_instances(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Rectangles that touch, overlap (later ones paint over) and reach the border, with
    scattered ids; some get cut in two by later ones."""
    labels = np.zeros(shape, np.int64)
    for _ in range(int(rng.integers(0, 14))):
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        labels[r: r + rng.integers(1, 9), c: c + rng.integers(1, 9)] = rng.integers(1, 70000)
    return labels


@pytest.mark.parametrize("seed", range(6))
def test_components_by_value_equal_labels_per_value(seed: int) -> None:
    """The one-pass regions are the components of each value, labelled one value at a time."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4, size=(int(rng.integers(1, 25)), int(rng.integers(1, 25))))
    values = np.kron(values, np.ones((1, 2), int)) if seed % 2 else values
    table = components_by_value(values)
    for v in np.unique(values):
        _, n = ndimage.label(values == v)
        assert (table.classes == v).sum() == n
        assert sorted(table.areas[table.classes == v]) == sorted(
            np.bincount(ndimage.label(values == v)[0].ravel())[1:])
    labels = instances_from_mask(values, [int(v) for v in np.unique(values)])
    assert object_table(labels).stats() == table.stats()


@pytest.mark.parametrize("seed", range(10))
def test_object_stats_equal_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = _random_instances(rng, (int(rng.integers(6, 30)), int(rng.integers(6, 30))))
    assert object_stats(labels) == _stats_brute(labels)


def test_object_stats_by_hand() -> None:
    labels = np.zeros((6, 8), np.uint16)
    labels[1:3, 1:3] = 5  # touches 7 along an edge
    labels[1:3, 3:5] = 7
    labels[3, 5] = 9  # touches 7 at a corner only
    labels[5, 0] = 2  # on the border
    labels[0, 7] = labels[4, 7] = 4  # two pieces
    stats = object_stats(labels)
    assert stats == {"objects": 5, "area_min": 1, "area_median": 2.0, "area_max": 4,
                     "touching_pairs_4": 1, "touching_pairs_8": 2, "touching_objects_4": 2,
                     "touching_objects_8": 3, "border_objects": 2, "fragmented_objects": 1}
    table = object_table(labels)
    assert list(table.ids) == [2, 4, 5, 7, 9]
    assert table.pairs_4.tolist() == [[2, 3]] and table.pairs_8.tolist() == [[2, 3], [3, 4]]
    kept = table.subset(np.array([False, True, False, True, True]))
    assert list(kept.ids) == [4, 7, 9] and kept.pairs_8.tolist() == [[1, 2]]
    assert kept.pairs_4.shape == (0, 2)
    empty = object_stats(np.zeros((3, 3), np.uint8))
    assert empty["objects"] == 0 and empty["area_median"] is None


def test_objects_from_a_semantic_mask() -> None:
    """Components of each value; touching discs of one class merge, of two classes not."""
    mask = np.zeros((5, 9), np.uint8)
    mask[1:4, 1:4] = 1
    mask[1:4, 4:7] = 1  # touches the first: one object
    mask[0, 8] = 2
    mask[1, 7] = 2  # diagonal to mask[0, 8]: two objects when 4-connected
    labels = instances_from_mask(mask, [1, 2])
    assert labels.max() == 3 and len(np.unique(labels[mask == 1])) == 1
    assert instances_from_mask(mask, [2], connectivity=8).max() == 1
    table = components_by_value(mask)
    assert sorted(table.classes.tolist()) == [0, 1, 2, 2]
    assert table.areas[table.classes == 1].tolist() == [18]
    objects = table.subset(table.classes != 0)
    assert objects.stats()["objects"] == 3 and objects.stats()["touching_pairs_8"] == 2
    assert objects.stats()["touching_pairs_4"] == 1  # the 1-object and the 2 at (1, 7)


def test_read_instances(tmp_path: Path) -> None:
    labels = np.zeros((6, 7), np.uint16)
    labels[1:3, 1:3] = 300
    labels[3:5, 2:6] = 2
    Image.fromarray(labels).save(tmp_path / "a.png")
    got = read_instances(tmp_path / "a.png", (6, 7))
    assert got.dtype == np.uint16 and np.array_equal(got, labels)
    big = labels.astype(np.uint32) * 1000
    tifffile.imwrite(tmp_path / "b.tif", big)
    assert np.array_equal(read_instances(tmp_path / "b.tif"), big)
    tifffile.imwrite(tmp_path / "f.tif", labels.astype(np.float32))
    with pytest.raises(UserError, match=r"f\.tif: instance image has float32 samples"):
        read_instances(tmp_path / "f.tif")
    tifffile.imwrite(tmp_path / "n.tif", -labels.astype(np.int32))
    with pytest.raises(UserError, match="non-negative"):
        read_instances(tmp_path / "n.tif")
    with pytest.raises(UserError, match=r"a\.png: instance image is 7x6 but its image is 8x6"):
        read_instances(tmp_path / "a.png", (6, 8))
    rgb = np.stack([labels.astype(np.uint8), np.zeros_like(labels, np.uint8), labels > 0],
                   axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(UserError, match="differing channels"):
        read_instances(tmp_path / "c.png")
    (tmp_path / "instances").mkdir()
    (tmp_path / "instances" / "x.png").write_bytes((tmp_path / "a.png").read_bytes())
    (tmp_path / "instances" / "notes.txt").write_text("-")
    assert instance_files(tmp_path) == {"x": [tmp_path / "instances" / "x.png"]}
    assert instance_files(tmp_path / "nowhere") == {}
