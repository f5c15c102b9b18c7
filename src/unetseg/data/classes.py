"""The class table: which raw mask values are classes, their names, and the ignored value.

Masks store arbitrary integer values (0/255, palette indices 0..11, ...). The network works on
class ids ``0..K-1``; class id ``i`` is the raw value ``values[i]``. Pixels with the
``ignore_value`` get the id :data:`IGNORE_INDEX` and count towards no loss or metric.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unetseg.errors import UserError

IGNORE_INDEX = -1
"""Class id of ignored pixels (pass it as ``ignore_index`` to losses and metrics)."""

MAX_VALUE = 65535
"""Largest raw mask value a class table can hold (decoded masks are at most 16-bit)."""

_UNKNOWN = np.int16(-2)  # lookup-table entry for raw values outside the table
_SHOWN = 10  # how many values an error message lists


def _show(values: Sequence[int]) -> str:
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
    """

    values: tuple[int, ...]
    names: tuple[str, ...]
    ignore_value: int | None = None

    def __post_init__(self) -> None:
        values = tuple(int(v) for v in self.values)
        names = tuple(str(n) for n in self.names)
        ignore = None if self.ignore_value is None else int(self.ignore_value)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "ignore_value", ignore)
        if len(values) < 2:
            raise UserError(
                f"class table has {len(values)} value(s) ({_show(values)}); "
                "segmentation needs at least 2 classes"
            )
        if list(values) != sorted(set(values)):
            raise UserError(f"class values ({_show(values)}) must be distinct and sorted")
        if values[0] < 0 or values[-1] > MAX_VALUE:
            raise UserError(f"class values ({_show(values)}) must lie in 0..{MAX_VALUE}")
        if len(names) != len(values):
            raise UserError(
                f"{len(names)} class names given for {len(values)} class values "
                f"({_show(values)}); give one name per value"
            )
        if ignore is not None and (ignore in values or not 0 <= ignore <= MAX_VALUE):
            raise UserError(
                f"ignore value {ignore} must be in 0..{MAX_VALUE} and not one of the class "
                f"values ({_show(values)}); choose another ignore value"
            )

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
            raw: ``(H, W)`` (any shape works) non-negative integer mask values.
            source: what to name in the error message, usually the mask's path.

        Returns:
            int16 ids of the same shape; ignored pixels are :data:`IGNORE_INDEX`.

        Raises:
            UserError: some values are neither a class value nor the ignore value.
        """
        raw = np.asarray(raw)
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

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """Class ids to raw mask values (the inverse of :meth:`encode`).

        Args:
            ids: integer class ids in ``-1..K-1`` of any shape, usually ``(H, W)``.

        Returns:
            raw values of the same shape, uint8 when every value fits, else uint16.
            :data:`IGNORE_INDEX` becomes ``ignore_value`` (0 when there is none).
        """
        ids = np.asarray(ids)
        if ids.size and (ids.min() < IGNORE_INDEX or ids.max() >= self.num_classes):
            raise ValueError(
                f"class ids must lie in {IGNORE_INDEX}..{self.num_classes - 1}, "
                f"got {ids.min()}..{ids.max()}"
            )
        fill = self.ignore_value if self.ignore_value is not None else 0
        dtype = np.uint8 if max(self.values[-1], fill) <= 255 else np.uint16
        lut = np.array((fill, *self.values), dtype=dtype)  # shifted by one: id -1 -> 0
        return lut[ids.astype(np.intp) + 1]

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"values": [...], "names": [...], "ignore_value": int | None}``."""
        return {
            "values": list(self.values),
            "names": list(self.names),
            "ignore_value": self.ignore_value,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassTable:
        """Rebuild a table written by :meth:`to_dict`."""
        unknown = set(d) - {"values", "names", "ignore_value"}
        if unknown or "values" not in d or "names" not in d:
            raise ValueError(f"not a class table dict: keys {sorted(d)}")
        return cls(tuple(d["values"]), tuple(d["names"]), d.get("ignore_value"))

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


def _unique_values(raw: np.ndarray) -> list[int]:
    """Sorted distinct values of an integer array (bincount for 8/16-bit: much faster)."""
    raw = np.asarray(raw)
    if raw.dtype in (np.uint8, np.uint16, np.bool_):
        return np.flatnonzero(np.bincount(raw.ravel())).tolist()
    return [int(v) for v in np.unique(raw)]
