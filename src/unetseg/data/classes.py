"""The class table: which raw mask values are classes, their names, and the ignored value.

Masks store arbitrary integer values (0/255, palette indices 0..11, ...). The network works on
class ids ``0..K-1``; class id ``i`` is the raw value ``values[i]``. Pixels with the
``ignore_value`` get the id :data:`IGNORE_INDEX` and count towards no loss or metric.

The table also records the masks' *encoding*, so predictions are written back the way the
masks came in:

* ``"label"``: single-channel integer values (8- or 16-bit, consecutive or not, 0/1, 0/255).
* ``"rgb"``: colour masks. Each class is a colour (``colors[i]`` for ``values[i]``); the values
  are codes: the ids of a palette file, or ``R*65536 + G*256 + B`` for discovered colours.
* ``"palette"``: palette-mode ("P") PNGs. The values are palette indices and ``palette`` is the
  file's flat RGB palette, written back unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from unetseg.errors import UserError

IGNORE_INDEX = -1
"""Class id of ignored pixels (pass it as ``ignore_index`` to losses and metrics)."""

MAX_VALUE = 65535
"""Largest raw mask value a class table can hold (decoded masks are at most 16-bit)."""

MAX_CODE = (1 << 24) - 1
"""Largest value of a colour table (a packed ``R*65536 + G*256 + B`` colour)."""

MaskEncoding = Literal["label", "rgb", "palette"]
ENCODINGS: tuple[str, ...] = ("label", "rgb", "palette")
RGB = tuple[int, int, int]

_UNKNOWN = np.int16(-2)  # lookup-table entry for raw values outside the table
_SHOWN = 10  # how many values an error message lists


def _show(values: Sequence[Any]) -> str:
    """``"0, 1, 2"`` or ``"0, 1, ... (40 values)"`` for messages."""
    head = ", ".join(str(v) for v in values[:_SHOWN])
    return head if len(values) <= _SHOWN else f"{head}, ... ({len(values)} values)"


def _default_names(values: tuple[int, ...]) -> tuple[str, ...]:
    if values in ((0, 1), (0, 255)):
        return ("background", "foreground")
    return tuple(f"class_{v}" for v in values)


@dataclass(frozen=True)
class ClassTable:
    """Raw mask values <-> class ids.

    Attributes:
        values: raw mask values, sorted ascending; class id ``i`` is ``values[i]``.
        names: one name per value.
        ignore_value: raw value whose pixels are ignored (id :data:`IGNORE_INDEX`), or None.
        encoding: how the masks store classes: ``"label"``, ``"rgb"`` or ``"palette"``.
        colors: one RGB colour per value (required for ``"rgb"``; optional display colours
            otherwise), or empty.
        ignore_color: colour of the ignore value (required for ``"rgb"`` with an ignore value).
        palette: flat ``[r, g, b, r, g, b, ...]`` palette of ``"palette"`` masks, or empty.
    """

    values: tuple[int, ...]
    names: tuple[str, ...]
    ignore_value: int | None = None
    encoding: MaskEncoding = "label"
    colors: tuple[RGB, ...] = ()
    ignore_color: RGB | None = None
    palette: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        values = tuple(int(v) for v in self.values)
        names = tuple(str(n) for n in self.names)
        ignore = None if self.ignore_value is None else int(self.ignore_value)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "ignore_value", ignore)
        self._check_colours()
        if len(values) < 2:
            raise UserError(
                f"class table has {len(values)} value(s) ({_show(values)}); "
                "segmentation needs at least 2 classes"
            )
        if list(values) != sorted(set(values)):
            raise UserError(f"class values ({_show(values)}) must be distinct and sorted")
        top = self.max_value
        if values[0] < 0 or values[-1] > top:
            raise UserError(f"class values ({_show(values)}) must lie in 0..{top}")
        if len(names) != len(values):
            raise UserError(
                f"{len(names)} class names given for {len(values)} class values "
                f"({_show(values)}); give one name per value"
            )
        if ignore is not None and (ignore in values or not 0 <= ignore <= top):
            raise UserError(
                f"ignore value {ignore} must be in 0..{top} and not one of the class "
                f"values ({_show(values)}); choose another ignore value"
            )

    def _check_colours(self) -> None:
        """Normalise and check ``encoding``, ``colors``, ``ignore_color`` and ``palette``."""
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        colors = tuple(_rgb(c) for c in self.colors)
        ignore_color = None if self.ignore_color is None else _rgb(self.ignore_color)
        palette = tuple(int(v) for v in self.palette)
        object.__setattr__(self, "colors", colors)
        object.__setattr__(self, "ignore_color", ignore_color)
        object.__setattr__(self, "palette", palette)
        if colors and len(colors) != len(self.values):
            raise UserError(f"{len(colors)} colours given for {len(self.values)} class values;"
                            " give one colour per class")
        if len(palette) % 3 or len(palette) > 768 or any(not 0 <= v <= 255 for v in palette):
            raise ValueError("palette must be a flat list of at most 256 RGB triples in 0..255")
        if self.encoding != "rgb":
            return
        if not colors:
            raise UserError("a colour class table needs one colour per class; give a palette")
        if self.ignore_value is not None and ignore_color is None:
            raise UserError(f"ignore value {self.ignore_value} of a colour table has no colour;"
                            " give it a colour in the palette")
        every = colors + (() if ignore_color is None else (ignore_color,))
        if len(set(every)) != len(every):
            seen = [c for i, c in enumerate(every) if c in every[:i]]
            raise UserError(f"colour {seen[0]} is given to two classes; give each class its"
                            " own colour")

    @property
    def max_value(self) -> int:
        """Largest value the encoding allows: 65535 (label), 255 (palette), 2**24-1 (rgb)."""
        return {"label": MAX_VALUE, "palette": 255, "rgb": MAX_CODE}[self.encoding]

    @property
    def num_classes(self) -> int:
        """Number of classes K (the network's output channels)."""
        return len(self.values)

    # ------------------------------------------------------------------ conversion

    def _lookup(self, size: int) -> np.ndarray:
        """int16 table of ``size`` entries: raw value -> class id (unknown -> ``_UNKNOWN``)."""
        lut = np.full(size, _UNKNOWN, dtype=np.int16)
        lut[list(self.values)] = np.arange(self.num_classes, dtype=np.int16)
        if self.ignore_value is not None:
            lut[self.ignore_value] = IGNORE_INDEX
        return lut

    def encode(self, raw: np.ndarray, source: str = "mask") -> np.ndarray:
        """Raw mask values to class ids.

        Args:
            raw: ``(H, W)`` (any shape works) non-negative integer mask values; for an
                ``"rgb"`` table ``(H, W, 3)`` uint8 colours (or ``(H, W)`` gray levels, read as
                the colours ``(v, v, v)``).
            source: what to name in the error message, usually the mask's path.

        Returns:
            int16 ids of shape ``(H, W)``; ignored pixels are :data:`IGNORE_INDEX`.

        Raises:
            UserError: some values are neither a class value nor the ignore value.
        """
        raw = np.asarray(raw)
        if self.encoding == "rgb":
            return self._encode_colours(raw, source)
        if raw.ndim == 3 and raw.shape[-1] == 3:
            raise UserError(
                f"{source}: colour mask, but the class table holds {self.encoding} values "
                f"({_show(self.values)}); give masks in the model's own encoding"
            )
        if raw.dtype == np.bool_:
            raw = raw.view(np.uint8)
        if not np.issubdtype(raw.dtype, np.integer):
            raise TypeError(f"mask values must be integers, got {raw.dtype}")
        top = max(self.values[-1], self.ignore_value or 0)
        if raw.dtype in (np.uint8, np.uint16):
            # Small dtypes index a full-range table directly: no bounds checks needed.
            size = max(top + 1, int(np.iinfo(raw.dtype).max) + 1)
            ids = self._lookup(size)[raw]
            unknown = ids == _UNKNOWN
        else:
            inside = (raw >= 0) & (raw <= top)
            ids = self._lookup(top + 1)[np.where(inside, raw, 0)]
            unknown = ~inside | (ids == _UNKNOWN)
        if unknown.any():
            bad = [int(v) for v in np.unique(raw[unknown])]
            raise UserError(
                f"{source}: mask values [{_show(bad)}] are not in the class table "
                f"(values {_show(self.values)}); pass --classes or fix the mask"
            )
        return ids

    def _encode_colours(self, raw: np.ndarray, source: str) -> np.ndarray:
        """``(H, W, 3)`` colours (or ``(H, W)`` gray levels) to int16 ids via the colours."""
        if raw.ndim == 2 and (raw.dtype == np.uint8 or raw.dtype == np.bool_
                              or (raw.size and raw.min() >= 0 and raw.max() <= 255)):
            raw = np.repeat(raw.astype(np.uint8)[..., None], 3, axis=-1)
        if raw.ndim != 3 or raw.shape[-1] != 3:
            raise UserError(f"{source}: expected an RGB colour mask (the class table holds"
                            " colours); save the mask as an 8-bit RGB PNG")
        packed = pack_rgb(raw)  # (H, W)
        colours = list(self.colors)
        ids_of = list(range(self.num_classes))
        if self.ignore_color is not None:
            colours.append(self.ignore_color)
            ids_of.append(IGNORE_INDEX)
        known = pack_rgb(np.array(colours))  # (K,) or (K + 1,)
        order = np.argsort(known)
        pos = np.clip(np.searchsorted(known[order], packed), 0, len(known) - 1)
        found = known[order][pos] == packed
        if not found.all():
            bad = [unpack_rgb(int(v)) for v in np.unique(packed[~found])]
            raise UserError(
                f"{source}: mask colours [{_show(bad)}] are not in the class table (colours "
                f"{_show(list(self.colors))}); list every colour in the --palette file or fix "
                "the mask"
            )
        return np.array(ids_of, dtype=np.int16)[order][pos]

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """Class ids to raw mask values (the inverse of :meth:`encode`).

        Args:
            ids: integer class ids in ``-1..K-1`` of any shape, usually ``(H, W)``.

        Returns:
            raw values of the same shape, uint8 when every value fits, else uint16.
            :data:`IGNORE_INDEX` becomes ``ignore_value`` (0 when there is none). For an
            ``"rgb"`` table: ``(*ids.shape, 3)`` uint8 colours (ignored pixels get
            ``ignore_color``, black when there is none).
        """
        ids = np.asarray(ids)
        if ids.size and (ids.min() < IGNORE_INDEX or ids.max() >= self.num_classes):
            raise ValueError(
                f"class ids must lie in {IGNORE_INDEX}..{self.num_classes - 1}, "
                f"got {ids.min()}..{ids.max()}"
            )
        if self.encoding == "rgb":
            colours = np.array((self.ignore_color or (0, 0, 0), *self.colors), dtype=np.uint8)
            return colours[ids.astype(np.intp) + 1]
        fill = self.ignore_value if self.ignore_value is not None else 0
        dtype = np.uint8 if max(self.values[-1], fill) <= 255 else np.uint16
        lut = np.array((fill, *self.values), dtype=dtype)  # shifted by one: id -1 -> 0
        return lut[ids.astype(np.intp) + 1]

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"values": [...], "names": [...], "ignore_value": int | None,
        "encoding": str, "colors": [[r, g, b], ...], "ignore_color": [r, g, b] | None,
        "palette": [...]}``."""
        return {
            "values": list(self.values),
            "names": list(self.names),
            "ignore_value": self.ignore_value,
            "encoding": self.encoding,
            "colors": [list(c) for c in self.colors],
            "ignore_color": None if self.ignore_color is None else list(self.ignore_color),
            "palette": list(self.palette),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassTable:
        """Rebuild a table written by :meth:`to_dict`; dicts without the encoding keys (written
        before colour masks were supported) load as ``"label"`` tables."""
        unknown = set(d) - {"values", "names", "ignore_value", "encoding", "colors",
                            "ignore_color", "palette"}
        if unknown or "values" not in d or "names" not in d:
            raise ValueError(f"not a class table dict: keys {sorted(d)}")
        ignore_color = d.get("ignore_color")
        return cls(tuple(d["values"]), tuple(d["names"]), d.get("ignore_value"),
                   encoding=d.get("encoding") or "label",
                   colors=tuple(_rgb(c) for c in d.get("colors") or ()),
                   ignore_color=None if ignore_color is None else _rgb(ignore_color),
                   palette=tuple(d.get("palette") or ()))

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_values(
        cls,
        values: Iterable[int],
        names: Sequence[str] | None = None,
        ignore_value: int | None = None,
    ) -> ClassTable:
        """A table from explicit values (any order); ``names`` follow ``values``' order.

        Raises:
            UserError: duplicate values, a name count that differs from the value count,
                fewer than 2 values, or the ignore value among the values.
        """
        given = [int(v) for v in values]
        if len(set(given)) != len(given):
            raise UserError(f"class values ({_show(given)}) contain duplicates; give each once")
        if names is not None and len(names) != len(given):
            raise UserError(
                f"{len(names)} class names given for {len(given)} class values "
                f"({_show(given)}); give one name per value"
            )
        order = sorted(range(len(given)), key=given.__getitem__)
        sorted_values = tuple(given[i] for i in order)
        if names is None:
            sorted_names = _default_names(sorted_values)
        else:
            sorted_names = tuple(names[i] for i in order)
        return cls(sorted_values, sorted_names, ignore_value)

    @classmethod
    def infer(
        cls,
        masks: Iterable[tuple[str, np.ndarray]],
        ignore_value: int | None = None,
        names: Sequence[str] | None = None,
    ) -> ClassTable:
        """The table of every value found in ``masks`` (minus ``ignore_value``).

        Default names are ``("background", "foreground")`` for values (0, 1) or (0, 255), else
        ``class_<value>``.

        Args:
            masks: ``(name, raw (H, W) integer values)`` pairs, e.g. from
                :func:`unetseg.data.dataset.read_raw_masks`.
            ignore_value: raw value to ignore; it is not a class.
            names: class names in ascending value order.

        Raises:
            UserError: no masks, fewer than 2 values found, or a wrong number of names.
        """
        found: set[int] = set()
        count, first = 0, ""
        for name, raw in masks:
            count, first = count + 1, first or name
            present = _unique_values(raw)
            if present and present[-1] > MAX_VALUE:
                raise UserError(
                    f"{name}: mask has the value {present[-1]}, above the largest supported "
                    f"label value {MAX_VALUE}; renumber the labels"
                )
            found.update(present)
        if count == 0:
            raise UserError("no masks to find the class values in; add masks or pass --classes")
        found.discard(-1 if ignore_value is None else int(ignore_value))
        values = tuple(sorted(found))
        if len(values) < 2:
            where = first if count == 1 else f"{first} and {count - 1} other mask(s)"
            only = f"only the value {values[0]}" if values else "only the ignore value"
            raise UserError(
                f"{where}: masks contain {only}; need at least 2 classes "
                "(check the masks or pass --classes)"
            )
        return cls.from_values(values, names, ignore_value)


def _rgb(colour: Any) -> RGB:
    """A colour as a tuple of three ints in 0..255; ValueError otherwise."""
    c = tuple(int(v) for v in colour)
    if len(c) != 3 or not all(0 <= v <= 255 for v in c):
        raise UserError(f"colour {colour!r} is not three values R,G,B in 0..255; fix it")
    return c[0], c[1], c[2]


def pack_rgb(colours: np.ndarray) -> np.ndarray:
    """``(..., 3)`` colours to ints ``R*65536 + G*256 + B`` of shape ``(...)`` (int64)."""
    c = np.asarray(colours).astype(np.int64)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def unpack_rgb(code: int) -> RGB:
    """The colour ``(R, G, B)`` of a packed code ``R*65536 + G*256 + B``."""
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def _unique_values(raw: np.ndarray) -> list[int]:
    """Sorted distinct values of an integer array (bincount for 8/16-bit: much faster)."""
    raw = np.asarray(raw)
    if raw.dtype in (np.uint8, np.uint16, np.bool_):
        return np.flatnonzero(np.bincount(raw.ravel())).tolist()
    return [int(v) for v in np.unique(raw)]
