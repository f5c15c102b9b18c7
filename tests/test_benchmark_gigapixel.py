"""The gigapixel benchmark's images (``benchmarks/gigapixel.py``): the OME-Zarr copy, written
band by band, holds the TIFF's pixels and opens as an OME-Zarr image with its pyramid."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
gigapixel = importlib.import_module("gigapixel")  # a broken benchmark fails here, never skips


def test_the_omezarr_image_holds_the_tiff_pixels(tmp_path: Path):
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("ome_zarr")
    from unetseg.infer.omezarr import open_omezarr

    gigapixel.write_big_tiff(tmp_path / "big.tif", 1300, height=700)
    gigapixel.write_big_omezarr(tmp_path / "big.ome.zarr", 1300, height=700)
    pixels = tifffile.imread(tmp_path / "big.tif")
    image = open_omezarr(tmp_path / "big.ome.zarr")
    assert (image.channels, image.height, image.width, image.levels) == (1, 700, 1300, 2)
    group = zarr.open_group(str(tmp_path / "big.ome.zarr"), mode="r")
    np.testing.assert_array_equal(group["0"][0], pixels)
    np.testing.assert_array_equal(group["1"][0], pixels[::2, ::2])
