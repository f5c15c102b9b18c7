"""The dataset fingerprint against slow, obvious computations on a tiny data set."""

from __future__ import annotations

import json
import math
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from unetseg.config import DataConfig
from unetseg.data.classes import IGNORE_INDEX
from unetseg.data.dataset import load_data
from unetseg.data.doctor import examine_data, fingerprint_of
from unetseg.data.fingerprint import (
    INTENSITY_PERCENTILES,
    OBJECT_PERCENTILES,
    Fingerprint,
    FingerprintBuilder,
    pixel_size_um,
)
from unetseg.data.io import read_image, read_mask

IGNORE = 9
VALUES = (0, 3, 7)  # background and two object classes; 9 is ignored


def _write(root: Path) -> Path:
    """Four gray images of different sizes (under the sample size, so every pixel is in the
    percentiles) with label masks of rectangles, discs and ignored strips."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i, (h, w) in enumerate([(30, 41), (52, 37), (25, 25), (40, 60)]):
        mask = np.zeros((h, w), np.uint8)
        yy, xx = np.mgrid[:h, :w]
        for _ in range(3 + i):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(2, 7)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = 3
        top, left = rng.integers(0, h - 6), rng.integers(0, w - 8)
        mask[top:top + 5, left:left + 8] = 7
        mask[:, 0] = IGNORE if i % 2 else mask[:, 0]
        mask[h // 2, w // 2] = 7  # a one-pixel object (or part of one)
        brightness = 40 + 50 * i  # images differ in brightness
        image = brightness + 60 * (mask == 3) - 30 * (mask == 7) + rng.normal(0, 9, (h, w))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            root / "images" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
    return root


def _components(mask: np.ndarray) -> list[int]:
    """Areas of the 8-connected components of a boolean mask, by breadth-first search."""
    seen = np.zeros_like(mask, bool)
    areas = []
    h, w = mask.shape
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or seen[y, x]:
                continue
            queue, area = deque([(y, x)]), 0
            seen[y, x] = True
            while queue:
                cy, cx = queue.popleft()
                area += 1
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            areas.append(area)
    return areas


def _fingerprint(root: Path) -> Fingerprint:
    builder = FingerprintBuilder()
    report, reads = examine_data(root, DataConfig(ignore_value=IGNORE), fingerprint=builder)
    assert not report.errors
    return fingerprint_of(report, reads, builder)


def _summary(values: np.ndarray, qs: tuple[float, ...]) -> dict[str, float]:
    out = {"min": float(values.min()), "max": float(values.max())}
    out.update({f"p{q:g}": float(np.percentile(values, q)) for q in qs})
    return out


def test_fingerprint_matches_a_slow_computation(tmp_path: Path) -> None:
    root = _write(tmp_path / "data")
    fp = _fingerprint(root)
    stems = sorted(p.stem for p in (root / "images").iterdir())
    images = [read_image(root / "images" / f"{s}.png")[0].astype(np.float64) for s in stems]
    masks = [read_mask(root / "masks" / f"{s}.png") for s in stems]
    ids = [np.select([m == v for v in VALUES], list(range(len(VALUES))), IGNORE_INDEX)
           for m in masks]

    assert fp.images == 4 and fp.channels == 1 and fp.bit_depth == {"uint8": 4}
    sides = np.array([min(im.shape) for im in images])
    assert fp.sizes["min_side"]["min"] == sides.min() == 25
    assert fp.sizes["height"]["max"] == 52 and fp.sizes["width"]["max"] == 60
    assert sum(fp.sizes["distinct"].values()) == 4

    every = np.concatenate([im.ravel() for im in images])
    row = fp.intensity["all"][0]
    assert row["mean"] == pytest.approx(every.mean(), rel=1e-12)
    assert row["sd"] == pytest.approx(every.std(), rel=1e-10)
    for key, value in _summary(every, INTENSITY_PERCENTILES).items():
        assert row[key] == pytest.approx(value, abs=1e-6), key
    fg = np.concatenate([im[i >= 1] for im, i in zip(images, ids)])
    row = fp.intensity["foreground"][0]
    assert row["mean"] == pytest.approx(fg.mean(), rel=1e-12)
    assert row["sd"] == pytest.approx(fg.std(), rel=1e-10)
    for key, value in _summary(fg, INTENSITY_PERCENTILES).items():
        assert row[key] == pytest.approx(value, abs=1e-6), key

    means = np.array([im.mean() for im in images])
    variances = np.array([im.var() for im in images])
    share = means.var() / (means.var() + variances.mean())
    assert fp.intensity["between_image_share"][0] == pytest.approx(share, rel=1e-9)
    brighter = [im[i >= 1].mean() > im[i == 0].mean() for im, i in zip(images, ids)]
    assert fp.intensity["foreground_brighter"] == pytest.approx(np.mean(brighter))

    labelled = sum(int((i >= 0).sum()) for i in ids)
    for c, value in enumerate(VALUES):
        entry = fp.classes[c]
        pixels = sum(int((i == c).sum()) for i in ids)
        assert (entry["value"], entry["pixels"]) == (value, pixels)
        assert entry["share"] == pytest.approx(pixels / labelled)
        assert entry["images"] == sum(bool((i == c).any()) for i in ids)
        areas = np.array([a for i in ids for a in _components(i == c)])
        assert entry["components"]["count"] == len(areas)
        for key, v in _summary(areas, OBJECT_PERCENTILES).items():
            assert entry["components"]["area"][key] == pytest.approx(v), (value, key)
        diameters = np.sqrt(4 * areas / math.pi)
        for key, v in _summary(diameters, OBJECT_PERCENTILES).items():
            assert entry["components"]["diameter"][key] == pytest.approx(v), (value, key)
    objects = np.array([a for i in ids for c in (1, 2) for a in _components(i == c)])
    assert fp.objects["count"] == len(objects)
    assert fp.objects["diameter"]["p90"] == pytest.approx(
        np.percentile(np.sqrt(4 * objects / math.pi), 90))
    assert fp.pixel_size_um is None


def test_training_measures_the_same_fingerprint_and_it_round_trips(tmp_path: Path) -> None:
    root = _write(tmp_path / "data")
    loaded = load_data(root, DataConfig(ignore_value=IGNORE), fingerprint=True)
    assert loaded.fingerprint is not None
    assert loaded.fingerprint.to_dict() == _fingerprint(root).to_dict()
    text = json.dumps(loaded.fingerprint.to_dict())
    assert Fingerprint.from_dict(json.loads(text)) == Fingerprint.from_dict(
        loaded.fingerprint.to_dict())


def test_large_images_are_sampled_the_same_whatever_the_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((1, 80, 90)).astype(np.float32)  # 7200 pixels > 4096 sampled
    codes = (rng.random((80, 90)) > 0.7).astype(np.uint8)
    a, b = FingerprintBuilder(), FingerprintBuilder()
    a.add("x", image, codes, "float32")
    b.add("y", image * 0, codes, "float32")
    b.add("x", image, codes, "float32")
    np.testing.assert_array_equal(a.entries["x"].sample, b.entries["x"].sample)
    assert a.entries["x"].sample.shape == (1, 4096)


def test_physical_pixel_size_from_tiff_tags(tmp_path: Path) -> None:
    data = np.zeros((8, 8), np.uint8)
    tifffile.imwrite(tmp_path / "cm.tif", data, resolution=(2000.0, 4000.0),
                     resolutionunit="CENTIMETER")  # pixels per cm: x 2000, y 4000
    assert pixel_size_um(tmp_path / "cm.tif") == pytest.approx((2.5, 5.0, "tiff-resolution"))
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, resolution=(1 / 0.5, 1 / 0.25),
                     metadata={"unit": "um"})
    assert pixel_size_um(tmp_path / "ij.tif") == pytest.approx((0.25, 0.5, "imagej"))
    tifffile.imwrite(tmp_path / "ome.tif", data, ome=True,
                     metadata={"PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3,
                               "PhysicalSizeXUnit": "nm", "PhysicalSizeYUnit": "nm"})
    assert pixel_size_um(tmp_path / "ome.tif") == pytest.approx((3e-4, 3e-4, "ome"))
    tifffile.imwrite(tmp_path / "none.tif", data)
    assert pixel_size_um(tmp_path / "none.tif") is None
    Image.fromarray(data).save(tmp_path / "a.png")
    assert pixel_size_um(tmp_path / "a.png") is None


def test_fingerprint_reports_the_pixel_size_the_images_state(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i in range(3):
        image = np.full((16, 16), 40 * i, np.uint8)
        tifffile.imwrite(root / "images" / f"t{i}.tif", image, resolution=(1e4, 1e4),
                         resolutionunit="CENTIMETER")
        mask = np.zeros((16, 16), np.uint8)
        mask[4:9, 4:9] = 1
        Image.fromarray(mask).save(root / "masks" / f"t{i}.png")
    fp = _fingerprint(root)
    assert fp.pixel_size_um == {"y": 1.0, "x": 1.0, "source": "tiff-resolution", "images": 3,
                                "images_stating": 3, "distinct": 1}
    assert fp.objects["count"] == 3 and fp.objects["area"]["p50"] == 25


def test_colour_masks_count_components_by_class(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    mask = np.zeros((20, 30, 3), np.uint8)
    mask[2:6, 2:6] = (255, 0, 0)
    mask[10:13, 20:29] = (255, 0, 0)
    mask[14:18, 3:5] = (0, 0, 255)
    Image.fromarray(mask).save(root / "masks" / "c.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "images" / "c.png")
    fp = _fingerprint(root)
    counts = {c["value"]: (c["components"]["count"], c["pixels"]) for c in fp.classes}
    red, blue = 255 << 16, 255
    assert counts[red] == (2, 16 + 27) and counts[blue] == (1, 8)
    assert fp.channels == 3
