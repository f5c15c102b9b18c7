"""Palette files (``--palette``): the classes' names and colours, as JSON or CSV.

JSON: ``[{"name": "Sky", "color": [128, 128, 128]}, ...]`` with optional ``"id"`` and
``"ignore": true``, or ``{"Sky": "#808080", ...}``. CSV: ``id,name,r,g,b[,ignore]``. Colours are
``[r, g, b]``, ``"r,g,b"`` or ``"#rrggbb"``. See :mod:`unetseg.data.masks` for how a palette file
fixes the class table of each mask encoding.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unetseg.data.classes import RGB, _rgb
from unetseg.errors import UserError

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class PaletteEntry:
    """One class of a palette file: its id (the mask value or the class code), name, colour,
    and whether it is the ignored class."""

    id: int
    name: str
    color: RGB
    ignore: bool = False


def _colour(text: Any, where: str) -> RGB:
    """``[r, g, b]``, ``"r,g,b"`` or ``"#rrggbb"`` to a colour; UserError naming ``where``."""
    try:
        if isinstance(text, str):
            s = text.strip()
            if s.startswith("#") and len(s) == 7:
                return int(s[1:3], 16), int(s[3:5], 16), int(s[5:7], 16)
            text = [v for v in s.replace(";", ",").split(",")]
        if isinstance(text, list | tuple) and len(text) == 3:
            values = [float(v) for v in text]
            if all(v == int(v) for v in values):
                return _rgb(int(v) for v in values)
    except (UserError, ValueError, TypeError):
        pass
    raise UserError(f"{where}: colour {text!r} is not [R, G, B], \"R,G,B\" or \"#rrggbb\" with"
                    " values 0..255; fix the palette file")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "x", "ignore")
    return bool(value)


def _json_rows(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the"
                        " palette file") from None
    if isinstance(data, dict) and "classes" in data:
        data = data["classes"]
    if isinstance(data, dict):  # {"name": colour, ...}
        return [{"name": k, "color": v} for k, v in data.items()]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UserError(f"{path}: expected a list of {{\"name\": ..., \"color\": [R, G, B]}}"
                        " objects; fix the palette file")
    return data


def _csv_rows(path: Path, text: str) -> list[dict[str, Any]]:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(lines, skipinitialspace=True)
    fields = {f.strip().lower() for f in reader.fieldnames or ()}
    if "name" not in fields or not ({"color"} <= fields or {"r", "g", "b"} <= fields):
        raise UserError(f"{path}: CSV palette needs a header with name and color (or r,g,b)"
                        " columns, e.g. 'id,name,r,g,b'; fix the palette file")
    rows = []
    for row in reader:
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if "color" not in row or not row["color"]:
            row["color"] = [row.get("r"), row.get("g"), row.get("b")]
        rows.append(row)
    return rows


def read_palette_file(path: PathLike) -> list[PaletteEntry]:
    """Read a palette file: the classes' names and colours, in id order.

    JSON: a list of ``{"name": "Sky", "color": [128, 128, 128]}`` objects (``"color"`` may also
    be ``"#808080"`` or ``"128,128,128"``; optional ``"id"`` and ``"ignore": true``), the same
    list under a ``"classes"`` key, or a ``{"Sky": [128, 128, 128], ...}`` object.
    CSV: a header with ``name`` and ``color`` (or ``r``, ``g``, ``b``), optional ``id`` and
    ``ignore`` columns, one class per row. Without ids, classes are numbered in file order.

    Raises:
        UserError: unreadable file, bad colours, duplicate ids or colours, more than one
            ignored entry, or fewer than 2 classes.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: palette file not found; check the --palette path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the palette file ({exc}); give a UTF-8 JSON or"
                        " CSV file") from None
    is_json = path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{")
    rows = _json_rows(path, text) if is_json else _csv_rows(path, text)
    has_ids = [r.get("id") not in (None, "") for r in rows]
    if any(has_ids) and not all(has_ids):
        raise UserError(f"{path}: some classes have an id and some do not; give every class an"
                        " id or none")
    entries = []
    for i, row in enumerate(rows):
        where = f"{path}: class {i + 1}"
        name = str(row.get("name") or "").strip()
        if not name:
            raise UserError(f"{where}: has no name; give every class a name")
        try:
            ident = int(row["id"]) if all(has_ids) else i
        except (TypeError, ValueError):
            raise UserError(f"{where}: id {row.get('id')!r} is not an integer; fix the palette"
                            " file") from None
        if ident < 0:
            raise UserError(f"{where}: id {ident} is negative; fix the palette file")
        entries.append(PaletteEntry(ident, name, _colour(row.get("color"), where),
                                    _truthy(row.get("ignore", False))))
    _check_entries(path, entries)
    return sorted(entries, key=lambda e: e.id)


def _check_entries(path: Path, entries: list[PaletteEntry]) -> None:
    for attr, what in (("id", "id"), ("color", "colour"), ("name", "name")):
        seen: set[Any] = set()
        for e in entries:
            value = getattr(e, attr)
            if value in seen:
                raise UserError(f"{path}: {what} {value} is given twice; give each class its"
                                f" own {what}")
            seen.add(value)
    if sum(e.ignore for e in entries) > 1:
        raise UserError(f"{path}: more than one class is marked ignore; mark at most one")
    if sum(not e.ignore for e in entries) < 2:
        raise UserError(f"{path}: lists fewer than 2 classes; segmentation needs at least 2")
