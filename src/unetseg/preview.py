"""Pictures of what training sees: augmented pairs and the loss weight maps.

``unetseg preview-augment DATA --out grid.png`` and ``unetseg preview-weights DATA --out
weights.png`` call :func:`preview_augment` and :func:`preview_weights`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unetseg.config import RunConfig
from unetseg.data.augment import augment_batch
from unetseg.data.augment3d import augment_volume_batch
from unetseg.data.classes import ClassTable
from unetseg.data.dataset import LoadedPair, load_data
from unetseg.data.masks import class_colours
from unetseg.data.volumes import check_volumes, has_volume_only_files
from unetseg.data.weights import attach_weight_maps
from unetseg.errors import UserError
from unetseg.files import output_folder
from unetseg.model.geometry import anisotropic_plan
from unetseg.viz import VolumePlanes, draw_outline, plot_picture_grid, plot_weight_maps


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
                    images: int = 3, samples: int = 3, seed: int = 0, volume: bool = False,
                    spacing: Sequence[float] | None = None) -> Path:
    """Draw the first ``images`` pairs of ``data`` beside ``samples`` augmented copies each.

    Each picture is the image with its mask's class borders drawn on it, so the picture shows
    that image and mask move together. The augmentation is ``cfg.augment`` (default: the
    default recipe's) applied to the whole image, seeded by ``seed``; copies are shown in the
    original's intensity range, so gray-value changes stay visible.

    A volume data set (``volume``, or NIfTI and ``.npy`` files) is drawn as 3D training sees
    it (:func:`augmented_volume_patches`): per volume one training patch and its augmented
    copies, each as its three orthogonal views (rows) with the mask's classes blended over
    them; ``spacing`` stands in for files without one.

    Returns:
        the PNG written.
    """
    cfg = cfg or RunConfig()
    if samples < 1:
        raise UserError(f"--samples {samples}: show at least 1 augmented copy")
    path = _picture_path(out)
    if volume or has_volume_only_files(data):
        patches = augmented_volume_patches(data, cfg, images=images, samples=samples,
                                           seed=seed, spacing=spacing)
        rows, titles = volume_preview_rows(patches)
        plot_picture_grid(rows, titles, path)
        return path
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


@dataclass(frozen=True)
class VolumePatches:
    """One volume's training patch and its augmented copies, in the read scale.

    Attributes:
        stem: the volume's name.
        images: ``(1 + samples, C, d, h, w)``, the original patch first.
        ids: ``(1 + samples, d, h, w)`` class ids (-1 ignored).
        spacing: the volume's ``(z, y, x)`` spacing, or None.
        classes: the data set's classes.
    """

    stem: str
    images: torch.Tensor
    ids: torch.Tensor
    spacing: tuple[float, float, float] | None
    classes: ClassTable


def augmented_volume_patches(data: str | Path, cfg: RunConfig, *, images: int = 3,
                             samples: int = 3, seed: int = 0,
                             spacing: Sequence[float] | None = None) -> list[VolumePatches]:
    """For the first ``images`` volume pairs of ``data``: a patch of the size 3D training
    would plan (:func:`~unetseg.train.volumes.plan_patch`), centred on a labelled voxel as
    ``cfg.data.foreground_fraction`` allows, and ``samples`` copies augmented by
    :func:`~unetseg.data.augment3d.augment_volume_batch` with ``cfg.augment`` and the data
    set's median spacing (as training draws them), seeded by ``seed``; all in the volumes'
    read scale.

    Raises:
        UserError: problems ``check`` finds in the data set, or ``images`` below 1.
    """
    from unetseg.train.volumes import (
        TrainingVolume,
        load_volume_pairs,
        plan_patch,
        plan_spacing,
        pooling_multiple,
        sample_patches,
        volume_classes,
    )

    if images < 1:
        raise UserError(f"--images {images}: show at least 1 image")
    report = check_volumes(data, spacing=spacing)
    if report.problems:
        raise UserError(report.problems[0])
    classes = volume_classes(report, cfg.data)
    rows = report.rows[:images]
    stems = [r["stem"] for r in rows]
    arrays, ids = load_volume_pairs(Path(data), stems, classes, spacing)
    median = plan_spacing(report)
    _, pools = anisotropic_plan(median, cfg.model.depth)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for row, stem, image, labels in zip(rows, stems, arrays, ids, strict=True):
        patch = plan_patch(labels.shape, row["spacing"], pooling_multiple(pools))
        one = TrainingVolume(stem, torch.from_numpy(image), torch.from_numpy(labels).long())
        x, y = sample_patches([one], patch, 1, generator, cfg.data.foreground_fraction)
        aug_x, aug_y = augment_volume_batch(x.repeat(samples, 1, 1, 1, 1),
                                            y.repeat(samples, 1, 1, 1), cfg.augment,
                                            generator=generator, spacing=median)
        volume_spacing = tuple(row["spacing"]) if row["spacing"] else None
        out.append(VolumePatches(stem, torch.cat([x, aug_x]), torch.cat([y, aug_y]),
                                 volume_spacing, classes))
    return out


def volume_preview_rows(patches: Sequence[VolumePatches]
                        ) -> tuple[list[list[np.ndarray]], list[list[str]]]:
    """Pictures of :func:`augmented_volume_patches`: per volume three rows (axial, coronal,
    sagittal views through the patch's centre), one column per patch (the original first),
    the classes but the first blended over each in the data set's colours, all in the
    original's intensity range."""
    rows, titles = [], []
    for item in patches:
        original = item.images[0].numpy()
        limits = VolumePlanes.of(original, count=0).limits()
        palette = class_colours(item.classes)
        views = [VolumePlanes.of(x.numpy(), y.numpy(), count=0).views(
            limits=limits, palette=palette, spacing=item.spacing)
            for x, y in zip(item.images, item.ids, strict=True)]
        for plane in ("axial", "coronal", "sagittal"):
            rows.append([v[plane] for v in views])
            titles.append([f"{item.stem} {plane}"] + [f"augmented {i} {plane}"
                                                     for i in range(1, len(views))])
    return rows, titles
