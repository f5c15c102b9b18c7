"""Arrays to image files: label PNGs, colour PNGs and TIFFs of probabilities.

Every writer is atomic (:func:`unetseg.files.atomic_path`): the file appears whole under its
final name or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, PngImagePlugin

from unetseg.data.io import TIFF_SUFFIXES
from unetseg.files import atomic_path

PathLike = str | os.PathLike[str]


def _require_suffix(path: Path, suffixes: tuple[str, ...]) -> None:
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{path}: file name must end with one of {', '.join(suffixes)}")


def png_text(text: Mapping[str, str] | None) -> PngImagePlugin.PngInfo | None:
    """PNG text chunks (``tEXt``, or ``iTXt`` for non-Latin-1 text) for ``Image.save``."""
    if not text:
        return None
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        if value.isascii():
            info.add_text(key, value)
        else:
            info.add_itxt(key, value)
    return info


def write_label(path: PathLike, values: np.ndarray, *, text: Mapping[str, str] | None = None
                ) -> None:
    """Write integer label values as a gray PNG, atomically.

    Args:
        path: destination, ending in ``.png``.
        values: ``(H, W)`` non-negative integers (or bool); stored as 8-bit when the maximum is
            at most 255, else 16-bit (at most 65535).
        text: PNG text chunks to store (key -> value), e.g. the class table.
    """
    path = Path(path)
    _require_suffix(path, (".png",))
    values = np.asarray(values)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"label image must be a non-empty (H, W) array, got {values.shape}")
    if not (values.dtype == np.bool_ or np.issubdtype(values.dtype, np.integer)):
        raise TypeError(f"label values must be integers, got {values.dtype}")
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise ValueError(f"label values must lie in 0..65535, got {low}..{high}")
    dtype = np.uint8 if high <= 255 else np.uint16
    im = Image.fromarray(np.ascontiguousarray(values.astype(dtype)))
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG", pnginfo=png_text(text))


def write_rgb(path: PathLike, rgb: np.ndarray, *, text: Mapping[str, str] | None = None
              ) -> None:
    """Write an ``(H, W, 3)`` uint8 colour image as PNG, atomically, with PNG text chunks
    ``text``."""
    path = Path(path)
    _require_suffix(path, (".png",))
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError(f"expected a non-empty (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    im = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG", pnginfo=png_text(text))


def write_tiff(path: PathLike, array: np.ndarray) -> None:
    """Write an array (e.g. class probabilities ``(K, H, W)``) as a zlib-compressed TIFF.

    Args:
        path: destination, ending in ``.tif`` or ``.tiff``.
        array: ``(H, W)`` or ``(K, H, W)``; float arrays are stored as float32, uint8 and bool
            as uint8. Reading it back with ``tifffile.imread`` gives the same shape.
    """
    path = Path(path)
    _require_suffix(path, TIFF_SUFFIXES)
    array = np.asarray(array)
    if array.ndim not in (2, 3) or array.size == 0:
        raise ValueError(f"expected a non-empty (H, W) or (K, H, W) array, got {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32, copy=False)
    elif array.dtype in (np.bool_, np.uint8):
        array = array.astype(np.uint8, copy=False)
    else:
        raise TypeError(f"expected a float or uint8 array, got {array.dtype}")
    planar = "separate" if array.ndim == 3 else None
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp, array, photometric="minisblack", planarconfig=planar, compression="zlib"
        )


def write_instances(folder: PathLike, stem: str, labels: np.ndarray) -> Path:
    """Write object labels ``(H, W)`` (0 background, ids 1..n) as a 16-bit
    ``<stem>_instances.png``, or as a zlib-compressed 32-bit TIFF ``<stem>_instances.tif`` when
    an id exceeds 65535, atomically; return the path."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"object labels must be an integer (H, W) array, got {labels.shape}"
                         f" {labels.dtype}")
    high = int(labels.max()) if labels.size else 0
    if high <= 65535:
        path = Path(folder) / f"{stem}_instances.png"
        if int(labels.min(initial=0)) < 0:
            raise ValueError("object labels must be >= 0")
        im = Image.fromarray(np.ascontiguousarray(labels.astype(np.uint16)))
        with atomic_path(path) as tmp:
            im.save(tmp, format="PNG")
        return path
    path = Path(folder) / f"{stem}_instances.tif"
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(np.uint32), photometric="minisblack",
                         compression="zlib")
    return path
