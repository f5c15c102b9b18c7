"""Pictures of what training sees: augmented pairs and the loss weight maps.

``unetseg preview-augment DATA --out grid.png`` and ``unetseg preview-weights DATA --out
weights.png`` call :func:`preview_augment` and :func:`preview_weights`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unetseg.config import RunConfig
from unetseg.data.augment import augment_batch
from unetseg.data.classes import ClassTable
from unetseg.data.dataset import LoadedPair, load_data
from unetseg.data.weights import attach_weight_maps
from unetseg.errors import UserError
from unetseg.files import output_folder
from unetseg.viz import draw_outline, plot_picture_grid, plot_weight_maps


def _picture_path(out: str | Path) -> Path:
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise UserError(f"{path}: the picture is written as PNG; give a file name ending in .png")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name such as {path / 'preview.png'}")
    output_folder(path.parent)
    return path


def _first_pairs(data: str | Path, cfg: RunConfig, count: int
                 ) -> tuple[list[LoadedPair], ClassTable]:
    if count < 1:
        raise UserError(f"--images {count}: show at least 1 image")
    loaded = load_data(data, cfg.data)
    return loaded.pairs[:count], loaded.classes


def preview_augment(data: str | Path, out: str | Path, *, cfg: RunConfig | None = None,
                    images: int = 3, samples: int = 3, seed: int = 0) -> Path:
    """Draw the first ``images`` pairs of ``data`` beside ``samples`` augmented copies each.

    Each picture is the image with its mask's class borders drawn on it, so the picture shows
    that image and mask move together. The augmentation is ``cfg.augment`` (default: the
    default recipe's) applied to the whole image, seeded by ``seed``; copies are shown in the
    original's intensity range, so gray-value changes stay visible.

    Returns:
        the PNG written.
    """
    cfg = cfg or RunConfig()
    if samples < 1:
        raise UserError(f"--samples {samples}: show at least 1 augmented copy")
    path = _picture_path(out)
    pairs, _ = _first_pairs(data, cfg, images)
    generator = torch.Generator().manual_seed(seed)
    rows, titles = [], []
    for pair in pairs:
        lo, hi = np.percentile(pair.image, [1, 99])
        limits = (float(lo), float(hi))
        x = torch.from_numpy(pair.image).unsqueeze(0).repeat(samples, 1, 1, 1)  # (S, C, H, W)
        y = torch.from_numpy(pair.ids.astype(np.int64)).unsqueeze(0).repeat(samples, 1, 1)
        aug_x, aug_y = augment_batch(x, y, cfg.augment, generator=generator)[:2]
        row = [draw_outline(pair.image, pair.ids, limits=limits)]
        row += [draw_outline(aug_x[i].numpy(), aug_y[i].numpy(), limits=limits)
                for i in range(samples)]
        rows.append(row)
        titles.append([f"{pair.stem}"] + [f"{pair.stem} augmented {i + 1}"
                                          for i in range(samples)])
    plot_picture_grid(rows, titles, path)
    return path


def preview_weights(data: str | Path, out: str | Path, *, cfg: RunConfig | None = None,
                    images: int = 3) -> Path:
    """Draw the U-Net paper's loss weight map of the first ``images`` masks as heat maps.

    The maps are those ``--loss weighted-ce`` trains with (:mod:`unetseg.data.weights`, with
    ``cfg.data``'s ``weight_w0``, ``weight_sigma`` and ``weight_objects``).

    Returns:
        the PNG written.
    """
    cfg = cfg or RunConfig()
    path = _picture_path(out)
    pairs, classes = _first_pairs(data, cfg, images)
    attach_weight_maps(pairs, classes, cfg.data)
    rows = [(p.stem, p.image, p.ids, p.weights) for p in pairs if p.weights is not None]
    plot_weight_maps(rows, path)
    return path
