"""Find image/mask pairs in a data folder and read them: the one path every command takes.

``DATA/images/`` and ``DATA/masks/`` hold files paired by stem (the file name without its last
suffix); a mask may also be named ``<stem>_mask.<ext>``. :func:`scan_pairs` lists the pairs and
every duplicate or unpaired file without stopping (what ``unetseg check`` reports);
:func:`find_pairs` stops at the first duplicate instead (what ``predict`` and ``evaluate``
need). :func:`read_pair_image`, :func:`read_pair_mask` and :func:`check_same_size` read and
check one pair; the data doctor (:mod:`unetseg.data.doctor`) calls them for every pair and
collects their errors, and training keeps what it read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetseg.data import io
from unetseg.data.masks import MaskFile, read_mask_file
from unetseg.errors import UserError

log = logging.getLogger(__name__)

MASK_SUFFIX = "_mask"
_LISTED = 10  # names listed in a warning about unpaired files


@dataclass(frozen=True)
class Pair:
    """An image file and its mask file, matched by ``stem``."""

    stem: str
    image: Path
    mask: Path


@dataclass
class PairScan:
    """What a data folder holds: the pairs, and the files that could not be paired.

    ``duplicates`` maps ``(kind, stem)`` (kind ``image`` or ``mask``) to the files sharing the
    stem; such a stem makes no pair.
    """

    root: Path
    pairs: list[Pair] = field(default_factory=list)
    images: int = 0
    masks: int = 0
    duplicates: dict[tuple[str, str], list[Path]] = field(default_factory=dict)
    unpaired_images: list[Path] = field(default_factory=list)
    unpaired_masks: list[Path] = field(default_factory=list)


def image_files(folder: Path) -> list[Path]:
    """Visible image files directly inside ``folder``, sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.suffix.lower() in io.IMAGE_SUFFIXES and p.is_file()
    )


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


def _by_stem(files: list[Path], stem_of: object) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(stem_of(f), []).append(f)  # type: ignore[operator]
    return groups


def scan_pairs(root: str | os.PathLike[str]) -> PairScan:
    """Pair the files of ``root/images/`` and ``root/masks/``, noting every duplicate stem and
    unpaired file instead of stopping at the first.

    Only ``.png``, ``.tif``, ``.tiff``, ``.jpg`` and ``.jpeg`` files count (any letter case);
    hidden files and sub-folders are ignored. Image and mask may have different suffixes.

    Raises:
        UserError: a folder is missing, or neither folder holds an image file.
    """
    root = check_layout(root)
    found_images, found_masks = image_files(root / "images"), image_files(root / "masks")
    scan = PairScan(root, images=len(found_images), masks=len(found_masks))
    if not found_images and not found_masks:
        raise UserError(f"{root}: images/ and masks/ hold no image files; {layout_hint(root)}")
    images = _by_stem(found_images, lambda f: f.stem)

    def mask_stem(f: Path) -> str:
        if f.stem not in images and f.stem.endswith(MASK_SUFFIX):
            return f.stem[: -len(MASK_SUFFIX)]
        return f.stem

    masks = _by_stem(found_masks, mask_stem)
    for kind, groups in (("image", images), ("mask", masks)):
        scan.duplicates.update({(kind, s): files for s, files in groups.items() if len(files) > 1})
    scan.unpaired_images = [files[0] for s, files in images.items() if s not in masks]
    scan.unpaired_masks = [files[0] for s, files in masks.items() if s not in images]
    scan.pairs = [Pair(s, images[s][0], masks[s][0]) for s in sorted(images)
                  if s in masks and len(images[s]) == 1 and len(masks[s]) == 1]
    return scan


def duplicate_message(kind: str, stem: str, files: Sequence[Path]) -> str:
    """The one-line error for ``files`` (images or masks) that share ``stem``."""
    names = " and ".join(f.name for f in files)
    return (f"{files[0].parent}: {names}: {len(files)} {kind} files share the stem {stem!r};"
            " keep one of them")


def no_pairs_message(scan: PairScan) -> str:
    return (f"{scan.root}: no image/mask pairs found ({scan.images} images, {scan.masks} masks);"
            " a mask must have its image's name (or <name>_mask) in masks/")


def _warn_unpaired(files: list[Path], kind: str) -> None:
    if not files:
        return
    names = [f.name for f in files]
    shown = ", ".join(names[:_LISTED]) + (", ..." if len(names) > _LISTED else "")
    log.warning("%d %s in %s have no partner and are skipped: %s", len(names), kind,
                files[0].parent, shown)


def find_pairs(root: str | os.PathLike[str]) -> list[Pair]:
    """The pairs of ``root`` sorted by stem; files without a partner are skipped with a logged
    warning.

    Raises:
        UserError: a folder is missing, two images (or masks) share a stem, or nothing pairs.
    """
    scan = scan_pairs(root)
    for (kind, stem), files in scan.duplicates.items():
        raise UserError(duplicate_message(kind, stem, files))
    _warn_unpaired(scan.unpaired_images, "images")
    _warn_unpaired(scan.unpaired_masks, "masks")
    if not scan.pairs:
        raise UserError(no_pairs_message(scan))
    return scan.pairs


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
            found += image_files(path / "images" if (path / "images").is_dir() else path)
        elif path.is_file():
            if path.suffix.lower() not in io.IMAGE_SUFFIXES:
                raise UserError(f"{path}: not an image file name; use one of"
                                f" {', '.join(io.IMAGE_SUFFIXES)}")
            found.append(path)
        else:
            raise UserError(f"{path}: no such file or folder; check the path")
    unique = list(dict.fromkeys(found))
    if not unique:
        shown = ", ".join(str(p) for p in paths) or "(no paths given)"
        raise UserError(f"{shown}: no images found; give image files or folders holding"
                        f" {'/'.join(io.IMAGE_SUFFIXES)} files")
    return unique


def read_pair_image(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """The pair's image as stored ``(C, H, W)`` samples and as float32 in the read scale of
    :func:`~unetseg.data.io.read_image`; :class:`UserError` if it cannot be used."""
    samples = io.read_image_samples(pair.image)
    return samples, io.scale_to_float(pair.image, samples)  # NaN/inf and type checks


def read_pair_mask(pair: Pair) -> MaskFile:
    """The pair's mask with its encoding (values, palette indices or colours)."""
    return read_mask_file(pair.mask)


def check_same_size(pair: Pair, image_hw: tuple[int, ...], mask_hw: tuple[int, ...]) -> None:
    """:class:`UserError` naming the mask when it does not have its image's height and width."""
    if tuple(image_hw) != tuple(mask_hw):
        (ih, iw), (mh, mw) = image_hw, mask_hw
        raise UserError(f"{pair.mask}: mask is {mw}x{mh} but its image {pair.image.name} is"
                        f" {iw}x{ih} (width x height); masks must have the image's size")
