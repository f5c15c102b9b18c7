"""Multi-page TIFFs: pages of one shape are the channels of one image."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetseg.data import io
from unetseg.errors import UserError

RNG = np.random.default_rng(3)


def test_pages_in_one_series_become_channels(tmp_path: Path):
    pages = RNG.integers(0, 65536, (6, 10, 12)).astype(np.uint16)  # 6 > 4: not "samples"
    tifffile.imwrite(tmp_path / "six.tif", pages)
    out = io.read_image(tmp_path / "six.tif")
    assert out.shape == (6, 10, 12)
    np.testing.assert_allclose(out, pages / 65535.0, rtol=1e-6)


def test_pages_written_one_by_one_become_channels(tmp_path: Path):
    pages = RNG.random((3, 7, 9)).astype(np.float32)
    with tifffile.TiffWriter(tmp_path / "bands.tif") as tif:
        for page in pages:
            tif.write(page)  # three separate single-page series
    with tifffile.TiffFile(tmp_path / "bands.tif") as tif:
        assert len(tif.series) == 3
    np.testing.assert_array_equal(io.read_image(tmp_path / "bands.tif"), pages)


def test_pages_of_different_shapes_read_the_first(tmp_path: Path, caplog):
    first = RNG.integers(0, 256, (8, 8)).astype(np.uint8)
    with tifffile.TiffWriter(tmp_path / "pyr.tif") as tif:
        tif.write(first)
        tif.write(first[::2, ::2])  # a thumbnail
    with caplog.at_level(logging.WARNING):
        out = io.read_image(tmp_path / "pyr.tif")
    np.testing.assert_allclose(out[0], first / 255.0, rtol=1e-6)
    assert "pyr.tif" in caplog.text and "first" in caplog.text


def test_too_many_pages_refused(tmp_path: Path):
    with tifffile.TiffWriter(tmp_path / "vol.tif") as tif:
        for _ in range(io.MAX_PAGES + 1):
            tif.write(np.zeros((4, 4), np.uint8))
    with pytest.raises(UserError, match=r"vol\.tif.*pages.*one 2-D image per file"):
        io.read_image(tmp_path / "vol.tif")
