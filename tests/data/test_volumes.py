"""Volume files: stacks, OME-TIFF, NIfTI and NumPy in and out, with their spacing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetseg.data.volumes import (
    Volume,
    anisotropy,
    check_same_geometry,
    parse_spacing,
    read_volume,
    read_volume_mask,
    write_volume,
)
from unetseg.errors import UserError

nib = pytest.importorskip("nibabel")


def _labels(shape=(5, 12, 10), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, size=shape).astype(np.uint8)


def test_imagej_stack_round_trips_with_spacing(tmp_path: Path):
    labels = _labels()
    like = Volume(labels[None], (4.0, 0.5, 0.25), None, tmp_path / "x.tif")
    write_volume(tmp_path / "y.tif", labels, like)
    back = read_volume_mask(tmp_path / "y.tif")
    assert np.array_equal(back.array, labels)
    assert back.spacing == pytest.approx((4.0, 0.5, 0.25))
    image = read_volume(tmp_path / "y.tif")
    assert image.array.shape == (1, 5, 12, 10) and image.shape == (5, 12, 10)


def test_ome_tiff_spacing_is_read_from_physical_sizes(tmp_path: Path):
    data = np.random.default_rng(1).integers(0, 4000, size=(2, 6, 9, 11)).astype(np.uint16)
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "CZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.3, "PhysicalSizeX": 0.3})
    volume = read_volume(path)
    assert volume.array.shape == (2, 6, 9, 11)  # channels first
    assert np.array_equal(volume.array, data)
    assert volume.spacing == pytest.approx((2.0, 0.3, 0.3))
    assert anisotropy(volume.spacing) == pytest.approx(2.0 / 0.3)
    write_volume(tmp_path / "pred.ome.tif", _labels((6, 9, 11)), volume)
    assert read_volume_mask(tmp_path / "pred.ome.tif").spacing == pytest.approx((2.0, 0.3, 0.3))


def test_a_plain_stack_has_no_spacing_until_given(tmp_path: Path):
    tifffile.imwrite(tmp_path / "s.tif", _labels())
    assert read_volume(tmp_path / "s.tif").spacing is None
    assert read_volume(tmp_path / "s.tif", spacing=(3, 1, 1)).spacing == (3.0, 1.0, 1.0)


def test_nifti_axes_are_reversed_and_the_affine_kept(tmp_path: Path):
    xyz = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # (x, y, z) as NIfTI stores
    affine = np.array([[0.8, 0, 0, -10], [0, 0.9, 0, 5], [0, 0, 2.5, 1], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(xyz, affine), str(tmp_path / "ct.nii.gz"))
    volume = read_volume(tmp_path / "ct.nii.gz")
    assert volume.array.shape == (1, 6, 5, 4)
    assert volume.array[0, 3, 2, 1] == xyz[1, 2, 3]  # (z, y, x) of the voxel (x=1, y=2, z=3)
    assert volume.spacing == pytest.approx((2.5, 0.9, 0.8))
    labels = (volume.array[0] % 3).astype(np.int64)
    write_volume(tmp_path / "pred.nii.gz", labels, volume)
    written = nib.load(str(tmp_path / "pred.nii.gz"))
    np.testing.assert_allclose(written.affine, affine)
    assert np.array_equal(np.asanyarray(written.dataobj), labels.transpose(2, 1, 0))
    assert np.array_equal(read_volume_mask(tmp_path / "pred.nii.gz").array, labels)


def test_npy_volumes_and_masks(tmp_path: Path):
    np.save(tmp_path / "v.npy", np.zeros((2, 3, 4, 5), np.float32))
    assert read_volume(tmp_path / "v.npy").array.shape == (2, 3, 4, 5)
    np.save(tmp_path / "m.npy", np.ones((3, 4, 5)))
    assert read_volume_mask(tmp_path / "m.npy").array.dtype == np.int64
    np.save(tmp_path / "bad.npy", np.full((3, 4, 5), 0.5))
    with pytest.raises(UserError, match="bad.npy: mask holds non-integer values"):
        read_volume_mask(tmp_path / "bad.npy")


def test_mismatched_geometry_is_refused_naming_the_mask(tmp_path: Path):
    a = Volume(np.zeros((1, 4, 5, 6)), (2.0, 1.0, 1.0), None, tmp_path / "a.tif")
    b = Volume(np.zeros((4, 5, 6), int), (2.0, 1.0, 1.0005), None, tmp_path / "b.tif")
    check_same_geometry(a, b)  # within the tolerance
    c = Volume(np.zeros((4, 5, 6), int), (1.0, 1.0, 1.0), None, tmp_path / "c.tif")
    with pytest.raises(UserError, match=r"c.tif: spacing 1,1,1 differs from its image's 2,1,1"):
        check_same_geometry(a, c)
    d = Volume(np.zeros((4, 5, 7), int), None, None, tmp_path / "d.tif")
    with pytest.raises(UserError, match=r"d.tif: mask volume \(4, 5, 7\) does not match"):
        check_same_geometry(a, d)


def test_bad_files_give_one_line_errors(tmp_path: Path):
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(UserError, match="flat.tif: a single 2-D image, not a stack"):
        read_volume(tmp_path / "flat.tif")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(UserError, match="broken.nii.gz: cannot read the image volume"):
        read_volume(tmp_path / "broken.nii.gz")
    with pytest.raises(UserError, match="missing.tif: no such file"):
        read_volume(tmp_path / "missing.tif")
    with pytest.raises(UserError, match="three positive sizes"):
        parse_spacing("1,2")
    assert parse_spacing("4, 1, 1") == (4.0, 1.0, 1.0)


def _volume_set(root: Path) -> Path:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(3)
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    for stem in ("a", "b"):
        nib.save(nib.Nifti1Image(rng.random((8, 9, 4)).astype(np.float32), affine),
                 str(root / "images" / f"{stem}.nii.gz"))
        nib.save(nib.Nifti1Image(rng.integers(0, 2, (8, 9, 4)).astype(np.uint8), affine),
                 str(root / "masks" / f"{stem}.nii.gz"))
    return root


def test_check_reports_each_volume_and_refuses_a_mask_on_other_voxels(tmp_path: Path, capsys):
    from unetseg.cli import main

    data = _volume_set(tmp_path / "set")
    assert main(["-q", "check", str(data)]) == 0
    out = capsys.readouterr().out
    assert "2 volume pair(s)" in out
    assert "a: 4x9x8 voxels, 1 channel(s), spacing 2,0.5,0.5, anisotropy 4" in out
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 4), np.uint8), np.diag([0.5, 0.5, 1.0, 1.0])),
             str(data / "masks" / "b.nii.gz"))
    np.save(data / "images" / "c.npy", np.zeros((2, 3, 4)))
    assert main(["-q", "check", str(data)]) == 1
    out = capsys.readouterr().out
    assert "b.nii.gz: spacing 1,0.5,0.5 differs from its image's 2,0.5,0.5" in out
    assert "c.npy: no mask volume of that name" in out
