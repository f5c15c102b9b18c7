"""The napari reader: label images written by ``unetseg predict`` as Labels layers.

Every label image unetseg writes (PNG, or the BigTIFF of a streamed prediction) carries its
class table (:func:`unetseg.data.masks.label_metadata`: a PNG text chunk, the TIFF's first
ImageDescription), so the layer gets the class values, names and the overlays' colours
(:mod:`unetseg.napari.labels`). A palette PNG or palette TIFF without it (an older
prediction, or any indexed mask) opens with its palette's colours. Other PNGs and TIFFs are
left to napari's own reader: :func:`get_reader` returns None for them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.data.classes import ClassTable
from unetseg.data.io import TIFF_SUFFIXES, read_image_samples, read_mask
from unetseg.data.masks import LABEL_METADATA_KEY, read_label_metadata
from unetseg.napari.labels import class_values, ids_to_values, labels_kwargs

LayerData = tuple[Any, dict[str, Any], str]
SUFFIXES = (".png", *TIFF_SUFFIXES)


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: :func:`read_labels` for a unetseg label image (or a palette image),
    None for anything else. Reads headers only."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    target = Path(path)
    if target.suffix.lower() not in SUFFIXES or not target.is_file():
        return None
    try:
        meta, palette = _header(target)
    except (OSError, ValueError, SyntaxError):  # PIL raises SyntaxError for broken PNGs
        return None
    if meta is None and palette is None:
        return None
    return read_labels


def read_labels(path: str | list[str]) -> list[LayerData]:
    """The Labels layer of a label image: ``[(values (H, W), add_labels keywords, "labels")]``.

    With the class table: the class values (colour masks: the class ids) in each class's colour,
    the class names on hover; with only a palette: the palette indices in the palette's colours.
    """
    target = Path(path[0] if isinstance(path, list) else path)
    meta, palette = _header(target)
    name = target.stem
    if meta is not None:
        table, colours = meta
        values = _class_values(target, table)
        kwargs = labels_kwargs(class_values(table), colours, table.names, name=name)
        kwargs["metadata"] = {"unetseg_classes": table.to_dict()}
        return [(values, kwargs, "labels")]
    assert palette is not None
    values = read_mask(target)
    present = np.flatnonzero(np.bincount(values.ravel(), minlength=1))
    present = present[present < len(palette)]
    kwargs = labels_kwargs(present.tolist(), palette[present], None, name=name)
    return [(values, kwargs, "labels")]


def _class_values(path: Path, table: ClassTable) -> np.ndarray:
    """The file's class values: as stored, or for colour masks the ids of its colours."""
    if table.encoding != "rgb":
        return read_mask(path)
    colours = np.moveaxis(read_image_samples(path), 0, -1)
    return ids_to_values(table.encode(colours, str(path)), table)


def _header(path: Path) -> tuple[tuple[ClassTable, np.ndarray] | None, np.ndarray | None]:
    """(class table and display colours, or None; ``(N, 3)`` palette of an indexed image
    without a class table, or None), from the file's header."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            meta = read_label_metadata(page.description)
            colormap = page.colormap if page.photometric == 3 else None  # palette TIFF
        if meta is not None or colormap is None:
            return meta, None
        return None, (np.asarray(colormap, np.float64).T / 257).round().astype(np.uint8)
    from PIL import Image

    with Image.open(path) as im:
        meta = read_label_metadata(im.info.get(LABEL_METADATA_KEY))
        flat = im.getpalette() if im.mode == "P" else None
    if meta is not None or flat is None:
        return meta, None
    return None, np.array(flat, np.uint8).reshape(-1, 3)
