"""Objects of images too large for memory: an instance model streamed band by band, with
objects carried across the band seams under one id.

:func:`~unetseg.infer.stream.stream_labels` blends the network's output exactly as in memory
and hands on bands of finished rows; here they become the object and seed maps
(:func:`~unetseg.infer.instances.instance_maps`), and :class:`BandObjects` splits them into
objects on a sliding window of rows:

* a band's rows are given their objects only when the next band has arrived, by a watershed
  (:mod:`unetseg.infer.instances`) over the window of the band, the next band (look-ahead) and
  up to :data:`STITCH_CONTEXT` rows already given (context above), so an object that crosses
  the seam below is seen whole when it is smaller than a band;
* in the context rows, each object of the window takes the id of the object it overlaps most
  there, so an object that crosses the seam above keeps its id (two ids become one, by
  union-find, where one object of the window covers most of both: given apart above, joined
  below); an object that overlaps none gets a new id;
* the ids are provisional until the end: the rows are written to a temporary memory-mapped
  array, the object table is summed per provisional id, and a second pass writes the final,
  consecutive ids (objects under the minimum size dropped) into a tiled BigTIFF.

A window's watershed equals the whole image's for every mask region the window holds whole
(the flooding is confined to a region, and the ids keep their raster order), so the streamed
objects equal the in-memory ones up to their numbering wherever no mask region is larger than
a band; a larger one keeps one id, and its dividing lines with its neighbours may move by the
pixels whose tie the raster order of the window's seeds breaks
(``tests/infer/test_instance_bands.py``). Memory grows with the width times the window's
height (two bands and the context), not with the image's area.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from scipy import ndimage

from unetseg.config import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, InstanceConfig
from unetseg.data.normalize import ChannelStats
from unetseg.errors import UserError
from unetseg.files import atomic_path
from unetseg.infer.instances import (
    InstanceMaps,
    flood,
    instance_maps,
    object_columns,
    rows_csv,
)
from unetseg.infer.stream import (
    LABEL_TIFF_TILE,
    _Thumbnail,
    label_tiles,
    plan_windows,
    stream_labels,
)
from unetseg.infer.tiff_bands import TiffBandReader
from unetseg.model import model_config
from unetseg.progress import progress

STITCH_CONTEXT = 256
"""Rows above a band that its window sees again (their ids already given)."""


class BandObjects:
    """Consecutive bands of maps in, rows of provisional object ids out (see the module).

    Args:
        cfg: the post-processing (thresholds, hole filling; the minimum size applies in
            :meth:`resolve`, to whole objects).
        height, width: the image's size in pixels.
        context: rows above a band that its window sees again.
    """

    def __init__(self, cfg: InstanceConfig, height: int, width: int, *,
                 context: int = STITCH_CONTEXT):
        self.cfg = cfg
        self.height, self.width, self.context = height, width, context
        self._maps = np.zeros((2, 0, width), np.float32)  # rows [_top, _top + len)
        self._given = np.zeros((0, width), np.int64)  # the ids of rows [_top, _done)
        self._top = 0
        self._done = 0
        self._parent = np.zeros(1, np.int64)  # union-find over the provisional ids
        self._sums: dict[str, np.ndarray] = {}

    def add(self, top: int, maps: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Take the maps ``(2, rows, W)`` of rows ``top..``; return ``(top, ids (rows', W))``
        for the rows now given their objects: those before ``top``."""
        if top != self._top + self._maps.shape[1]:
            raise ValueError(f"bands must come in order: expected row"
                             f" {self._top + self._maps.shape[1]}, got {top}")
        self._maps = np.concatenate([self._maps, maps.astype(np.float32)], axis=1)
        return [self._give(top)] if top > self._done else []

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """The ids of the rows still held (the last band)."""
        end = self._top + self._maps.shape[1]
        if end != self.height:
            raise ValueError(f"the bands cover {end} of {self.height} rows")
        return [self._give(end)] if end > self._done else []

    def _give(self, until: int) -> tuple[int, np.ndarray]:
        """Give rows ``_done..until`` their ids by a watershed over every row held."""
        maps = InstanceMaps(self._maps[0], self._maps[1])
        window = flood(maps, self.cfg.mask_threshold, self.cfg.seed_threshold,
                       self.cfg.fill_holes).astype(np.int64)
        mapping = np.zeros(int(window.max()) + 1, np.int64)
        seen = self._done - self._top
        for window_id, given in self._matches(window[:seen]):
            if mapping[window_id] == 0:
                mapping[window_id] = given
            else:
                self._union(int(mapping[window_id]), given)
        rows = window[seen: until - self._top]
        fresh = np.unique(rows[rows > 0])
        fresh = fresh[mapping[fresh] == 0]
        mapping[fresh] = self._new_ids(len(fresh))
        ids = mapping[rows]
        given_top = self._done
        self._given = np.concatenate([self._given, ids])
        self._done = until
        keep = max(self._top, until - self.context)
        self._maps = self._maps[:, keep - self._top:]
        self._given = self._given[keep - self._top:]
        self._top = keep
        return given_top, ids

    def _matches(self, window: np.ndarray) -> list[tuple[int, int]]:
        """(window id, given id) pairs of the context rows ``window``: each window object with
        the given object it overlaps most, then with every other given object it covers for at
        least half of that object's context pixels (two objects given apart above, joined
        below). A few pixels that two neighbours traded at their dividing line join nothing."""
        both = (window > 0) & (self._given > 0)
        if not both.any():
            return []
        pairs, counts = np.unique(np.stack([window[both], self._given[both]]), axis=1,
                                  return_counts=True)
        given_size = np.bincount(self._given[both], minlength=int(pairs[1].max()) + 1)
        order = np.lexsort((-counts, pairs[0]))  # by window id, largest overlap first
        matches, last = [], -1
        for i in order.tolist():
            window_id, given = int(pairs[0, i]), int(pairs[1, i])
            if window_id != last or 2 * counts[i] >= given_size[given]:
                matches.append((window_id, given))
            last = window_id
        return matches

    def _new_ids(self, count: int) -> np.ndarray:
        first = len(self._parent)
        self._parent = np.concatenate([self._parent, np.arange(first, first + count)])
        return np.arange(first, first + count, dtype=np.int64)

    def _find(self, i: int) -> int:
        root = i
        while self._parent[root] != root:
            root = int(self._parent[root])
        while self._parent[i] != root:
            self._parent[i], i = root, int(self._parent[i])
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def _column(self, key: str, fill: float, dtype: Any = np.float64) -> np.ndarray:
        """The sums ``key``, one per provisional id so far (new ids start at ``fill``)."""
        n = len(self._parent)
        column = self._sums.get(key, np.zeros(0, dtype))
        if len(column) < n:
            column = np.concatenate([column, np.full(n - len(column), fill, dtype)])
        self._sums[key] = column
        return column

    def measure(self, top: int, ids: np.ndarray, image: np.ndarray) -> None:
        """Add rows ``top..`` of provisional ``ids`` ``(rows, W)`` over ``image`` rows
        ``(C, rows, W)`` to the object table's sums."""
        n = len(self._parent)
        flat = ids.ravel()
        rows, cols = np.indices(ids.shape)
        rows += top
        weights: dict[str, np.ndarray | None] = {
            "area": None, "sum_y": rows.ravel(), "sum_x": cols.ravel(),
            **{f"sum_c{c}": channel.ravel() for c, channel in enumerate(image)}}
        for key, w in weights.items():
            self._column(key, 0.0)[:] += np.bincount(flat, weights=w, minlength=n)[:n]
        values, inverse = np.unique(ids, return_inverse=True)
        boxes = ndimage.find_objects(inverse.reshape(ids.shape) + 1)
        tops, lefts = self._column("top", self.height), self._column("left", self.width)
        bottoms, rights = self._column("bottom", 0), self._column("right", 0)
        for value, box in zip(values.tolist(), boxes):
            if value and box is not None:
                tops[value] = min(tops[value], box[0].start + top)
                lefts[value] = min(lefts[value], box[1].start)
                bottoms[value] = max(bottoms[value], box[0].stop + top)
                rights[value] = max(rights[value], box[1].stop)
        edges = [ids[:, 0], ids[:, -1]]
        if top == 0:
            edges.append(ids[0])
        if top + len(ids) == self.height:
            edges.append(ids[-1])
        self._column("border", 0.0)[np.concatenate(edges)] = 1.0

    def resolve(self, min_size: int) -> tuple[np.ndarray, list[dict[str, Any]], int]:
        """The final ids: ``(lookup from provisional to final id, object table, count)``.

        Provisional ids joined across seams become one object, numbered ``1..n`` in the order
        of their first rows; objects under ``min_size`` pixels become 0.
        """
        n = len(self._parent)
        roots = np.array([self._find(i) for i in range(n)], np.int64)
        merged: dict[str, np.ndarray] = {}
        for key, fill in (("area", 0.0), ("sum_y", 0.0), ("sum_x", 0.0), ("top", self.height),
                          ("left", self.width), ("bottom", 0), ("right", 0), ("border", 0.0),
                          *((k, 0.0) for k in self._sums if k.startswith("sum_c"))):
            column = self._column(key, fill)
            if key in ("top", "left"):
                out = np.full(n, fill, np.float64)
                np.minimum.at(out, roots, column)
            elif key in ("bottom", "right", "border"):
                out = np.zeros(n)
                np.maximum.at(out, roots, column)
            else:
                out = np.bincount(roots, weights=column, minlength=n).astype(np.float64)
            merged[key] = out
        keep = (roots == np.arange(n)) & (merged["area"] >= max(min_size, 1))
        keep[0] = False
        final = np.zeros(n, np.int64)
        final[keep] = np.arange(1, int(keep.sum()) + 1)
        channels = sorted((k for k in merged if k.startswith("sum_c")), key=lambda k: int(k[5:]))
        table = []
        for index in np.nonzero(keep)[0].tolist():
            area = float(merged["area"][index])
            row: dict[str, Any] = {
                "id": int(final[index]), "area": int(area),
                "centroid_y": round(float(merged["sum_y"][index] / area), 3),
                "centroid_x": round(float(merged["sum_x"][index] / area), 3),
                "bbox_top": int(merged["top"][index]), "bbox_left": int(merged["left"][index]),
                "bbox_bottom": int(merged["bottom"][index]),
                "bbox_right": int(merged["right"][index])}
            for c, key in enumerate(channels):
                row[f"mean_c{c}"] = round(float(merged[key][index] / area), 6)
            row["touches_border"] = bool(merged["border"][index])
            table.append(row)
        return final[roots], table, int(keep.sum())


def predict_large_tiff_objects(model: torch.nn.Module, stats: ChannelStats, cfg: InstanceConfig,
                               path: str | Path, out: str | Path, stem: str, *,
                               tile: int | None = None, overlap: float = DEFAULT_OVERLAP,
                               batch_size: int = DEFAULT_BATCH_SIZE,
                               max_pixels: int | None = None,
                               preview: Callable[[np.ndarray, np.ndarray], None] | None = None,
                               show_progress: bool = True) -> tuple[Path, str]:
    """Stream an instance model over a large TIFF into ``out/<stem>_instances.tif`` (a tiled,
    zlib-compressed BigTIFF, 16-bit up to 65535 objects, else 32-bit).

    Args:
        model: an instance network in eval mode; ``stats`` its normalisation, ``cfg`` its
            target and post-processing.
        tile, overlap, batch_size: the tiling, as in memory.
        preview: called with a decimated ``(C, h, w)`` image and its ``(h, w)`` object ids
            (longer side at most 2048 pixels).

    Returns:
        The instance image's path and the object table as CSV text.
    """
    net = model_config(model)
    out = Path(out)
    target = out / f"{stem}_instances.tif"
    scratch = out / f".{stem}_instances.provisional.npy"
    with TiffBandReader(path, max_pixels=max_pixels) as reader:
        if reader.channels != net.in_channels:
            raise UserError(f"{path}: the model takes {net.in_channels}-channel images but this"
                            f" one has {reader.channels}; convert it")
        height, width = reader.height, reader.width
        plan = plan_windows(net.padding, net.depth, height, width, tile=tile, overlap=overlap)
        objects = BandObjects(cfg, height, width)
        thumbnail = _Thumbnail(height, width) if preview is not None else None
        param = next(model.parameters())

        @torch.inference_mode()
        def predictor(batch: torch.Tensor) -> torch.Tensor:
            return model(batch.to(param.device, param.dtype))

        def decode(logits: torch.Tensor) -> np.ndarray:
            return instance_maps(logits, cfg).stack()

        provisional = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.uint32,
                                                shape=(height, width))
        try:
            images: dict[int, np.ndarray] = {}
            with progress(total=len(plan.ys) * len(plan.xs), desc=f"predict {reader.path.name}",
                          unit="tile", disable=not show_progress) as bar:
                bands = stream_labels(reader, predictor, plan, stats, batch_size=batch_size,
                                      device=param.device, on_window=lambda: bar.update(1),
                                      decode=decode)
                for top, maps, image_rows in bands:
                    images[top] = image_rows
                    for given_top, ids in objects.add(top, maps):
                        _keep(provisional, objects, thumbnail, given_top, ids,
                              images.pop(given_top))
                for given_top, ids in objects.finish():
                    _keep(provisional, objects, thumbnail, given_top, ids, images.pop(given_top))
            lookup, table, count = objects.resolve(cfg.min_size)
            dtype = np.dtype(np.uint16 if count <= 65535 else np.uint32)
            _write_objects_tiff(target, provisional, lookup, dtype)
        finally:
            del provisional
            os.unlink(scratch)
    if preview is not None and thumbnail is not None:
        image, ids = thumbnail.result()
        preview(image, lookup[ids])
    return target, rows_csv(table, object_columns(net.in_channels))


def _keep(provisional: np.ndarray, objects: BandObjects, thumbnail: Any, top: int,
          ids: np.ndarray, image_rows: np.ndarray) -> None:
    """Store given rows: in the scratch array, the object table's sums and the thumbnail."""
    provisional[top: top + len(ids)] = ids
    objects.measure(top, ids, image_rows)
    if thumbnail is not None:
        thumbnail.add(top, ids, image_rows)


def _write_objects_tiff(target: Path, provisional: np.ndarray, lookup: np.ndarray,
                        dtype: np.dtype) -> None:
    """The final ids of the scratch array, band by band, into a tiled BigTIFF (atomically)."""
    height, width = provisional.shape
    step = LABEL_TIFF_TILE

    def bands() -> Iterator[tuple[int, np.ndarray]]:
        for top in range(0, height, step):
            yield top, lookup[provisional[top: top + step].astype(np.int64)].astype(dtype)

    with atomic_path(target) as tmp:
        tifffile.imwrite(tmp, label_tiles(bands(), height, width, step, dtype),
                         shape=(height, width), dtype=dtype, tile=(step, step), bigtiff=True,
                         compression="zlib", photometric="minisblack")
