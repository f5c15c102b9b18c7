"""``unetseg preview-augment DATA --volume``: augmented 3D training patches drawn as orthogonal
views, the mask's classes blended exactly over the voxels the augmented mask labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unetseg.cli import main
from unetseg.config import RunConfig
from unetseg.data.volumes import write_volume
from unetseg.preview import augmented_volume_patches, volume_preview_rows
from unetseg.viz import VolumePlanes, display_rgb


@pytest.fixture(scope="module")
def volume_data(tmp_path_factory) -> Path:
    """Two volumes whose image is bright exactly inside a labelled ball (mask 255)."""
    root = tmp_path_factory.mktemp("vols")
    for sub in ("images", "masks"):
        (root / sub).mkdir()
    z, y, x = np.mgrid[:12, :20, :20]
    for i, centre in enumerate(((6, 8, 9), (5, 11, 10))):
        ball = ((z - centre[0]) ** 2 * 4 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) < 30
        image = (ball * 0.8 + np.random.default_rng(i).random(ball.shape) * 0.1)
        np.save(root / "images" / f"v{i}.npy", image.astype(np.float32))
        write_volume(root / "masks" / f"v{i}.npy", ball.astype(np.uint8) * 255)
    return root


def test_preview_writes_the_picture(volume_data: Path, tmp_path: Path, capsys):
    out = tmp_path / "vol.png"
    assert main(["-q", "preview-augment", str(volume_data), "--out", str(out), "--images",
                 "2", "--samples", "2", "--spacing", "2,1,1"]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as picture:
        width, height = picture.size
    assert height > width  # 6 rows (2 volumes x 3 views) of 3 columns


def test_image_and_mask_move_together(volume_data: Path):
    patches = augmented_volume_patches(volume_data, RunConfig(), images=2, samples=4, seed=3)
    assert [p.stem for p in patches] == ["v0", "v1"]
    for item in patches:
        assert item.images.shape[0] == item.ids.shape[0] == 5
        assert item.spacing is None and item.classes.values == (0, 255)
        for image, ids in zip(item.images, item.ids, strict=True):
            inside, outside = image[0][ids == 1], image[0][ids == 0]
            assert len(inside) and len(outside)
            assert inside.mean() > outside.mean() + 0.4  # the ball's voxels carry its label
        assert not all(np.array_equal(item.ids[0], ids) for ids in item.ids[1:])


def test_overlay_colours_exactly_the_labelled_voxels(volume_data: Path):
    patches = augmented_volume_patches(volume_data, RunConfig(), images=1, samples=2, seed=0)
    rows, titles = volume_preview_rows(patches)
    assert [t[0] for t in titles] == ["v0 axial", "v0 coronal", "v0 sagittal"]
    item = patches[0]
    limits = VolumePlanes.of(item.images[0].numpy(), count=0).limits()
    for column, (image, ids) in enumerate(zip(item.images, item.ids, strict=True)):
        planes = VolumePlanes.of(image.numpy(), ids.numpy(), count=0)
        for row, plane in zip(rows, ("axial", "coronal", "sagittal"), strict=True):
            plain = display_rgb(planes.images[plane], limits)
            coloured = (row[column] != plain).any(axis=-1)
            assert np.array_equal(coloured, planes.labels[plane] == 1), (column, plane)


def test_volume_preview_refuses_a_broken_data_set(tmp_path: Path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    np.save(tmp_path / "images" / "a.npy", np.zeros((4, 8, 8), np.float32))
    code = main(["-q", "preview-augment", str(tmp_path), "--out", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert code == 2 and "a.npy: no mask volume" in err and "Traceback" not in err
