"""Helpers the tests import (data writers, a training callback, the shared data's path).

They live here, not in ``conftest.py``, because a test directory with a ``conftest.py`` of
its own (``napari_plugin/``) would shadow that module for ``from helpers import``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def disc_pair(size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A gray image with bright discs on a noisy background and its 0/255 mask."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), bool)
    for _ in range(4):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(5, max(6, min(h, w) // 4))
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    image = 60 + 120 * mask + rng.normal(0, 12, (h, w))
    return np.clip(image, 0, 255).astype(np.uint8), (mask * 255).astype(np.uint8)


def write_dataset(root: Path, n: int, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i in range(n):
        image, mask = disc_pair(size, seed + i)
        Image.fromarray(image).save(root / "images" / f"img{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{i:02d}.png")
    return root


class StopAfter:
    """A training callback that interrupts the run like Ctrl-C after a given epoch."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def __call__(self, row: dict) -> None:
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt


def write_ball_volumes(root: Path, count: int = 4, shape=(8, 24, 24),
                       spacing=(4.0, 1.0, 1.0)) -> Path:
    """``root/images`` and ``root/masks`` of ``count`` NIfTI volumes ``case<i>.nii.gz``: bright
    ellipsoids (round in physical space) on noise, and their masks, with ``spacing`` ``(z, y,
    x)`` on the affine's diagonal."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    for i in range(count):
        c = rng.uniform([2, 7, 7], [6, 17, 17])
        r = rng.uniform(4, 7)
        inside = ((z - c[0]) * spacing[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r * r
        image = (0.3 * rng.random(shape) + 0.6 * inside).astype(np.float32)
        for name, arr in (("images", image), ("masks", inside.astype(np.uint8))):
            nib.save(nib.Nifti1Image(arr.transpose(2, 1, 0), affine),
                     str(root / name / f"case{i}.nii.gz"))
    return root
