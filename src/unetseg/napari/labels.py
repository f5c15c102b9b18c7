"""Class ids to the values and keywords of a napari Labels layer (no napari import).

A Labels layer made here holds the class table's *values* (the training masks' own values,
such as 0/255 or palette indices), not the ids ``0..K-1``, so a layer saved from napari is a
mask in the encoding the model was trained on. A Labels layer holds numbers, not colours, so
for colour masks it holds the class ids (napari also needs numba for values above 65536,
which packed colours are). Each value is drawn in its class's display colour, the one the
overlays of ``unetseg predict`` use, and hovering a pixel shows its class name (the layer's
``features``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from unetseg.data.classes import ClassTable

LABELS_OPACITY = 0.5
"""Every class is drawn, as in the overlays, so the image shows through."""


def value_dtype(top: int) -> np.dtype:
    """The smallest unsigned type (uint8, uint16, else int32) that holds values up to ``top``."""
    if top <= 255:
        return np.dtype(np.uint8)
    return np.dtype(np.uint16) if top <= 65535 else np.dtype(np.int32)


def class_values(table: ClassTable) -> tuple[int, ...]:
    """The layer value of each class: the table's values, or the ids for colour masks."""
    return tuple(range(table.num_classes)) if table.encoding == "rgb" else table.values


def ids_to_values(ids: np.ndarray, table: ClassTable) -> np.ndarray:
    """Class ids ``(...)`` in ``0..K-1`` to :func:`class_values`, in :func:`value_dtype`."""
    values = class_values(table)
    lut = np.asarray(values, dtype=value_dtype(values[-1]))
    return lut[np.asarray(ids, dtype=np.intp)]


def labels_kwargs(values: Sequence[int], colours: np.ndarray, names: Sequence[str] | None,
                  *, name: str) -> dict[str, Any]:
    """Keywords of ``viewer.add_labels`` (or a reader's layer tuple) drawing each of ``values``
    in its colour (``(K, 3)`` uint8), others transparent, with the class ``names`` on hover."""
    colormap: dict[int | None, Any] = {None: (0.0, 0.0, 0.0, 0.0)}
    for value, colour in zip(values, np.asarray(colours, dtype=np.float64) / 255):
        colormap[int(value)] = (*colour.tolist(), 1.0)
    kwargs: dict[str, Any] = {"name": name, "colormap": colormap, "opacity": LABELS_OPACITY}
    if names is not None:
        kwargs["features"] = {"index": [int(v) for v in values], "class": list(names)}
    return kwargs


def layer_name(stem: str, names: Sequence[str], most: int = 4) -> str:
    """``"best: membrane, cell"``, or ``"best: 12 classes"`` beyond ``most`` classes."""
    classes = ", ".join(names) if len(names) <= most else f"{len(names)} classes"
    return f"{stem}: {classes}"
