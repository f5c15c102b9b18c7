"""Instance labels: one id per object, so that touching objects stay apart.

A data set may hold ``DATA/instances/<stem>.png|tif`` beside ``images/`` and ``masks/``: a
single-channel integer image (8-, 16- or 32-bit), 0 for background and any other value for one
object (ids need not be consecutive). Without it, the objects of an image are the connected
components (4-connected by default) of the object classes of its semantic mask, each class on
its own; touching objects of one class then merge into one.

:func:`object_table` lists what ``unetseg check`` reports about the objects of one label image:
their areas, the pairs of objects that touch (4-adjacent: they share a pixel edge; 8-adjacent:
they meet at least at a corner, which includes the 4-adjacent pairs), the objects cut by the
image border and the ids whose pixels are not one 8-connected piece.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unetseg.data.io import IMAGE_SUFFIXES, read_mask_samples
from unetseg.errors import UserError
from unetseg.metrics_instance import compact_labels

INSTANCES_FOLDER = "instances"
"""Optional sibling of ``images/`` and ``masks/`` holding instance label images by stem."""

CONNECTIVITY = {4: ndimage.generate_binary_structure(2, 1),
                8: ndimage.generate_binary_structure(2, 2)}
"""Structuring elements of 4- and 8-connectivity."""

_OFFSETS_4 = ((0, 1), (1, 0))
_OFFSETS_8 = ((0, 1), (1, 0), (1, 1), (1, -1))


# --------------------------------------------------------------------------- files


def instance_files(root: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """Image files of ``<root>/instances/`` by stem (several when a stem repeats with other
    suffixes); empty when there is no such folder."""
    folder = Path(root) / INSTANCES_FOLDER
    found: dict[str, list[Path]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                found.setdefault(path.stem, []).append(path)
    return found


def instance_mask_path(mask_path: str | os.PathLike[str], stem: str) -> Path | None:
    """``<root>/instances/<stem>.<ext>`` beside ``<root>/masks/``, if such a file exists."""
    folder = Path(mask_path).parent.parent / INSTANCES_FOLDER
    if not folder.is_dir():
        return None
    for path in sorted(folder.iterdir()):
        if path.stem == stem and path.suffix.lower() in IMAGE_SUFFIXES:
            return path
    return None


def read_instances(path: str | os.PathLike[str],
                   shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read an instance label image.

    Args:
        path: a ``.png`` or ``.tif``/``.tiff`` file (16-bit PNG or 16/32-bit TIFF for more
            than 255 objects).
        shape: the ``(H, W)`` of its image, when it must match.

    Returns:
        ``(H, W)`` labels, uint8, uint16 or int32 (the smallest that holds the ids), 0 =
        background.

    Raises:
        UserError: one line naming the file: unreadable, several differing channels (a colour
            picture of the objects), float or negative samples, or a size other than ``shape``.
    """
    path = Path(path)
    samples = read_mask_samples(path)
    if samples.shape[0] > 1 and not (samples == samples[:1]).all():
        raise UserError(f"{path}: instance image has {samples.shape[0]} differing channels;"
                        " save one object id per pixel as a single-channel 16-bit PNG or TIFF")
    labels = samples[0]
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: instance image has {labels.dtype} samples; object ids must be"
                        " integers: save it as a 16-bit PNG or an integer TIFF")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
        raise UserError(f"{path}: instance image has ids outside 0..{np.iinfo(np.int32).max};"
                        " object ids must be non-negative (0 = background)")
    if shape is not None and labels.shape != tuple(shape):
        (h, w), (ih, iw) = labels.shape, shape
        raise UserError(f"{path}: instance image is {w}x{h} but its image is {iw}x{ih}"
                        " (width x height); save the instances at the image's size")
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.int32
    return np.ascontiguousarray(labels.astype(dtype, copy=False))


# --------------------------------------------------------------------------- objects


def instances_from_mask(ids: np.ndarray, object_classes: Sequence[int], *,
                        connectivity: int = 4) -> np.ndarray:
    """Objects of a semantic mask: the connected components of each object class, separately.

    Args:
        ids: ``(H, W)`` class ids (or mask values; any integers).
        object_classes: the values whose components are objects.
        connectivity: 4 or 8.

    Returns:
        ``(H, W)`` int32: 0 outside every object, ``1..n`` one label per component, numbered
        class by class in the order of ``object_classes``.
    """
    if connectivity not in CONNECTIVITY:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    labels = np.zeros(ids.shape, np.int32)
    count = 0
    for k in object_classes:
        components, n = ndimage.label(ids == k, structure=CONNECTIVITY[connectivity])
        labels[components > 0] = components[components > 0] + count
        count += n
    return labels


def relabel(labels: np.ndarray) -> np.ndarray:
    """Object ids -> consecutive labels ``1..n`` in ascending id order; 0 stays 0 (int32)."""
    nonzero = labels != 0
    _, inverse = np.unique(labels[nonzero], return_inverse=True)
    out = np.zeros(labels.shape, np.int32)
    out[nonzero] = inverse.ravel() + 1
    return out


def _pair_codes(index: np.ndarray, offsets: Sequence[tuple[int, int]], n: int) -> np.ndarray:
    """``i * n + j`` (``i < j``) for labels ``i``, ``j`` of ``index`` (1..n-1; 0 =
    background) with a pixel of one next to a pixel of the other along one of ``offsets``;
    unique, sorted."""
    height, width = index.shape
    codes = [np.zeros(0, np.int64)]
    for dr, dc in offsets:
        a = index[max(0, -dr): height - max(0, dr), max(0, -dc): width - max(0, dc)]
        b = index[max(0, dr): height - max(0, -dr), max(0, dc): width - max(0, -dc)]
        touch = (a != b) & (a > 0) & (b > 0)
        ai, bi = a[touch], b[touch]
        codes.append(np.minimum(ai, bi) * n + np.maximum(ai, bi))
    return np.unique(np.concatenate(codes))


def _adjacent_pairs(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``(m, 2)`` int64 pairs ``(i, j)``, ``i < j``, of labels 1..n of ``index`` that are
    4-adjacent, and those that are 8-adjacent (a superset); sorted, each pair once."""
    n = int(index.max()) + 1 if index.size else 1
    four = _pair_codes(index, _OFFSETS_4, n)
    eight = np.union1d(four, _pair_codes(index, _OFFSETS_8[2:], n))
    return (np.stack([four // n, four % n], axis=1), np.stack([eight // n, eight % n], axis=1))


@dataclass(frozen=True)
class ObjectTable:
    """What one label image's objects are like, object by object.

    Attributes:
        ids: ``(n,)`` the objects' ids, ascending.
        areas: ``(n,)`` int64 pixels per object.
        on_border: ``(n,)`` bool: the object has a pixel in the image's first or last row or
            column (the image cuts it).
        fragmented: ``(n,)`` bool: the object's pixels are not one 8-connected piece.
        pairs_4: ``(m, 2)`` int64 row indices ``i < j`` into ``ids`` of objects that share a
            pixel edge.
        pairs_8: the same for objects that meet at least at a corner (includes ``pairs_4``).
        classes: ``(n,)`` the mask value of each object when objects come from a semantic
            mask (see :func:`components_by_value`), else None.
    """

    ids: np.ndarray
    areas: np.ndarray
    on_border: np.ndarray
    fragmented: np.ndarray
    pairs_4: np.ndarray
    pairs_8: np.ndarray
    classes: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ids.size)

    def subset(self, keep: np.ndarray) -> ObjectTable:
        """The objects where ``keep`` (``(n,)`` bool) holds, with the pairs among them."""
        new = np.cumsum(keep) - 1

        def pairs(p: np.ndarray) -> np.ndarray:
            both = keep[p[:, 0]] & keep[p[:, 1]]
            return new[p[both]].reshape(-1, 2).astype(np.int64)

        return ObjectTable(self.ids[keep], self.areas[keep], self.on_border[keep],
                           self.fragmented[keep], pairs(self.pairs_4), pairs(self.pairs_8),
                           None if self.classes is None else self.classes[keep])

    def stats(self) -> dict[str, Any]:
        """JSON-ready summary: ``objects``, ``area_min``/``area_median``/``area_max`` (pixels;
        None without objects), ``touching_pairs_4``/``touching_pairs_8`` (pairs of objects),
        ``touching_objects_4``/``touching_objects_8`` (objects in such a pair),
        ``border_objects`` and ``fragmented_objects``."""
        empty = self.areas.size == 0
        return {
            "objects": len(self),
            "area_min": None if empty else int(self.areas.min()),
            "area_median": None if empty else float(np.median(self.areas)),
            "area_max": None if empty else int(self.areas.max()),
            "touching_pairs_4": int(len(self.pairs_4)),
            "touching_pairs_8": int(len(self.pairs_8)),
            "touching_objects_4": int(np.unique(self.pairs_4).size),
            "touching_objects_8": int(np.unique(self.pairs_8).size),
            "border_objects": int(self.on_border.sum()),
            "fragmented_objects": int(self.fragmented.sum()),
        }


def _fragmented(index: np.ndarray, n: int) -> np.ndarray:
    """``(n,)`` bool: the pixels of label ``i + 1`` of ``index`` (0 = background) are not one
    8-connected piece (each label's components, in its bounding box)."""
    out = np.zeros(n, bool)
    for i, box in enumerate(ndimage.find_objects(index.astype(np.int32, copy=False)), start=1):
        if box is not None:
            out[i - 1] = ndimage.label(index[box] == i, structure=CONNECTIVITY[8])[1] > 1
    return out


def object_table(labels: np.ndarray, *, check_pieces: bool = True) -> ObjectTable:
    """The :class:`ObjectTable` of ``(H, W)`` integer labels (0 = background).

    Args:
        labels: the label image.
        check_pieces: look for objects in several pieces; False marks none (for connected
            components, which are one piece by construction).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    ids, index, areas = compact_labels(labels)
    n = ids.size
    edge = np.concatenate([index[0], index[-1], index[:, 0], index[:, -1]])
    on_border = np.zeros(n + 1, bool)
    on_border[edge] = True
    fragmented = _fragmented(index, n) if check_pieces and n else np.zeros(n, bool)
    pairs_4, pairs_8 = _adjacent_pairs(index)
    return ObjectTable(ids, areas, on_border[1:], fragmented, pairs_4 - 1, pairs_8 - 1)


def object_stats(labels: np.ndarray) -> dict[str, Any]:
    """:meth:`ObjectTable.stats` of ``(H, W)`` integer labels (0 = background)."""
    return object_table(labels).stats()


def _equal_value_regions(values: np.ndarray) -> np.ndarray:
    """4-connected regions of equal value (every value, 0 too), labelled ``1..n`` (int32).

    One labelling of a grid twice as fine: pixels at even positions, and between two
    4-neighbours a link that is set when their values are equal; a region is a component of
    that grid. One pass, however many values the image holds.
    """
    height, width = values.shape
    grid = np.zeros((2 * height - 1, 2 * width - 1), bool)
    grid[::2, ::2] = True
    grid[::2, 1::2] = values[:, 1:] == values[:, :-1]
    grid[1::2, ::2] = values[1:] == values[:-1]
    labels, _ = ndimage.label(grid, structure=CONNECTIVITY[4])
    return np.ascontiguousarray(labels[::2, ::2], dtype=np.int32)


def components_by_value(values: np.ndarray) -> ObjectTable:
    """Objects of a semantic mask before its object classes are known: the 4-connected
    components of every value, each value on its own (as :func:`instances_from_mask` makes
    them), with each object's value in ``classes``; keep the objects of the object classes
    with :meth:`ObjectTable.subset`.

    Args:
        values: ``(H, W)`` mask values (or packed colours), any integers.
    """
    values = np.asarray(values)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"values must be a non-empty (H, W) array, got shape {values.shape}")
    labels = _equal_value_regions(values)
    table = object_table(labels, check_pieces=False)
    codes = np.zeros(len(table) + 1, np.int64)
    codes[labels.ravel()] = values.ravel()
    return ObjectTable(table.ids, table.areas, table.on_border, table.fragmented,
                       table.pairs_4, table.pairs_8, classes=codes[1:])


# --------------------------------------------------------------------------- a data set


@dataclass(frozen=True)
class ObjectSummary:
    """The objects of a data set, as ``unetseg check`` reports them.

    Attributes:
        images: images whose objects are counted.
        from_instances: of those, images whose objects come from an instance image (the
            others: connected components of the mask's object classes).
        object_values: mask values whose components are objects, when any image's objects come
            from its mask.
        objects: objects in all.
        per_image: min, median and max objects per image.
        area: min, median and max object area in pixels, over all objects (None without any).
        touching_pairs_4 / touching_pairs_8: pairs of objects that share a pixel edge / that
            meet at least at a corner (includes the former), summed over the images.
        touching_objects_4 / touching_objects_8: objects in at least one such pair.
        border_objects: objects with a pixel on the image's border (cut by it).
        fragmented_objects: objects whose pixels are not one 8-connected piece.
    """

    images: int
    from_instances: int
    object_values: tuple[int, ...] | None
    objects: int
    per_image: tuple[int, float, int]
    area: tuple[int, float, int] | None
    touching_pairs_4: int
    touching_pairs_8: int
    touching_objects_4: int
    touching_objects_8: int
    border_objects: int
    fragmented_objects: int

    @property
    def source(self) -> str:
        """``"instances"``, ``"masks"`` or ``"instances and masks"``."""
        if self.from_instances == self.images:
            return "instances"
        return "masks" if self.from_instances == 0 else "instances and masks"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "images": self.images, "from_instances": self.from_instances,
            "object_values": None if self.object_values is None else list(self.object_values),
            "objects": self.objects,
            "per_image": dict(zip(("min", "median", "max"), self.per_image)),
            "area": None if self.area is None else dict(zip(("min", "median", "max"), self.area)),
            "touching_pairs_4": self.touching_pairs_4, "touching_pairs_8": self.touching_pairs_8,
            "touching_objects_4": self.touching_objects_4,
            "touching_objects_8": self.touching_objects_8,
            "border_objects": self.border_objects,
            "fragmented_objects": self.fragmented_objects,
        }


def summarize_objects(tables: Sequence[ObjectTable], from_instances: int,
                      object_values: Sequence[int] | None = None) -> ObjectSummary:
    """One :class:`ObjectSummary` of the images' object tables (at least one table)."""
    if not tables:
        raise ValueError("no object table to summarize")
    counts = [len(t) for t in tables]
    areas = np.concatenate([t.areas for t in tables])
    stats = [t.stats() for t in tables]

    def total(key: str) -> int:
        return sum(int(s[key]) for s in stats)

    return ObjectSummary(
        images=len(tables), from_instances=from_instances,
        object_values=None if object_values is None else tuple(int(v) for v in object_values),
        objects=sum(counts),
        per_image=(min(counts), float(np.median(counts)), max(counts)),
        area=None if areas.size == 0 else (int(areas.min()), float(np.median(areas)),
                                            int(areas.max())),
        touching_pairs_4=total("touching_pairs_4"), touching_pairs_8=total("touching_pairs_8"),
        touching_objects_4=total("touching_objects_4"),
        touching_objects_8=total("touching_objects_8"),
        border_objects=total("border_objects"), fragmented_objects=total("fragmented_objects"))
