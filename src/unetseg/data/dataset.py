"""Training data: find image/mask pairs, decode them once, split them, sample patches.

The pipeline is ``find_pairs -> load_pairs -> split_pairs -> PatchDataset``; the class table
comes from :meth:`~unetseg.data.classes.ClassTable.infer` over :func:`read_raw_masks`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from unetseg.data.classes import IGNORE_INDEX, ClassTable
from unetseg.data.io import IMAGE_SUFFIXES, read_image, read_mask
from unetseg.data.masks import encode_mask, read_mask_file
from unetseg.errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")
MASK_SUFFIX = "_mask"
MAX_INDICES_PER_CLASS = 10_000
"""Pixel positions kept per class and image for foreground-centred crops."""
_LISTED = 10  # names listed in a warning about unpaired files


@dataclass(frozen=True)
class Pair:
    """An image file and its mask file, matched by ``stem``."""

    stem: str
    image: Path
    mask: Path


# --------------------------------------------------------------------------- finding files


def _image_files(folder: Path) -> list[Path]:
    """Visible image files directly inside ``folder``, sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def _by_stem(files: list[Path], kind: str) -> dict[str, Path]:
    """Map stem -> file; two files with one stem are an error."""
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise UserError(
                f"{out[f.stem]} and {f.name}: two {kind} files with the stem {f.stem!r}; "
                "keep one of them"
            )
        out[f.stem] = f
    return out


def _warn_unpaired(names: list[str], kind: str, folder: Path) -> None:
    if not names:
        return
    shown = ", ".join(names[:_LISTED]) + (", ..." if len(names) > _LISTED else "")
    log.warning("%d %s in %s have no partner and are skipped: %s", len(names), kind, folder, shown)


def layout_hint(root: Path) -> str:
    """The expected folder layout, for error messages."""
    return f"expected {root}/images/<name>.png and {root}/masks/<name>.png"


def check_layout(root: str | os.PathLike[str]) -> Path:
    """:class:`UserError` unless ``root`` holds ``images/`` and ``masks/``; returns it as a Path."""
    root = Path(root)
    layout = layout_hint(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; {layout}")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise UserError(f"{root / sub}: folder is missing; {layout}")
    return root


def find_pairs(root: str | os.PathLike[str]) -> list[Pair]:
    """Pair the files of ``root/images/`` and ``root/masks/``.

    Pairing rule: files are paired by stem (the file name without its last suffix, so
    ``a.png`` has stem ``a``); a mask may also be named ``<stem>_mask.<ext>``. Image and mask
    may have different suffixes (``a.jpg`` with ``a.png``). Only ``.png``, ``.tif``,
    ``.tiff``, ``.jpg`` and ``.jpeg`` files count (any letter case); hidden files (names
    starting with ``.``) and sub-folders are ignored. Files without a partner are skipped with
    a logged warning.

    Args:
        root: folder holding ``images/`` and ``masks/``.

    Returns:
        the pairs sorted by stem.

    Raises:
        UserError: a folder is missing, two images (or masks) share a stem, or nothing pairs.
    """
    root = check_layout(root)
    images = _by_stem(_image_files(root / "images"), "image")
    masks: dict[str, Path] = {}
    unpaired_masks: list[str] = []
    for mask in _image_files(root / "masks"):
        stem = mask.stem
        if stem not in images and stem.endswith(MASK_SUFFIX):
            stem = stem[: -len(MASK_SUFFIX)]
        if stem not in images:
            unpaired_masks.append(mask.name)
        elif stem in masks:
            raise UserError(
                f"{masks[stem]} and {mask.name}: two masks for the image "
                f"{images[stem].name}; keep one of them"
            )
        else:
            masks[stem] = mask
    _warn_unpaired([images[s].name for s in images if s not in masks], "images", root / "images")
    _warn_unpaired(unpaired_masks, "masks", root / "masks")
    if not masks:
        raise UserError(
            f"{root}: no image/mask pairs found ({len(images)} images, "
            f"{len(masks) + len(unpaired_masks)} masks); a mask must have its image's name "
            "(or <name>_mask) in masks/"
        )
    return [Pair(stem, images[stem], masks[stem]) for stem in sorted(masks)]


def list_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders into image files, in the order given (folders sorted).

    A folder contributes its image files (see :data:`~unetseg.data.io.IMAGE_SUFFIXES`; hidden
    files skipped); a folder that has an ``images/`` sub-folder contributes that sub-folder's.
    Files listed twice are kept once.

    Raises:
        UserError: a path does not exist, a file is not an image, or no image is found.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            folder = path / "images" if (path / "images").is_dir() else path
            found += _image_files(folder)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise UserError(
                    f"{path}: not an image file name; use one of {', '.join(IMAGE_SUFFIXES)}"
                )
            found.append(path)
        else:
            raise UserError(f"{path}: no such file or folder; check the path")
    unique = list(dict.fromkeys(found))
    if not unique:
        shown = ", ".join(str(p) for p in paths) or "(no paths given)"
        raise UserError(
            f"{shown}: no images found; give image files or folders holding "
            f"{'/'.join(IMAGE_SUFFIXES)} files"
        )
    return unique


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
    """

    stem: str
    image: np.ndarray
    ids: np.ndarray
    image_path: Path
    mask_path: Path
    weights: np.ndarray | None = None


def _load_one(pair: Pair, classes: ClassTable) -> LoadedPair:
    image = read_image(pair.image)  # (C, H, W)
    mask = read_mask_file(pair.mask)  # label values, palette indices or colours
    (ih, iw), (mh, mw) = image.shape[1:], mask.shape
    if (ih, iw) != (mh, mw):
        raise UserError(
            f"{pair.mask}: mask is {mw}x{mh} but its image {pair.image.name} is {iw}x{ih} "
            "(width x height); masks must have the image's size"
        )
    return LoadedPair(pair.stem, image, encode_mask(mask, classes), pair.image, pair.mask)


def load_pairs(
    pairs: Sequence[Pair], classes: ClassTable, *, progress: bool = False
) -> list[LoadedPair]:
    """Decode every pair once and check it: sizes match, one channel count for all images.

    Args:
        pairs: from :func:`find_pairs`.
        classes: maps the masks' raw values to class ids.
        progress: show a progress bar.

    Raises:
        UserError: unreadable file, size mismatch, odd channel count or unknown mask value.
    """
    items: Iterable[Pair] = pairs
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(pairs, desc="reading images", unit="image", leave=False)
    loaded: list[LoadedPair] = []
    for pair in items:
        item = _load_one(pair, classes)
        if loaded and item.image.shape[0] != loaded[0].image.shape[0]:
            first = loaded[0]
            raise UserError(
                f"{pair.image}: image has {item.image.shape[0]} channel(s) but "
                f"{first.image_path.name} has {first.image.shape[0]}; all images must have "
                "the same channel count (convert them all to gray or all to RGB)"
            )
        loaded.append(item)
    log.info("loaded %d image/mask pairs", len(loaded))
    return loaded


def read_raw_masks(pairs: Iterable[Pair]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(mask path, raw (H, W) values)`` per pair, for ``ClassTable.infer``."""
    for pair in pairs:
        yield str(pair.mask), read_mask(pair.mask)


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
        (the same crop of each pair's loss weights) when the pairs carry weights.
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
        return torch.from_numpy(image), torch.from_numpy(ids)
