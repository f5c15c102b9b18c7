"""Volumes read and written slab by slab: every format gives the slices a whole read gives,
reads only the slices asked for, and writes back what a whole write writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetseg.data.volumes import (
    open_volume,
    read_volume,
    read_volume_mask,
    smallest_label_dtype,
    write_volume_slabs,
)
from unetseg.errors import UserError

nib = pytest.importorskip("nibabel")
RNG = np.random.default_rng(0)
STACK = (RNG.random((7, 6, 5)) * 250).astype(np.uint8)  # (D, H, W)
LABELS = RNG.integers(0, 3, size=(7, 6, 5)).astype(np.uint8) * 100


def _files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    files["imagej zlib"] = tmp_path / "zlib.tif"
    tifffile.imwrite(files["imagej zlib"], STACK, imagej=True, compression="zlib",
                     resolution=(2.0, 2.0), metadata={"axes": "ZYX", "spacing": 3.0})
    files["imagej raw"] = tmp_path / "raw.tif"  # contiguous: memory-mapped
    tifffile.imwrite(files["imagej raw"], STACK, imagej=True,
                     metadata={"axes": "ZYX", "spacing": 3.0})
    files["ome channels"] = tmp_path / "two.ome.tif"
    tifffile.imwrite(files["ome channels"], np.stack([STACK, 255 - STACK], axis=1), ome=True,
                     compression="zlib", metadata={"axes": "ZCYX", "PhysicalSizeZ": 2.0,
                                                   "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5})
    files["nifti gz"] = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(STACK.transpose(2, 1, 0).astype(np.int16),
                             np.diag([0.7, 0.7, 2.5, 1.0])), str(files["nifti gz"]))
    files["nifti 4d"] = tmp_path / "scan4.nii"
    nib.save(nib.Nifti1Image(np.stack([STACK, STACK // 2], -1).transpose(2, 1, 0, 3)
                             .astype(np.float32), np.eye(4)), str(files["nifti 4d"]))
    files["npy"] = tmp_path / "v.npy"
    np.save(files["npy"], STACK.astype(np.float64))
    return files


@pytest.mark.parametrize("kind", ["imagej zlib", "imagej raw", "ome channels", "nifti gz",
                                  "nifti 4d", "npy"])
def test_slabs_are_the_slices_of_the_whole_volume(tmp_path: Path, kind: str):
    path = _files(tmp_path)[kind]
    whole = read_volume(path)
    with open_volume(path) as source:
        assert source.shape == whole.shape and source.channels == whole.array.shape[0]
        assert source.spacing == whole.spacing and source.dtype == whole.array.dtype
        if whole.affine is not None:
            assert np.array_equal(source.affine, whole.affine)
        slabs = [source.read(z, min(z + 3, 7)) for z in range(0, 7, 3)]
        assert np.array_equal(np.concatenate(slabs, axis=1), whole.array)
        assert np.array_equal(source.read(4, 5), whole.array[:, 4:5])
        assert source.slices_read == 8


def test_paged_tiff_decodes_only_the_pages_of_a_slab(tmp_path: Path, monkeypatch):
    path = _files(tmp_path)["ome channels"]
    asked: list[list[int]] = []
    original = tifffile.TiffFile.asarray

    def counting(self, key=None, **kwargs):
        asked.append(list(key) if key is not None else ["all"])
        return original(self, key=key, **kwargs)

    monkeypatch.setattr(tifffile.TiffFile, "asarray", counting)
    with open_volume(path) as source:
        slab = source.read(2, 4)
    assert asked == [[4, 6, 5, 7]]  # pages are z-major (ZCYX): channel 0 of z 2, 3, then 1
    assert slab.shape == (2, 2, 6, 5)


def test_given_spacing_fills_in_for_files_without_one(tmp_path: Path):
    path = _files(tmp_path)["npy"]
    with open_volume(path, spacing=(4, 1, 1)) as source:
        assert source.spacing == (4.0, 1.0, 1.0)
    with open_volume(_files(tmp_path)["imagej zlib"], spacing=(4, 1, 1)) as source:
        assert source.spacing == pytest.approx((3.0, 0.5, 0.5))  # the file's own wins


def test_bad_files_are_one_line_errors(tmp_path: Path):
    (tmp_path / "cut.nii.gz").write_bytes(b"\x1f\x8b not really")
    with pytest.raises(UserError, match="cut.nii.gz: cannot read"):
        open_volume(tmp_path / "cut.nii.gz")
    with pytest.raises(UserError, match="no such file"):
        open_volume(tmp_path / "missing.tif")
    np.save(tmp_path / "flat.npy", np.zeros((4, 4)))
    with pytest.raises(UserError, match=r"flat.npy: expected a volume"):
        open_volume(tmp_path / "flat.npy")
    bad = np.zeros((3, 4, 4), np.float32)
    bad[2, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with open_volume(tmp_path / "nan.npy") as source:
        source.read(0, 2)
        with pytest.raises(UserError, match="nan.npy: holds NaN"):
            source.read(1, 3)


@pytest.mark.parametrize("name", ["out.tif", "out.ome.tif", "out.nii", "out.nii.gz", "out.npy"])
def test_slab_writes_equal_whole_writes(tmp_path: Path, name: str):
    like = read_volume(_files(tmp_path)["nifti gz"])
    slabs = (LABELS[z:z + 3] for z in range(0, 7, 3))
    path = write_volume_slabs(tmp_path / name, slabs, shape=LABELS.shape, dtype=np.uint8,
                              like=like)
    written = read_volume_mask(path)
    assert np.array_equal(written.array, LABELS)
    if not name.endswith(".npy"):
        assert written.spacing == pytest.approx((2.5, 0.7, 0.7))
    if ".nii" in name:
        np.testing.assert_allclose(written.affine, like.affine)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_ome_tiff_labels_are_valid_ome(tmp_path: Path):
    with open_volume(_files(tmp_path)["ome channels"]) as like:
        path = write_volume_slabs(tmp_path / "labels.ome.tif", iter([LABELS[:4], LABELS[4:]]),
                                  shape=LABELS.shape, dtype=np.uint8, like=like)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and len(tif.pages) == 7
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert (pixels["SizeZ"], pixels["SizeY"], pixels["SizeX"]) == (7, 6, 5)
        assert pixels["Type"] == "uint8"
        assert (pixels["PhysicalSizeZ"], pixels["PhysicalSizeX"]) == (2.0, 0.5)
        assert np.array_equal(tif.asarray(), LABELS)
    assert read_volume_mask(path).spacing == (2.0, 0.5, 0.5)


def test_writer_refuses_slabs_that_do_not_make_the_volume(tmp_path: Path):
    with pytest.raises(ValueError, match="5 slices written of a volume of 7"):
        write_volume_slabs(tmp_path / "short.npy", [LABELS[:5]], shape=LABELS.shape,
                           dtype=np.uint8)
    with pytest.raises(ValueError, match="does not fit"):
        write_volume_slabs(tmp_path / "wide.tif", [LABELS[:, :, :4]], shape=LABELS.shape,
                           dtype=np.uint8)
    assert not list(tmp_path.iterdir())  # nothing half-written is left
    with pytest.raises(UserError, match="unknown volume format"):
        write_volume_slabs(tmp_path / "v.png", [LABELS], shape=LABELS.shape, dtype=np.uint8)


def test_label_types_hold_their_values():
    assert smallest_label_dtype(0, 255) == np.uint8
    assert smallest_label_dtype(0, 256) == np.uint16
    assert smallest_label_dtype(-1, 3) == np.int16
    assert smallest_label_dtype(0, 70000) == np.int32
    assert smallest_label_dtype(-1, 2**40) == np.int64
