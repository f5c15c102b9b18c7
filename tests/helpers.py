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
