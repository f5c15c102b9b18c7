"""Mask files in every encoding, palette files, and the class table built from them.

A mask file holds classes in one of three encodings (:data:`~unetseg.data.classes.MaskEncoding`):

* ``"label"``: one channel of integer values: 8- or 16-bit PNG, integer or integral float TIFF,
  consecutive (``0..K-1``) or not (``0/255``, ``0, 7, 42``). An RGB file whose three channels
  are equal everywhere is a gray label mask.
* ``"rgb"``: an 8-bit RGB colour mask; each class is one colour.
* ``"palette"``: a palette-mode ("P") PNG; the pixels are palette indices.

A data set's encoding is ``"rgb"`` when any mask is a colour mask (gray masks among them are read
as the colours ``(v, v, v)``), ``"palette"`` when every mask is a P PNG, else ``"label"``.

For colour masks the classes are either **discovered** (every colour found in the training masks
is a class; its value is ``R*65536 + G*256 + B``, its name ``#rrggbb``) or given by a **palette
file** (``--palette``): JSON or CSV with a name and a colour per class, optionally an id and an
ignore flag (see :mod:`unetseg.data.palette_file`). A palette file also names the classes of
label and palette masks (its ids are then the mask values) and gives their display colours.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from unetseg.config import DataConfig
from unetseg.data import io
from unetseg.data.classes import (
    RGB,
    ClassTable,
    MaskEncoding,
    pack_rgb,
    unpack_rgb,
)
from unetseg.data.palette_file import read_palette_file
from unetseg.data.write import png_text, write_label, write_rgb
from unetseg.errors import UserError
from unetseg.files import atomic_path

PathLike = str | os.PathLike[str]
_GRAY = 0x010101  # packed colour of the gray level 1: (1, 1, 1)


# --------------------------------------------------------------------------- reading masks


@dataclass(frozen=True)
class MaskFile:
    """One decoded mask file.

    Attributes:
        path: the file.
        encoding: what the file holds: ``"label"``, ``"rgb"`` or ``"palette"``.
        data: ``(H, W)`` integer values (label, palette indices) or ``(H, W, 3)`` uint8 colours.
        dtype: the stored sample type (``"uint8"``, ``"uint16"``, ``"float32"``, ...).
        palette: flat RGB palette of a P PNG, else empty.
    """

    path: Path
    encoding: MaskEncoding
    data: np.ndarray
    dtype: str
    palette: tuple[int, ...] = ()

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.data.shape[0]), int(self.data.shape[1])

    def codes(self, encoding: MaskEncoding) -> np.ndarray:
        """``(H, W)`` codes of the pixels for a data set of ``encoding``: label values and
        palette indices as they are; for ``"rgb"`` packed colours (gray values ``v`` as
        ``(v, v, v)``).

        Raises:
            UserError: a 16-bit label mask in a set of colour masks.
        """
        if encoding != "rgb":
            if self.encoding == "rgb":
                raise UserError(f"{self.path}: colour mask among label masks; save every mask"
                                " the same way (all colour or all label)")
            return self.data
        if self.encoding == "rgb":
            return pack_rgb(self.data)
        if self.data.size and int(self.data.max()) > 255:
            raise UserError(f"{self.path}: 16-bit label mask among colour masks; save every"
                            " mask the same way (all colour or all label)")
        return self.data.astype(np.int64) * _GRAY


def _split_palette(path: Path, im: Image.Image, palette: list[int]) -> np.ndarray:
    """``(C, H, W)`` stored values of a PIL mask; a P image's palette goes into ``palette``."""
    if im.mode in ("P", "PA"):
        palette.extend(im.getpalette() or ())
        data = np.asarray(im)
        if data.ndim == 3:  # PA: index and alpha
            data = io._drop_alpha(path, np.moveaxis(data, -1, 0))[0]
        return data[np.newaxis]
    return io._pil_mask_array(path, im)


def read_mask_file(path: PathLike) -> MaskFile:
    """Read a mask file in any encoding.

    Args:
        path: a ``.png``, ``.jpg``/``.jpeg`` or ``.tif``/``.tiff`` file.

    Returns:
        the :class:`MaskFile`; alpha channels are dropped with a logged warning.

    Raises:
        UserError: unreadable file, negative or non-integer values, 16-bit colours, or a
            channel count other than 1 or 3 (2 or 4 when the last is alpha).
    """
    path = Path(path)
    io._check_file(path)
    palette: list[int] = []
    with io._decoding(path, "mask"):
        if io._is_tiff(path):
            data, has_alpha = io._read_tiff(path, "mask")
            if has_alpha:
                data = io._drop_alpha(path, data)
        else:
            data = io._load_pil(path, lambda p, im: _split_palette(p, im, palette))
    dtype = data.dtype.name
    if palette:
        return MaskFile(path, "palette", _writable(io._mask_values(path, data[0])), dtype,
                        tuple(int(v) for v in palette))
    if data.shape[0] == 1 or (data == data[:1]).all():
        return MaskFile(path, "label", _writable(io._mask_values(path, data[0])), dtype)
    if data.shape[0] != 3:
        raise UserError(f"{path}: mask has {data.shape[0]} different channels; save a"
                        " single-channel label image or an RGB colour mask")
    if data.dtype != np.uint8:
        raise UserError(f"{path}: colour mask with {dtype} samples; save colour masks as 8-bit"
                        " RGB")
    return MaskFile(path, "rgb", np.ascontiguousarray(np.moveaxis(data, 0, -1)), dtype)


def _writable(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values if values.flags.writeable else values.copy())


def value_counts(codes: np.ndarray) -> dict[int, int]:
    """``{code: pixel count}`` of an integer array (bincount for 8/16-bit: much faster)."""
    codes = np.asarray(codes)
    if codes.dtype in (np.uint8, np.uint16, np.bool_):
        counts = np.bincount(codes.ravel())
        present = np.flatnonzero(counts)
        return dict(zip(present.tolist(), counts[present].tolist()))
    values, counts = np.unique(codes, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def detect_encoding(encodings: Iterable[MaskEncoding]) -> MaskEncoding:
    """The encoding of a data set from its masks' encodings (see the module docstring)."""
    kinds = list(encodings)
    if "rgb" in kinds:
        return "rgb"
    if kinds and all(k == "palette" for k in kinds):
        return "palette"
    return "label"


def encode_mask(mask: MaskFile, table: ClassTable) -> np.ndarray:
    """Class ids ``(H, W)`` int16 of a mask file through ``table`` (see ClassTable.encode)."""
    return table.encode(mask.data, str(mask.path))


# --------------------------------------------------------------------------- class tables


def build_class_table(masks: Sequence[tuple[str, Collection[int]]], encoding: MaskEncoding,
                      cfg: DataConfig, palette: Sequence[int] = ()) -> ClassTable:
    """The class table of a data set.

    Args:
        masks: ``(mask name, codes present)`` per mask, codes as :meth:`MaskFile.codes` gives
            them for ``encoding``.
        encoding: the data set's encoding (:func:`detect_encoding`).
        cfg: ``class_values``/``class_names``, ``ignore_value`` and ``palette`` (a file).
        palette: the flat palette of the first P mask, kept for ``"palette"`` tables.

    Raises:
        UserError: conflicting options, a bad palette file, or fewer than 2 classes.
    """
    if cfg.palette is not None:
        return _table_from_palette_file(Path(cfg.palette), encoding, cfg, palette)
    if encoding == "rgb":
        return _discovered_colour_table(masks, cfg)
    if cfg.class_values is not None:
        table = ClassTable.from_values(cfg.class_values, cfg.class_names, cfg.ignore_value)
    else:
        table = ClassTable.infer(((name, np.fromiter(codes, np.int64, len(codes)))
                                  for name, codes in masks),
                                 ignore_value=cfg.ignore_value, names=cfg.class_names)
    if encoding == "palette":
        colours = _palette_colours(palette)
        return ClassTable(table.values, table.names, table.ignore_value, encoding="palette",
                          colors=tuple(colours.get(v, (0, 0, 0)) for v in table.values),
                          ignore_color=colours.get(table.ignore_value or -1),
                          palette=tuple(palette))
    return table


def _palette_colours(palette: Sequence[int]) -> dict[int, RGB]:
    flat = list(palette)
    return {i: (flat[3 * i], flat[3 * i + 1], flat[3 * i + 2]) for i in range(len(flat) // 3)}


def _discovered_colour_table(masks: Sequence[tuple[str, Collection[int]]],
                             cfg: DataConfig) -> ClassTable:
    if cfg.class_values is not None:
        raise UserError("--classes lists label values, but the masks are colour masks; give"
                        " a --palette file with the class colours instead")
    found: set[int] = set()
    for _, codes in masks:
        found.update(int(c) for c in codes)
    ignore = cfg.ignore_value
    values = sorted(found - {ignore})
    if len(values) < 2:
        first = masks[0][0] if masks else "the masks"
        raise UserError(f"{first}: colour masks hold fewer than 2 colours besides the ignored"
                        " one; check the masks or give a --palette file")
    names = cfg.class_names or tuple("#" + "".join(f"{c:02x}" for c in unpack_rgb(v))
                                     for v in values)
    return ClassTable(tuple(values), tuple(names), ignore, encoding="rgb",
                      colors=tuple(unpack_rgb(v) for v in values),
                      ignore_color=None if ignore is None else unpack_rgb(ignore))


def _table_from_palette_file(path: Path, encoding: MaskEncoding, cfg: DataConfig,
                             palette: Sequence[int]) -> ClassTable:
    if cfg.class_values is not None or cfg.class_names is not None:
        raise UserError(f"{path}: the palette file gives the classes; drop --classes and"
                        " --class-names")
    entries = read_palette_file(path)
    by_id = {e.id: e for e in entries}
    marked = [e.id for e in entries if e.ignore]
    ignore = cfg.ignore_value if cfg.ignore_value is not None else (marked[0] if marked else None)
    if marked and ignore != marked[0]:
        raise UserError(f"{path}: marks id {marked[0]} as ignored but --ignore-value is {ignore};"
                        " give one of them")
    if encoding == "rgb" and ignore is not None and ignore not in by_id:
        raise UserError(f"{path}: --ignore-value {ignore} is not an id in the palette file;"
                        " add the ignored colour to the file")
    classes = [e for e in entries if e.id != ignore]
    ignore_color = by_id[ignore].color if ignore in by_id else None
    return ClassTable(tuple(e.id for e in classes), tuple(e.name for e in classes), ignore,
                      encoding=encoding, colors=tuple(e.color for e in classes),
                      ignore_color=ignore_color,
                      palette=tuple(palette) if encoding == "palette" else ())


def class_colours(table: ClassTable) -> np.ndarray:
    """``(K, 3)`` uint8 drawing colours: the table's own, or distinct defaults."""
    if table.colors:
        return np.array(table.colors, dtype=np.uint8)
    from unetseg.viz import class_palette

    return class_palette(table.num_classes)


# --------------------------------------------------------------------------- writing


def mask_palette(table: ClassTable) -> list[int]:
    """Flat ``[r, g, b, ...]`` palette written with palette-encoded predictions (PNG and
    streamed TIFF alike): the masks' own, else the class colours in class order."""
    return list(table.palette) or [v for c in class_colours(table).tolist() for v in c]


LABEL_METADATA_KEY = "unetseg"
"""Key of the class table in the label images unetseg writes: a PNG text chunk, and the first
ImageDescription of a label TIFF (:func:`label_metadata`)."""


def label_metadata(table: ClassTable) -> str:
    """The JSON stored with every label image unetseg writes: the class table (values, names,
    encoding) and the classes' display colours (:func:`class_colours`, as in the overlays), so
    a viewer can name and colour the classes of the file alone."""
    return json.dumps({"format": "unetseg-labels", "version": 1, "classes": table.to_dict(),
                       "display_colors": class_colours(table).tolist()})


def read_label_metadata(text: str | None) -> tuple[ClassTable, np.ndarray] | None:
    """The class table and ``(K, 3)`` uint8 display colours of :func:`label_metadata`'s JSON;
    None for anything else (no text, other JSON, a damaged table)."""
    if not text:
        return None
    try:
        meta = json.loads(text)
        if not isinstance(meta, dict) or meta.get("format") != "unetseg-labels":
            return None
        table = ClassTable.from_dict(meta["classes"])
        colours = np.array(meta.get("display_colors") or class_colours(table), dtype=np.int64)
    except (ValueError, TypeError, KeyError, UserError):
        return None
    if colours.shape != (table.num_classes, 3) or colours.min() < 0 or colours.max() > 255:
        colours = class_colours(table)
    return table, colours.astype(np.uint8)


def write_mask(path: PathLike, ids: np.ndarray, table: ClassTable) -> None:
    """Write class ids ``(H, W)`` as a PNG in the table's encoding, atomically, with the class
    table in a text chunk (:func:`label_metadata`).

    ``"label"``: gray values (8-bit, or 16-bit above 255); ``"rgb"``: an RGB colour image;
    ``"palette"``: a P PNG with the table's palette.
    """
    text = {LABEL_METADATA_KEY: label_metadata(table)}
    if table.encoding == "rgb":
        write_rgb(path, table.decode(ids), text=text)
        return
    values = table.decode(ids)
    if table.encoding == "label":
        write_label(path, values, text=text)
        return
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: file name must end with .png")
    im = Image.fromarray(np.ascontiguousarray(values.astype(np.uint8)))
    im.putpalette(mask_palette(table))
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG", pnginfo=png_text(text))

