"""Pictures of volumes: orthogonal views, slice montages, and the saved figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unetseg.viz import (
    class_palette,
    display_rgb,
    montage_slices,
    orthogonal_views,
    overlay,
    plot_volume,
    slice_montage,
    volume_limits,
)


def _volume(seed: int = 0):
    rng = np.random.default_rng(seed)
    volume = rng.random((1, 6, 10, 12)).astype(np.float32)
    ids = rng.integers(0, 3, size=(6, 10, 12))
    return volume, ids


def test_views_are_the_planes_through_the_point():
    volume, ids = _volume()
    limits = volume_limits(volume)
    views = orthogonal_views(volume, None, (2, 3, 4))
    assert np.array_equal(views["axial"], display_rgb(volume[:, 2], limits))
    assert np.array_equal(views["coronal"], display_rgb(volume[:, :, 3], limits))
    assert np.array_equal(views["sagittal"], display_rgb(volume[:, :, :, 4], limits))
    assert views["coronal"].shape == (6, 12, 3) and views["sagittal"].shape == (6, 10, 3)


def test_overlays_colour_the_labels_of_each_plane():
    volume, ids = _volume(1)
    palette = class_palette(3)
    views = orthogonal_views(volume, ids, (2, 3, 4), palette=palette, skip=())
    # overlay() stretches each picture by its own percentiles; with the volume's limits the
    # plain blend is the same formula: check the coloured pixels move towards their class
    plain = orthogonal_views(volume, None, (2, 3, 4))
    for name, labels in (("axial", ids[2]), ("coronal", ids[:, 3]), ("sagittal", ids[:, :, 4])):
        expected = (0.6 * plain[name] + 0.4 * palette[labels]).round().astype(np.uint8)
        assert np.abs(views[name].astype(int) - expected.astype(int)).max() <= 1
    assert overlay(volume[:, 2], ids[2], palette).shape == views["axial"].shape


def test_anisotropic_slices_are_shown_thick():
    volume, ids = _volume()
    views = orthogonal_views(volume, ids, spacing=(3.0, 1.0, 1.0))
    assert views["coronal"].shape == (18, 12, 3) and views["axial"].shape == (10, 12, 3)
    assert np.array_equal(views["coronal"][0], views["coronal"][2])  # one slice, three rows


def test_montage_shows_spread_slices_in_a_grid():
    assert montage_slices(100, 9) == [0, 12, 25, 37, 50, 62, 74, 87, 99]
    assert montage_slices(4, 9) == [0, 1, 2, 3]
    volume, _ = _volume()
    picture, chosen = slice_montage(volume, count=4)
    assert chosen == [0, 2, 3, 5]
    assert picture.shape == (2 * 11 - 1, 2 * 13 - 1, 3)
    limits = volume_limits(volume)
    assert np.array_equal(picture[11:21, 13:25], display_rgb(volume[:, 5], limits))
    assert (picture[10] == 255).all()  # the gap between rows


def test_plot_volume_writes_a_picture(tmp_path: Path):
    volume, ids = _volume()
    plot_volume(volume, ids, tmp_path / "v.png", spacing=(2.0, 1.0, 1.0), title="case 1")
    with Image.open(tmp_path / "v.png") as im:
        assert im.size[0] > im.size[1] > 100
