"""Training a 3D U-Net on a volume data set: the 2D recipe (Dice + cross-entropy, AdamW with a
cosine schedule, foreground-aware patches, joint augmentation, best validation epoch kept) with
3D patches, the 3D augmentation and the 3D sliding window for validation.

The network is planned from the voxel spacing (:func:`~unetseg.model.geometry.anisotropic_plan`:
slices far apart are neither convolved across nor pooled until the in-plane axes catch up) and
the patch covers about the same physical extent along every axis. A run folder holds what a 2D
run's does for prediction: ``best.safetensors`` and ``last.safetensors`` (a model file with its
card), ``config.json``, ``metrics.csv`` and ``curves.png``; ``unetseg predict``/``evaluate``
take the model like any other.

Not yet here (they are in 2D training): resuming, several processes, time-budget width
planning and the training report.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from unetseg.config import RunConfig, replace, to_dict
from unetseg.data.augment3d import augment_volume_batch
from unetseg.data.classes import ClassTable
from unetseg.data.dataset import split_pairs
from unetseg.data.folds import split_by_stems
from unetseg.data.normalize import dataset_stats
from unetseg.data.volumes import (
    check_volumes,
    read_volume,
    read_volume_mask,
    volume_files,
)
from unetseg.errors import UserError
from unetseg.files import output_folder, write_csv_atomic, write_text_atomic
from unetseg.infer.engine import resolve_device
from unetseg.infer.volume import normalize_volume, sliding_window_volume_logits, volume_to_float
from unetseg.losses import build_loss
from unetseg.metrics import confusion_matrix, iou, mean_iou
from unetseg.model import UNet
from unetseg.model.geometry import anisotropic_plan
from unetseg.modelfile import ModelCard, save_model
from unetseg.progress import progress
from unetseg.train.optim import build_optimizer, build_scheduler
from unetseg.viz import plot_curves

log = logging.getLogger(__name__)

PATCH_EXTENT = 64
"""In-plane side of a training patch in voxels (the z side covers the same physical length)."""
DEFAULT_WIDTH = 16
"""First-level channels of a 3D network on a CPU budget (a 3D level costs ~D times a 2D one)."""


@dataclass(frozen=True)
class VolumeFitResult:
    """The run folder, its model files, the metrics rows of every epoch and why it ended."""

    run_dir: Path
    best_model: Path
    last_model: Path
    history: list[dict[str, Any]]
    stopped: str


@dataclass(frozen=True)
class _Volume:
    stem: str
    image: torch.Tensor  # (C, D, H, W) float32, normalised
    ids: torch.Tensor  # (D, H, W) int64 class ids (-1 ignored)


def plan_patch(shape: Sequence[int], spacing: Sequence[float] | None,
               multiple: Sequence[int], extent: int = PATCH_EXTENT) -> tuple[int, int, int]:
    """A training patch ``(d, h, w)``: ``extent`` voxels in-plane and the same physical length
    along z, each a multiple of the network's ``multiple`` along it and no larger than the
    smallest volume ``shape`` (an axis shorter than one multiple is taken whole)."""
    ratio = 1.0 if not spacing else float(spacing[1]) / float(spacing[0])
    wants = (max(1, round(extent * ratio)), extent, extent)
    patch = []
    for size, want, m in zip((int(v) for v in shape), wants, multiple, strict=True):
        side = max(m, want // m * m)
        patch.append(min(side, size // m * m) if size >= m else size)
    return patch[0], patch[1], patch[2]


def _load(data: Path, stems: Sequence[str], classes: ClassTable,
          spacing: Sequence[float] | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, masks = volume_files(data / "images"), volume_files(data / "masks")
    out_images, out_ids = [], []
    for stem in stems:
        out_images.append(volume_to_float(read_volume(images[stem], spacing=spacing).array))
        raw = read_volume_mask(masks[stem], spacing=spacing).array
        out_ids.append(classes.encode(raw, str(masks[stem])))
    return out_images, out_ids


def _flat(image: np.ndarray) -> np.ndarray:
    """(C, D, H, W) as (C, D * H, W): the 2D statistics' layout."""
    c, d, h, w = image.shape
    return image.reshape(c, d * h, w)


def sample_patches(volumes: Sequence[_Volume], patch: Sequence[int], batch: int,
                   generator: torch.Generator, foreground_fraction: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random patches ``(B, C, d, h, w)`` and their ids ``(B, d, h, w)``; a share
    ``foreground_fraction`` of them is centred on a voxel of a class (but the first) present in
    the volume, so small structures are seen often."""
    images, ids = [], []
    for _ in range(batch):
        v = volumes[int(torch.randint(len(volumes), (1,), generator=generator))]
        shape = v.ids.shape
        centre = None
        if float(torch.rand((), generator=generator)) < foreground_fraction:
            where = (v.ids > 0).nonzero()
            if len(where):
                centre = where[int(torch.randint(len(where), (1,), generator=generator))]
        start = []
        for axis, (size, side) in enumerate(zip(shape, patch, strict=True)):
            room = size - side
            if centre is not None:
                s = int(centre[axis]) - side // 2
            else:
                s = int(torch.randint(room + 1, (1,), generator=generator))
            start.append(min(max(0, s), room))
        window = tuple(slice(s, s + side) for s, side in zip(start, patch, strict=True))
        images.append(v.image[(slice(None), *window)])
        ids.append(v.ids[window])
    return torch.stack(images), torch.stack(ids)


def fit_volumes(data: str | Path, out: str | Path, cfg: RunConfig | None = None, *,
                spacing: Sequence[float] | None = None, show_progress: bool = True
                ) -> VolumeFitResult:
    """Train a 3D U-Net on ``data/images`` + ``data/masks`` volumes and write the run into
    ``out`` (see the module's text). ``cfg`` gives the loss, the optimiser, epochs, steps per
    epoch, batch, seed, time limit, validation share (or the held-out ``data.val_stems``) and
    augmentation as in 2D; its width (None: :data:`DEFAULT_WIDTH`) and depth shape the
    network. ``spacing`` stands in for files without one.

    Raises:
        UserError: problems ``check`` finds in the data set, or fewer than 2 volumes.
    """
    cfg = cfg or RunConfig()
    data, run_dir = Path(data), output_folder(out)
    report = check_volumes(data, spacing=spacing)
    if report.problems:
        raise UserError(report.problems[0])
    if len(report.rows) < 2:
        raise UserError(f"{data}: {len(report.rows)} volume pair; training needs at least 2"
                        " (one is held out for validation)")
    values = cfg.data.class_values or tuple(sorted({v for r in report.rows
                                                    for v in r["mask_values"]}))
    if len(values) < 2:
        values = (0, *values) if 0 not in values else (0, 1)
    classes = ClassTable.from_values(values, cfg.data.class_names,
                                     ignore_value=cfg.data.ignore_value)
    stems = [r["stem"] for r in report.rows]
    if cfg.data.val_stems is None:
        train_stems, val_stems = split_pairs(stems, max(cfg.data.val_fraction, 1 / len(stems)),
                                             cfg.train.seed)
    else:
        kept, held = split_by_stems([SimpleNamespace(stem=s) for s in stems],
                                    cfg.data.val_stems)
        if not held:
            raise UserError("val_stems names no volume; hold out at least one for validation")
        train_stems, val_stems = [k.stem for k in kept], [h.stem for h in held]
    spacings = [r["spacing"] for r in report.rows if r["spacing"]]
    plan_spacing = (tuple(float(v) for v in np.median(np.array(spacings), axis=0))
                    if spacings else (1.0, 1.0, 1.0))
    images, ids = _load(data, train_stems, classes, spacing)
    val_images, val_ids = _load(data, val_stems, classes, spacing)
    stats = dataset_stats([_flat(x) for x in images], cfg.data.normalization,
                          seed=cfg.train.seed)

    smallest = np.min([r["shape"] for r in report.rows], axis=0)
    depth = cfg.model.depth
    kernels, pools = anisotropic_plan(plan_spacing, depth)
    model_cfg = replace(cfg.model, in_channels=images[0].shape[0],
                        num_classes=classes.num_classes, width=cfg.model.width or DEFAULT_WIDTH,
                        spatial_dims=3, kernel_sizes=kernels, pool_sizes=pools, arch="unet")
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    model = UNet.from_config(model_cfg).to(device)
    patch = plan_patch(smallest, plan_spacing, model.size_multiple)
    run_cfg = replace(cfg, model=model_cfg)

    def prepared(xs: list[np.ndarray], ys: list[np.ndarray], names: Sequence[str]
                 ) -> list[_Volume]:
        return [_Volume(n, torch.as_tensor(x), torch.as_tensor(y).long())
                for n, x, y in zip(names, xs, ys, strict=True)]

    train_set = prepared(images, ids, train_stems)
    val_set = [_Volume(v.stem, normalize_volume(v.image, stats), v.ids)
               for v in prepared(val_images, val_ids, val_stems)]
    loss_fn = build_loss(cfg.train.loss if cfg.train.loss != "weighted-ce" else "dice_ce")
    optimizer = build_optimizer(cfg.train, model.parameters())
    steps = cfg.train.steps_per_epoch or max(8, math.ceil(
        sum(v.ids.numel() for v in train_set) / (math.prod(patch) * cfg.train.batch_size)))
    scheduler = build_scheduler(cfg.train, optimizer, steps_per_epoch=steps)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    card = ModelCard(model_cfg, classes, stats, run_cfg,
                     info={"patch": list(patch), "spacing": list(plan_spacing),
                           "train_volumes": list(train_stems), "val_volumes": list(val_stems)})
    write_text_atomic(run_dir / "config.json", json.dumps(
        {"run": to_dict(run_cfg), "patch": list(patch), "spacing": list(plan_spacing),
         "classes": classes.to_dict(), "train": list(train_stems), "val": list(val_stems)},
        indent=2))
    log.info("3D U-Net: kernels %s, poolings %s, patch %s", kernels, pools, patch)

    history: list[dict[str, Any]] = []
    best, began, stopped = -1.0, time.perf_counter(), "epochs"
    for epoch in range(1, cfg.train.epochs + 1):
        model.train()
        total = 0.0
        for _ in progress(range(steps), desc=f"epoch {epoch}", unit="step",
                          disable=not show_progress, leave=False):
            x, y = sample_patches(train_set, patch, cfg.train.batch_size, generator,
                                  cfg.data.foreground_fraction)
            x, y = augment_volume_batch(x, y, cfg.augment, generator=generator)
            x = torch.stack([normalize_volume(v, stats) for v in x]).to(device)
            loss = loss_fn(model(x), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
        score, per_class = _validate(model, val_set, patch, classes.num_classes)
        row = {"epoch": epoch, "step": epoch * steps, "lr": scheduler.get_last_lr()[0],
               "train_loss": total / steps, "val_mean_iou": score,
               **{f"val_iou/{n}": v for n, v in zip(classes.names, per_class, strict=True)},
               "elapsed_s": round(time.perf_counter() - began, 2)}
        history.append(row)
        save_model(run_dir / "last.safetensors", model, card)
        if score > best:
            best = score
            save_model(run_dir / "best.safetensors", model, card)
        write_csv_atomic(run_dir / "metrics.csv", history)
        plot_curves(history, run_dir / "curves.png")
        if cfg.train.time_limit_s and time.perf_counter() - began >= cfg.train.time_limit_s:
            stopped = "time_limit"
            break
    return VolumeFitResult(run_dir, run_dir / "best.safetensors", run_dir / "last.safetensors",
                           history, stopped)


@torch.inference_mode()
def _validate(model: UNet, volumes: Sequence[_Volume], patch: Sequence[int],
              num_classes: int) -> tuple[float, list[float]]:
    """Mean IoU (and per class) of the validation volumes, predicted with the sliding window."""
    model.eval()
    device = next(model.parameters()).device
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for v in volumes:
        logits = sliding_window_volume_logits(model, v.image.to(device), patch)
        cm += confusion_matrix(logits.argmax(0).cpu(), v.ids, num_classes)
    return float(mean_iou(cm)), [float(x) for x in iou(cm)]
