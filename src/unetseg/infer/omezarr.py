"""OME-Zarr images in, OME-Zarr labels out, band by band.

An OME-Zarr image (NGFF 0.4 on Zarr v2, or 0.5 on Zarr v3) is a group whose ``multiscales``
metadata lists its pyramid levels, each a chunked array with named axes: (y, x), (c, y, x),
(t, c, z, y, x), ... Every 2-D plane (each index of the axes other than the channel, y and x)
of the chosen level is predicted on its own. :class:`OmeZarrBandReader` reads rows
``[top, bottom)`` of a plane, decoding only the chunks the band touches, with the interface of
:class:`~unetseg.infer.tiff_bands.TiffBandReader`, so :func:`~unetseg.infer.stream.stream_labels`
predicts it with the windows and blending of the image in memory, and the labels are the same.
:class:`LabelPyramid` writes the finished label rows as they come into a labels image beside
the input, ``<image>/labels/<name>/``: level ``k`` holds every ``2**k``-th row and column of
level 0 (nearest), each a chunked array, under ``multiscales`` metadata that places it on the
predicted image level, and ``image-label`` metadata that gives every class value its colour
and class name; the name joins the ``labels`` listing. napari (with napari-ome-zarr) and other
NGFF viewers open it over the image. Memory is O(window side x image width), as for TIFFs.

The label values are the class table's values (what the training masks hold: 0/255, palette
indices, colour codes), uint8 when they fit, else uint16 or uint32. zarr and ome-zarr (extra
``zarr``) are imported when an OME-Zarr image is opened.
"""

from __future__ import annotations

import itertools
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetseg.config import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP
from unetseg.data.classes import ClassTable
from unetseg.data.io import check_pixels, scale_to_float
from unetseg.data.masks import class_colours
from unetseg.data.normalize import ChannelStats
from unetseg.errors import UserError
from unetseg.infer.stream import WindowPlan, _Thumbnail, plan_windows, stream_labels
from unetseg.infer.tiff_bands import MAX_CHUNK_BYTES
from unetseg.infer.tiling import reflect_indices
from unetseg.model import model_config
from unetseg.progress import progress

__all__ = ["LabelPyramid", "OmeZarrBandReader", "OmeZarrImage", "is_zarr_folder",
           "label_levels", "open_omezarr", "predict_omezarr"]

INSTALL_HINT = "pip install 'unetseg[zarr]'"
LABEL_CHUNK = 512
"""Side in pixels of the label arrays' chunks (y and x; 1 along every other axis)."""
PYRAMID_SIDE = 256
"""Label levels are added until the longer side is at most this many pixels ..."""
MIN_LEVELS = 3
"""... and there are at least this many (while a level still has a pixel to halve)."""
ZARR_METADATA = ("zarr.json", ".zgroup", ".zattrs")
_SAMPLE_KINDS = {"b", "f"}
_SAMPLE_DTYPES = {np.dtype(np.uint8), np.dtype(np.uint16)}


def is_zarr_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder named ``*.zarr`` or one holding Zarr metadata."""
    path = Path(path)
    return path.is_dir() and (path.suffix.lower() == ".zarr"
                              or any((path / name).is_file() for name in ZARR_METADATA))


def image_stem(path: Path) -> str:
    """``cells`` for ``cells.ome.zarr`` or ``cells.zarr``: the name of the overlay PNG."""
    name = path.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def import_zarr(path: Path) -> Any:
    """The ``zarr`` module (version 3 or later); a one-line :class:`UserError` without it."""
    try:
        import zarr
    except ImportError:
        raise UserError(f"{path}: reading OME-Zarr images needs zarr and ome-zarr; install"
                        f" them with {INSTALL_HINT}") from None
    if int(zarr.__version__.split(".")[0]) < 3:
        raise UserError(f"{path}: OME-Zarr images need zarr 3 or later (zarr"
                        f" {zarr.__version__} is installed); upgrade with {INSTALL_HINT}")
    return zarr


def import_ome_zarr(path: Path) -> tuple[Any, Any]:
    """``ome_zarr.writer`` and ``ome_zarr.format``; a one-line :class:`UserError` without
    ome-zarr."""
    try:
        import ome_zarr.format
        import ome_zarr.writer
    except ImportError:
        raise UserError(f"{path}: writing OME-Zarr labels needs ome-zarr; install it with"
                        f" {INSTALL_HINT}") from None
    return ome_zarr.writer, ome_zarr.format


@dataclass(frozen=True, eq=False)
class OmeZarrImage:
    """One pyramid level of an OME-Zarr image, opened without reading pixels.

    Attributes:
        path: the image group's folder.
        level: the level's index in ``multiscales[0].datasets``; ``levels`` how many there are.
        array: the level's zarr array.
        axes: the axes metadata, one dict per array dimension (``name``, ``type``, ``unit``).
        channel_axis: index of the channel axis, None without one (one channel).
        transforms: the level's ``coordinateTransformations`` (scale, translation).
        image_transforms: the ``coordinateTransformations`` of the whole multiscale, if any.
        zarr_format: 2 (NGFF 0.4 and earlier) or 3 (NGFF 0.5).
    """

    path: Path
    level: int
    levels: int
    array: Any
    axes: tuple[dict[str, Any], ...]
    channel_axis: int | None
    transforms: tuple[dict[str, Any], ...]
    image_transforms: tuple[dict[str, Any], ...]
    zarr_format: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def height(self) -> int:
        return self.shape[-2]

    @property
    def width(self) -> int:
        return self.shape[-1]

    @property
    def channels(self) -> int:
        return 1 if self.channel_axis is None else self.shape[self.channel_axis]

    @property
    def plane_axes(self) -> tuple[int, ...]:
        """The axes iterated over plane by plane: all but the channel, y and x."""
        return tuple(i for i in range(len(self.shape) - 2) if i != self.channel_axis)

    def planes(self) -> list[tuple[int, ...]]:
        """Indices along :attr:`plane_axes` of every 2-D plane, in storage order."""
        return list(itertools.product(*(range(self.shape[a]) for a in self.plane_axes)))

    def label_axes(self) -> list[dict[str, Any]]:
        """The labels' axes: the image's without the channel axis (as ome-zarr writes them)."""
        return [dict(a) for i, a in enumerate(self.axes) if i != self.channel_axis]

    def label_shape(self) -> tuple[int, ...]:
        return tuple(s for i, s in enumerate(self.shape) if i != self.channel_axis)


def _ome_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    """NGFF metadata of a group: under ``ome`` (0.5) or at the top (0.4 and earlier)."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


def _axes(path: Path, multiscale: dict[str, Any], ndim: int) -> tuple[dict[str, Any], ...]:
    raw = multiscale.get("axes")
    if raw is None and ndim == 5:  # NGFF 0.1/0.2: always (t, c, z, y, x)
        raw = list("tczyx")
    if not isinstance(raw, list) or len(raw) != ndim:
        raise UserError(f"{path}: the multiscales metadata names {raw!r} as axes of a"
                        f" {ndim}-dimensional array; fix the axes metadata")
    axes = tuple({"name": a} if isinstance(a, str) else dict(a) for a in raw)
    if not all(isinstance(a.get("name"), str) for a in axes):
        raise UserError(f"{path}: every axis in the multiscales metadata needs a name; fix the"
                        " axes metadata")
    return axes


def _channel_axis(path: Path, axes: tuple[dict[str, Any], ...]) -> int | None:
    found = [i for i, a in enumerate(axes)
             if a.get("type") == "channel" or ("type" not in a and a["name"] == "c")]
    if len(found) > 1:
        raise UserError(f"{path}: {len(found)} channel axes in the multiscales metadata; an"
                        " image has one at most")
    if found and found[0] >= len(axes) - 2:
        raise UserError(f"{path}: the channel axis is one of the last two axes, which NGFF"
                        " keeps for y and x; write the image with axes such as (c, y, x)")
    return found[0] if found else None


def _transforms(raw: Any) -> tuple[dict[str, Any], ...]:
    return tuple(dict(t) for t in raw if isinstance(t, dict)) if isinstance(raw, list) else ()


def open_omezarr(path: str | Path, level: int = 0, *, max_pixels: int | None = None
                 ) -> OmeZarrImage:
    """Open level ``level`` of the OME-Zarr image at ``path`` from its metadata.

    Raises:
        UserError: zarr missing, not an OME-Zarr image, no such level, axes that do not fit
            the array, samples that are not 8/16-bit unsigned or float, a chunk of more than
            :data:`~unetseg.infer.tiff_bands.MAX_CHUNK_BYTES`, or more than ``max_pixels``
            pixels in a plane.
    """
    path = Path(path)
    zarr = import_zarr(path)
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = group.attrs.asdict()
    except Exception as exc:  # zarr raises many types for what is not a group
        raise UserError(f"{path}: not a Zarr group ({type(exc).__name__}: {exc}); give the"
                        " folder of an OME-Zarr image") from None
    ome = _ome_attributes(attrs)
    multiscales = ome.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales or not isinstance(
            multiscales[0], dict):
        hint = (f"; give its image group, e.g. {path / '0'}" if "bioformats2raw.layout" in ome
                else "; give the folder of an OME-Zarr image (its metadata lists"
                     " 'multiscales')")
        raise UserError(f"{path}: not an OME-Zarr image (no multiscales metadata){hint}")
    multiscale = multiscales[0]
    datasets = multiscale.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise UserError(f"{path}: the multiscales metadata lists no datasets; fix the metadata")
    if not 0 <= level < len(datasets):
        raise UserError(f"{path}: --level {level}, but the image has levels 0 to"
                        f" {len(datasets) - 1}; choose one of them")
    dataset = datasets[level]
    try:
        array = group[str(dataset["path"])]
        shape = tuple(int(s) for s in array.shape)
    except Exception as exc:
        raise UserError(f"{path}: level {level} ({dataset.get('path')!r}) cannot be read"
                        f" ({type(exc).__name__}: {exc}); check the image") from None
    axes = _axes(path, multiscale, len(shape))
    if len(shape) < 2:
        raise UserError(f"{path}: level {level} has {len(shape)} dimension(s); an image needs"
                        " y and x")
    image = OmeZarrImage(path, level, len(datasets), array, axes, _channel_axis(path, axes),
                         _transforms(dataset.get("coordinateTransformations")),
                         _transforms(multiscale.get("coordinateTransformations")),
                         int(group.metadata.zarr_format))
    _check_samples(image)
    check_pixels(path, image.height, image.width, limit=max_pixels,
                 fix="if the image is genuine, raise the limit with --max-pixels"
                     f" {image.height * image.width}")
    return image


def _check_samples(image: OmeZarrImage) -> None:
    """Refuse sample types :func:`~unetseg.data.io.read_image` refuses, and chunks too large
    to decode one at a time, from the array's metadata."""
    dtype = np.dtype(image.array.dtype)
    if dtype.kind not in _SAMPLE_KINDS and dtype not in _SAMPLE_DTYPES:
        raise UserError(f"{image.path}: samples of type {dtype} are not supported; save the"
                        " image as 8- or 16-bit unsigned or floating point")
    chunks = tuple(int(c) for c in image.array.chunks)
    chunk_bytes = math.prod(chunks) * dtype.itemsize
    if chunk_bytes > MAX_CHUNK_BYTES:
        fix = tuple(1 if i < len(chunks) - 2 else min(1024, s)
                    for i, s in enumerate(image.shape))
        raise UserError(f"{image.path}: one chunk of level {image.level} holds"
                        f" {chunk_bytes / 2**20:.0f} MiB of pixels, more than the"
                        f" {MAX_CHUNK_BYTES / 2**20:.0f} MiB decoded at a time; rechunk it,"
                        f" e.g. to chunks {fix}")


def check_omezarr_channels(image: OmeZarrImage, want: int) -> None:
    """:class:`UserError` unless the image has ``want`` channels."""
    if image.channels != want:
        axis = ("no channel axis" if image.channel_axis is None
                else f"axis {image.axes[image.channel_axis]['name']!r} of size {image.channels}")
        raise UserError(f"{image.path}: the model takes {want}-channel images but this one has"
                        f" {image.channels} ({axis}); give an image with {want} channel(s)")


class OmeZarrBandReader:
    """Horizontal bands of one plane of an :class:`OmeZarrImage`, decoded on demand, in the read
    scale of :func:`~unetseg.data.io.read_image` (uint8 / 255, uint16 / 65535, float as is).

    Only the chunks a band touches are decoded, a chunk row (all chunks sharing y) at a time,
    and the chunk rows of the last band are kept because neighbouring bands overlap.

    Args:
        image: the opened level.
        plane: indices along ``image.plane_axes``; ``()`` for a (c, y, x) or (y, x) image.
    """

    def __init__(self, image: OmeZarrImage, plane: tuple[int, ...] = ()):
        if len(plane) != len(image.plane_axes):
            raise ValueError(f"plane {plane} for plane axes {image.plane_axes}")
        self.image, self.plane, self.path = image, plane, image.path
        self.height, self.width, self.channels = image.height, image.width, image.channels
        self._chunk_rows = int(image.array.chunks[-2])
        self._cache: dict[int, np.ndarray] = {}

    def _read(self, top: int, bottom: int) -> np.ndarray:
        """Rows ``[top, bottom)`` as stored, ``(C, rows, W)``."""
        index: list[Any] = [slice(None)] * len(self.image.shape)
        for axis, i in zip(self.image.plane_axes, self.plane):
            index[axis] = i
        index[-2] = slice(top, bottom)
        data = np.asarray(self.image.array[tuple(index)])
        return data[None] if self.image.channel_axis is None else data

    def _chunk_row_block(self, first: int, last: int) -> np.ndarray:
        """Chunk rows ``first..last`` (inclusive), ``(C, rows, W)`` as stored."""
        missing = [i for i in range(first, last + 1) if i not in self._cache]
        fresh: dict[int, np.ndarray] = {}
        if missing:
            lo, hi = missing[0], missing[-1]
            block = self._read(lo * self._chunk_rows, min(self.height,
                                                          (hi + 1) * self._chunk_rows))
            for i in range(lo, hi + 1):
                start = (i - lo) * self._chunk_rows
                fresh[i] = block[:, start : start + self._chunk_rows]
        self._cache = {i: fresh[i] if i in fresh else self._cache[i]
                       for i in range(first, last + 1)}
        parts = list(self._cache.values())
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def rows(self, top: int, bottom: int) -> np.ndarray:
        """Rows ``[top, bottom)`` as float32 ``(C, bottom - top, W)``; 0 <= top < bottom <= H."""
        first, last = top // self._chunk_rows, (bottom - 1) // self._chunk_rows
        block = self._chunk_row_block(first, last)
        offset = first * self._chunk_rows
        return scale_to_float(self.path, block[:, top - offset : bottom - offset])

    def mirrored_rows(self, top: int, bottom: int) -> np.ndarray:
        """Rows ``[top, bottom)`` where rows outside the image are mirrored (reflect)."""
        before, after = max(0, -top), max(0, bottom - self.height)
        idx = reflect_indices(self.height, before, after).numpy()[top + before : bottom + before]
        lo, hi = int(idx.min()), int(idx.max()) + 1
        return self.rows(lo, hi)[:, idx - lo]

    def close(self) -> None:
        self._cache = {}

    def __enter__(self) -> OmeZarrBandReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def label_levels(height: int, width: int) -> int:
    """Levels of the label pyramid: halve until the longer side is at most
    :data:`PYRAMID_SIDE`, at least :data:`MIN_LEVELS` levels, never below one pixel."""
    longer = max(height, width)
    wanted = max(MIN_LEVELS, 1 + math.ceil(math.log2(max(1.0, longer / PYRAMID_SIDE))))
    return min(wanted, 1 + int(math.log2(longer)))


def label_dtype(classes: ClassTable) -> np.dtype:
    """Smallest unsigned integer type that holds every class value."""
    top = classes.values[-1]
    return np.dtype(np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32)


class LabelPyramid:
    """Label rows, as they come, into arrays ``0``, ``1``, ... of a zarr group: level ``k``
    holds every ``2**k``-th row and column of level 0 (nearest), of shape
    ``ceil(H / 2**k) x ceil(W / 2**k)`` in y and x, in chunks of :data:`LABEL_CHUNK` pixels
    (1 along the other axes). Rows are buffered until a whole chunk row can be written, so no
    chunk is written twice.

    Args:
        group: the (new) label image's zarr group.
        shape: level 0's shape, y and x last.
        dtype: the label values' type.
        levels: number of levels.
        dimension_names: the axes' names (Zarr v3 stores them with each array).
    """

    def __init__(self, group: Any, shape: tuple[int, ...], dtype: np.dtype, levels: int,
                 dimension_names: list[str]):
        self.arrays = []
        v2 = group.metadata.zarr_format == 2
        options: dict[str, Any] = (
            {"chunk_key_encoding": {"name": "v2", "separator": "/"}} if v2
            else {"dimension_names": dimension_names})
        for k in range(levels):
            f = 2**k
            level_shape = (*shape[:-2], -(-shape[-2] // f), -(-shape[-1] // f))
            chunks = (*(1,) * (len(shape) - 2), min(LABEL_CHUNK, level_shape[-2]),
                      min(LABEL_CHUNK, level_shape[-1]))
            self.arrays.append(group.create_array(str(k), shape=level_shape, chunks=chunks,
                                                  dtype=dtype, fill_value=0, **options))
        self._plane: tuple[int, ...] = ()
        self._pending: list[list[np.ndarray]] = [[] for _ in self.arrays]
        self._written = [0] * len(self.arrays)  # rows of each level written for this plane
        self._next_top = 0

    def start(self, plane: tuple[int, ...]) -> None:
        """Begin the plane at these indices of the axes before y and x."""
        self._plane = plane
        self._pending = [[] for _ in self.arrays]
        self._written = [0] * len(self.arrays)
        self._next_top = 0

    def add(self, top: int, values: np.ndarray) -> None:
        """Level-0 label rows ``[top, top + len(values))`` of the current plane, (rows, W);
        bands come in order, top to bottom."""
        if top != self._next_top:
            raise ValueError(f"label rows from {top}, expected {self._next_top}")
        self._next_top = top + values.shape[0]
        for k in range(len(self.arrays)):
            f = 2**k
            first = -(-top // f) * f
            part = values[first - top :: f, ::f]
            if part.shape[0]:  # a copy: a view would keep the whole band alive until written
                self._pending[k].append(part.copy())
            self._flush(k, final=False)

    def finish(self) -> None:
        """Write the last rows of the current plane."""
        for k in range(len(self.arrays)):
            self._flush(k, final=True)

    def _flush(self, k: int, *, final: bool) -> None:
        array, pending = self.arrays[k], self._pending[k]
        chunk = int(array.chunks[-2])
        have = sum(p.shape[0] for p in pending)
        while have and (have >= chunk or final):
            block = np.concatenate(pending) if len(pending) > 1 else pending[0]
            take = min(chunk, have)
            top = self._written[k]
            array[(*self._plane, slice(top, top + take), slice(None))] = block[:take]
            self._written[k] = top + take
            rest = block[take:]
            pending[:] = [rest] if rest.shape[0] else []
            have -= take


def _level_transforms(image: OmeZarrImage, factor: int) -> list[dict[str, Any]]:
    """The label level's scale (and translation): the image level's, without the channel
    axis, with y and x scaled by ``factor``. Level-``k`` pixel ``i`` is level-0 pixel
    ``i * 2**k``, so the translation stays."""
    keep = [i for i in range(len(image.shape)) if i != image.channel_axis]
    scale = [1.0] * len(keep)
    translation = None
    for t in image.transforms:
        if t.get("type") == "scale" and isinstance(t.get("scale"), list):
            scale = [float(t["scale"][i]) for i in keep]
        elif t.get("type") == "translation" and isinstance(t.get("translation"), list):
            translation = [float(t["translation"][i]) for i in keep]
    scale[-2:] = [scale[-2] * factor, scale[-1] * factor]
    out: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
    if translation is not None:
        out.append({"type": "translation", "translation": translation})
    return out


def _without_channel(image: OmeZarrImage, transforms: tuple[dict[str, Any], ...]
                     ) -> list[dict[str, Any]]:
    keep = [i for i in range(len(image.shape)) if i != image.channel_axis]
    out = []
    for t in transforms:
        key = t.get("type")
        if key in ("scale", "translation") and isinstance(t.get(key), list):
            out.append({"type": key, key: [t[key][i] for i in keep]})
    return out


def _ngff_version(group: Any) -> str:
    """The NGFF version written into a group of this Zarr format: 0.4 (v2) or 0.5 (v3)."""
    return "0.4" if group.metadata.zarr_format == 2 else "0.5"


def _update_ome(group: Any, metadata: dict[str, Any]) -> None:
    """Set NGFF keys of a group: at the top of its attributes (0.4), or under ``ome`` with the
    version (0.5)."""
    if _ngff_version(group) == "0.4":
        group.attrs.update(metadata)
    else:
        ome = _ome_attributes(group.attrs.asdict())
        group.attrs["ome"] = {**ome, "version": "0.5", **metadata}


def write_label_metadata(group: Any, image: OmeZarrImage, name: str, levels: int,
                         classes: ClassTable) -> None:
    """``multiscales`` (written and checked by ome-zarr) and ``image-label`` metadata of the
    label image in ``group``, in the NGFF version of its Zarr format (0.4 on v2, 0.5 on v3)."""
    writer, formats = import_ome_zarr(image.path)
    version = _ngff_version(group)
    fmt = formats.FormatV04() if version == "0.4" else formats.FormatV05()
    datasets = [{"path": str(k), "coordinateTransformations": _level_transforms(image, 2**k)}
                for k in range(levels)]
    writer.write_multiscales_metadata(group, datasets, fmt=fmt, axes=image.label_axes(),
                                      name=name)
    if image.image_transforms:
        multiscales = _ome_attributes(group.attrs.asdict())["multiscales"]
        multiscales[0]["coordinateTransformations"] = _without_channel(image,
                                                                       image.image_transforms)
        _update_ome(group, {"multiscales": multiscales})
    colours = class_colours(classes).tolist()
    image_label: dict[str, Any] = {
        "colors": [{"label-value": v, "rgba": [*c, 255]} for v, c in zip(classes.values,
                                                                         colours)],
        "properties": [{"label-value": v, "class": n} for v, n in zip(classes.values,
                                                                      classes.names)],
        "source": {"image": "../../"},
    }
    if version == "0.4":
        image_label["version"] = version
    _update_ome(group, {"image-label": image_label})


def _list_label(labels_group: Any, name: str) -> None:
    """Add ``name`` to the ``labels`` listing of ``<image>/labels`` (once)."""
    listed = _ome_attributes(labels_group.attrs.asdict()).get("labels", [])
    _update_ome(labels_group, {"labels": [*(n for n in listed if n != name), name]})


def check_label_name(name: str) -> None:
    """:class:`UserError` unless ``name`` can name a label image folder."""
    if (not name or name in (".", "..") or name.startswith(("__", ".")) or "/" in name
            or "\\" in name):
        raise UserError(f"--label-name {name!r}: not a plain folder name; use letters, digits,"
                        " '-', '_' and '.', not first")


def label_target(image_path: Path, name: str, *, overwrite: bool) -> Path:
    """``<image>/labels/<name>``; :class:`UserError` when it exists and ``overwrite`` is off."""
    check_label_name(name)
    target = image_path / "labels" / name
    if target.exists() and not overwrite:
        raise UserError(f"{target}: the image already has labels named {name!r}; choose"
                        " another --label-name or pass --overwrite-labels")
    return target


def predict_omezarr(model: torch.nn.Module, stats: ChannelStats, classes: ClassTable,
                    image: OmeZarrImage, name: str, *, tile: int | None = None,
                    overlap: float = DEFAULT_OVERLAP, batch_size: int = DEFAULT_BATCH_SIZE,
                    overwrite: bool = False,
                    preview: Callable[[np.ndarray, np.ndarray], None] | None = None,
                    show_progress: bool = True) -> Path:
    """Predict every plane of ``image`` band by band into ``<image>/labels/<name>``.

    The label image is built in a hidden folder beside its target and moved into place when
    complete, then listed; an existing label image of the same name is replaced only with
    ``overwrite`` (and only then).

    Args:
        model: a :class:`~unetseg.model.UNet` in eval mode.
        stats: the model's normalisation.
        classes: the model's class table: label values, colours and names.
        image: the opened level (:func:`open_omezarr`).
        tile, overlap, batch_size: the tiling; :meth:`~unetseg.infer.engine.ImagePredictor.
            tiling` gives the one of in-memory prediction, and with it the same labels.
        preview: called once with the first plane's decimated (C, h, w) image and (h, w)
            class ids, the longer side at most 2048 pixels.

    Returns:
        the label image's folder.
    """
    cfg = model_config(model)
    check_omezarr_channels(image, cfg.in_channels)
    target = label_target(image.path, name, overwrite=overwrite)
    zarr = import_zarr(image.path)
    import_ome_zarr(image.path)
    plan = plan_windows(cfg.padding, cfg.depth, image.height, image.width, tile=tile,
                        overlap=overlap)
    levels = label_levels(image.height, image.width)
    lut = np.array(classes.values, label_dtype(classes))
    partial = target.parent / f".{name}.partial"
    try:
        target.parent.mkdir(exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        group = zarr.open_group(str(partial), mode="w", zarr_format=image.zarr_format)
    except OSError as exc:
        raise UserError(f"{target.parent}: cannot write labels there ({exc.strerror or exc});"
                        " copy the image to a writable folder") from None
    try:
        pyramid = LabelPyramid(group, image.label_shape(), lut.dtype, levels,
                               [a["name"] for a in image.label_axes()])
        planes = image.planes()
        with progress(total=len(planes) * len(plan.ys) * len(plan.xs),
                      desc=f"predict {image.path.name}", unit="tile",
                      disable=not show_progress) as bar:
            for i, plane in enumerate(planes):
                thumbnail = (_Thumbnail(image.height, image.width)
                             if preview is not None and i == 0 else None)
                pyramid.start(plane)
                for top, ids in _label_rows(OmeZarrBandReader(image, plane), model, plan, stats,
                                            batch_size, thumbnail, lambda: bar.update(1)):
                    pyramid.add(top, lut[ids])
                pyramid.finish()
                if preview is not None and thumbnail is not None:
                    preview(*thumbnail.result())
        write_label_metadata(group, image, name, levels, classes)
        labels_group = zarr.open_group(str(target.parent), mode="a",
                                       zarr_format=image.zarr_format)
        _replace(partial, target)
        _list_label(labels_group, name)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def _label_rows(reader: OmeZarrBandReader, model: torch.nn.Module, plan: WindowPlan,
                stats: ChannelStats, batch_size: int, thumbnail: _Thumbnail | None,
                on_window: Callable[[], None]) -> Iterator[tuple[int, np.ndarray]]:
    """``(top, class ids (rows, W))`` of the plane, top to bottom."""
    param = next(model.parameters())

    @torch.inference_mode()
    def predictor(batch: torch.Tensor) -> torch.Tensor:
        return model(batch.to(param.device, param.dtype))

    for top, ids, image_rows in stream_labels(reader, predictor, plan, stats,
                                              batch_size=batch_size, device=param.device,
                                              on_window=on_window):
        if thumbnail is not None:
            thumbnail.add(top, ids, image_rows)
        yield top, ids


def _replace(partial: Path, target: Path) -> None:
    """Move the finished label image into place; an old one goes only once the new one is in."""
    old = target.parent / f".{target.name}.old"
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)
