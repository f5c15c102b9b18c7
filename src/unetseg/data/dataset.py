"""Training data: the checked, decoded pairs of a data folder, split by seed, cut into patches.

The pipeline is ``load_data -> split_pairs -> PatchDataset``: :func:`load_data` reads every
pair once through :mod:`unetseg.data.pairs`, checked by the data doctor
(:mod:`unetseg.data.doctor`), which also infers the class table.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from unetseg.config import DataConfig
from unetseg.data.classes import IGNORE_INDEX, ClassTable
from unetseg.data.doctor import examine_data, fingerprint_of
from unetseg.data.fingerprint import Fingerprint, FingerprintBuilder
from unetseg.data.masks import encode_mask
from unetseg.data.report import Report, require_clean
from unetseg.errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_INDICES_PER_CLASS = 10_000
"""Pixel positions kept per class and image for foreground-centred crops."""


# --------------------------------------------------------------------------- decoding


@dataclass
class LoadedPair:
    """A decoded pair.

    Attributes:
        stem: the pair's stem.
        image: float32 ``(C, H, W)``.
        ids: int16 class ids ``(H, W)``; ignored pixels are ``IGNORE_INDEX``.
        image_path: the image file.
        mask_path: the mask file.
        weights: optional float32 per-pixel loss weights ``(H, W)``, computed once per mask
            (see :func:`unetseg.data.weights.attach_weight_maps`) and cropped with the ids.
        instances: optional int32 instance labels ``(H, W)`` (0 background, one id per
            object, -1 ignored) for instance training
            (:func:`unetseg.data.instance_targets.attach_instances`), cropped with the ids.
    """

    stem: str
    image: np.ndarray
    ids: np.ndarray
    image_path: Path
    mask_path: Path
    weights: np.ndarray | None = None
    instances: np.ndarray | None = None


@dataclass(frozen=True)
class LoadedData:
    """A checked data folder, decoded: its class table, every pair as class ids, and what the
    check found (class counts and weights, warnings), for the training report."""

    classes: ClassTable
    pairs: list[LoadedPair]
    report: Report | None = None
    fingerprint: Fingerprint | None = None


def load_data(root: str | os.PathLike[str], cfg: DataConfig | None = None, *,
              progress: bool = False, fingerprint: bool = False) -> LoadedData:
    """Read, check and decode every pair of ``root`` once.

    The checks are the data doctor's (``unetseg check``; :func:`~unetseg.data.doctor.
    examine_data`): any error ends with one line naming the file (and, for several, a count
    and a pointer to ``unetseg check``), warnings are logged. With ``fingerprint`` the data
    set's fingerprint (:mod:`unetseg.data.fingerprint`) is measured in the same pass.
    """
    builder = FingerprintBuilder() if fingerprint else None
    report, reads = examine_data(root, cfg, keep=True, progress=progress, fingerprint=builder)
    require_clean(report)
    assert report.classes is not None
    classes = report.classes
    pairs = [LoadedPair(r.pair.stem, r.image, encode_mask(r.mask, classes), r.pair.image,
                        r.pair.mask) for r in reads]
    log.info("loaded %d image/mask pairs", len(pairs))
    found = fingerprint_of(report, reads, builder) if builder is not None else None
    return LoadedData(classes, pairs, report, found)


# --------------------------------------------------------------------------- splitting


def split_pairs(items: Sequence[T], val_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Split into ``(train, val)`` by a seeded permutation.

    ``round(len * val_fraction)`` items go to validation, at least 1 when ``val_fraction > 0``
    and there are 2 or more items, and always leaving 1 for training. Both lists keep the
    input order. The result depends only on ``len(items)``, ``val_fraction`` and ``seed``.

    Raises:
        UserError: ``val_fraction`` outside ``[0, 1)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"validation fraction {val_fraction} must be in [0, 1); e.g. 0.2")
    n = len(items)
    if val_fraction == 0 or n < 2:
        if val_fraction > 0:
            log.warning("only %d image: nothing left for validation", n)
        return list(items), []
    n_val = min(n - 1, max(1, math.floor(n * val_fraction + 0.5)))
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = set(perm[:n_val].tolist())
    train = [items[i] for i in range(n) if i not in val_idx]
    val = [items[i] for i in range(n) if i in val_idx]
    return train, val


# --------------------------------------------------------------------------- patches


def _pad_to(array: np.ndarray, size: int) -> np.ndarray:
    """Pad the last two axes to at least ``size`` each, centred.

    Mirror padding (without repeating the edge) when the image is big enough for one
    reflection, else edge padding.
    """
    widths = [(0, 0)] * (array.ndim - 2)
    mirror = True
    for extent in array.shape[-2:]:
        total = max(0, size - extent)
        before, after = total // 2, total - total // 2
        widths.append((before, after))
        mirror &= max(before, after) <= extent - 1
    if all(w == (0, 0) for w in widths):
        return array  # big enough: no copy
    return np.pad(array, widths, mode="reflect" if mirror else "edge")


def _class_indices(ids: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Flat pixel indices per class present in ``ids`` (ignore excluded), each subsampled."""
    flat = ids.ravel()
    order = np.argsort(flat, kind="stable")  # groups pixels by class id
    classes, starts, counts = np.unique(flat[order], return_index=True, return_counts=True)
    out: list[np.ndarray] = []
    for c, start, count in zip(classes.tolist(), starts.tolist(), counts.tolist()):
        if c == IGNORE_INDEX:
            continue
        idx = order[start : start + count]
        if count > MAX_INDICES_PER_CLASS:
            idx = np.sort(rng.choice(idx, MAX_INDICES_PER_CLASS, replace=False))
        out.append(idx.astype(np.int64))
    return out


class PatchDataset(Dataset[tuple[torch.Tensor, ...]]):
    """Random square crops from decoded pairs, reproducible from ``(seed, epoch, index)``.

    Each item picks an image uniformly. With probability ``foreground_fraction`` the crop is
    centred (then clamped inside the image) on a random pixel of a class chosen uniformly
    among those present in that image, so rare classes are seen often; otherwise the crop
    position is uniform. Images smaller than the patch are padded (mirrored when possible,
    else edge-repeated); the ids are padded the same way.

    Call :meth:`set_epoch` before each epoch. DataLoader workers copy the dataset when an
    iterator starts, so do not use ``persistent_workers=True``.

    Args:
        pairs: decoded training pairs.
        patch_size: side P of the square crop in pixels.
        length: number of items per epoch.
        foreground_fraction: share of class-centred crops, in [0, 1].
        seed: non-negative base seed.

    Shape:
        item: ``(image (C, P, P) float32, ids (P, P) int64)``, plus ``weights (P, P) float32``
        (the same crop of each pair's loss weights) when the pairs carry weights, or
        ``instances (P, P) int64`` (the same crop of their instance labels) when they carry
        those.
    """

    def __init__(
        self,
        pairs: Sequence[LoadedPair],
        patch_size: int,
        *,
        length: int,
        foreground_fraction: float = 0.5,
        seed: int = 0,
    ) -> None:
        if not pairs:
            raise ValueError("PatchDataset needs at least one pair")
        if patch_size < 1 or length < 0 or seed < 0:
            raise ValueError(f"bad patch_size={patch_size}, length={length} or seed={seed}")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.patch_size = patch_size
        self.length = length
        self.foreground_fraction = foreground_fraction
        self.seed = seed
        self.epoch = 0
        rng = np.random.default_rng([seed, 2**32 - 1])  # only for subsampling the indices
        self._images = [_pad_to(p.image, patch_size) for p in pairs]  # (C, H', W')
        self._ids = [_pad_to(p.ids, patch_size) for p in pairs]  # (H', W')
        carried = [p.weights is not None for p in pairs]
        if any(carried) and not all(carried):
            raise ValueError("either every pair or none carries loss weights")
        self._weights = ([_pad_to(p.weights, patch_size) for p in pairs if p.weights is not None]
                         if all(carried) else None)  # (H', W') each
        labelled = [p.instances is not None for p in pairs]
        if any(labelled) and not all(labelled):
            raise ValueError("either every pair or none carries instance labels")
        if all(carried) and all(labelled):
            raise ValueError("pairs carry loss weights or instance labels, not both")
        self._instances = ([_pad_to(p.instances, patch_size) for p in pairs
                            if p.instances is not None] if all(labelled) else None)
        self._indices = [_class_indices(ids, rng) for ids in self._ids]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _corner(self, k: int, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left corner of the crop in image ``k``."""
        p = self.patch_size
        height, width = self._ids[k].shape
        per_class = self._indices[k]
        if per_class and rng.random() < self.foreground_fraction:
            idx = per_class[rng.integers(len(per_class))]
            y, x = divmod(int(idx[rng.integers(len(idx))]), width)
            top = min(max(y - p // 2, 0), height - p)
            left = min(max(x - p // 2, 0), width - p)
            return top, left
        return int(rng.integers(height - p + 1)), int(rng.integers(width - p + 1))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} items")
        rng = np.random.default_rng([self.seed, self.epoch, i])
        k = int(rng.integers(len(self._images)))
        top, left = self._corner(k, rng)
        window = np.s_[top : top + self.patch_size, left : left + self.patch_size]
        image = np.array(self._images[k][(slice(None), *window)], dtype=np.float32)
        ids = np.array(self._ids[k][window], dtype=np.int64)
        if self._weights is not None:
            weights = np.array(self._weights[k][window], dtype=np.float32)
            return torch.from_numpy(image), torch.from_numpy(ids), torch.from_numpy(weights)
        if self._instances is not None:
            instances = np.array(self._instances[k][window], dtype=np.int64)
            return torch.from_numpy(image), torch.from_numpy(ids), torch.from_numpy(instances)
        return torch.from_numpy(image), torch.from_numpy(ids)
