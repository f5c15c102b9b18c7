"""Prediction of images too large for memory: read bands of a TIFF, write a tiled BigTIFF.

A 20000 x 20000 image as float32 logits of two classes would take 3.2 GB; here only one band
of windows is held at a time. The image is read band by band (:class:`TiffBandReader` decodes
only the TIFF strips or tiles a band touches), windows of the band are predicted and blended
exactly as :func:`~unetseg.infer.predict.sliding_window_logits` and
:func:`~unetseg.infer.predict.overlap_tile_logits` do, and finished label rows are handed on
as soon as no later window can touch them. Memory is O(window side x image width).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tifffile
import torch

from unetseg.config import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_TILE
from unetseg.data.classes import ClassTable
from unetseg.data.masks import label_metadata, mask_palette
from unetseg.data.normalize import ChannelStats, channel_stats, normalize
from unetseg.errors import UserError
from unetseg.infer.blending import BlendMode, blend_weight
from unetseg.infer.predict import default_out_tile, logits_to_labels
from unetseg.infer.tiff_bands import TiffBandReader
from unetseg.infer.tiling import overlap_tile_input_size, reflect_indices, tile_starts
from unetseg.model import model_config
from unetseg.model.geometry import valid_margin
from unetseg.progress import progress

Predictor = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["BandReader", "TiffBandReader", "WindowPlan", "label_tiles", "plan_windows",
           "predict_large_tiff", "stream_labels"]

LABEL_TIFF_TILE = 512
"""Side in pixels of the written label BigTIFF's own tiles (its storage layout, not the
prediction's tiling)."""


class BandReader(Protocol):
    """What :func:`stream_labels` reads: an image's size and its rows, mirrored past the edges
    (:class:`TiffBandReader`, :class:`~unetseg.infer.omezarr.OmeZarrBandReader`)."""

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    def mirrored_rows(self, top: int, bottom: int) -> np.ndarray:
        """Rows ``[top, bottom)`` as float32 ``(C, rows, W)``, rows outside the image
        mirrored."""
        ...


@dataclass(frozen=True)
class WindowPlan:
    """Where windows go. Output windows of ``out_h`` x ``out_w`` start at ``ys`` x ``xs``;
    each is predicted from the input window that extends it by ``margin`` before and
    ``margin + extra`` after (valid padding), and the network's output is cropped to the
    window. Same padding: margin 0, overlapping windows blended; valid: disjoint windows."""

    out_h: int
    out_w: int
    margin: int
    extra: int
    ys: list[int]
    xs: list[int]
    blend: BlendMode

    @property
    def in_h(self) -> int:
        return self.out_h + 2 * self.margin + self.extra

    @property
    def in_w(self) -> int:
        return self.out_w + 2 * self.margin + self.extra


def plan_windows(padding: str, depth: int, height: int, width: int, *, tile: int | None = None,
                 overlap: float = DEFAULT_OVERLAP, blend: BlendMode = "gaussian") -> WindowPlan:
    """The windows :func:`~unetseg.infer.predict.predict_logits` would use for this image."""
    tile = tile or DEFAULT_TILE
    if padding == "same":
        th, tw = min(tile, height), min(tile, width)
        return WindowPlan(th, tw, 0, 0, tile_starts(height, th, overlap),
                          tile_starts(width, tw, overlap), blend)
    out = default_out_tile(depth, tile, max(height, width))
    margin = valid_margin(depth)
    extra = overlap_tile_input_size(out, depth) - out - 2 * margin
    return WindowPlan(out, out, margin, extra, list(range(0, height, out)),
                      list(range(0, width, out)), "constant")


@torch.inference_mode()
def stream_labels(reader: BandReader, predictor: Predictor, plan: WindowPlan,
                  stats: ChannelStats, *, batch_size: int = DEFAULT_BATCH_SIZE,
                  device: torch.device | None = None,
                  on_window: Callable[[], None] | None = None,
                  decode: Callable[[torch.Tensor], np.ndarray] | None = None
                  ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(top, labels (rows, W) int64, image rows (C, rows, W))`` for consecutive bands
    of finished rows, top to bottom. ``predictor`` maps (B, C, in_h, in_w) to logits whose top-left
    ``out_h`` x ``out_w`` belong to the window. ``decode`` replaces the labels by another
    function of the blended logits ``(K, rows, W)`` (an instance model's maps)."""
    device = device or torch.device("cpu")
    h, w = reader.height, reader.width
    stats = stats.for_image(image_stats(reader)) if stats.scheme == "image" else stats
    weight = blend_weight(plan.blend, plan.out_h, plan.out_w, device=device)
    acc: torch.Tensor | None = None
    wsum = torch.zeros(plan.out_h, w, device=device)
    cols = reflect_indices(w, plan.margin, max(0, plan.xs[-1] + plan.in_w - plan.margin - w))
    base = 0
    for i, y in enumerate(plan.ys):
        if acc is not None and y != base:
            acc, wsum = _shift_rows(acc, y - base), _shift_rows(wsum, y - base)
        base = y
        raw = reader.mirrored_rows(y - plan.margin, y - plan.margin + plan.in_h)
        band = normalize(torch.from_numpy(raw).to(device), stats)[:, :, cols.to(device)]
        for start in range(0, len(plan.xs), batch_size):
            xs = plan.xs[start : start + batch_size]
            windows = torch.stack([band[:, :, x : x + plan.in_w] for x in xs])
            logits = predictor(windows)[:, :, : plan.out_h, : plan.out_w].float().to(device)
            if acc is None:
                acc = torch.zeros(logits.shape[1], plan.out_h, w, device=device)
            for x, window_logits in zip(xs, logits):
                ow = min(plan.out_w, w - x)
                acc[:, :, x : x + ow] += weight[:, :ow] * window_logits[:, :, :ow]
                wsum[:, x : x + ow] += weight[:, :ow]
                if on_window is not None:
                    on_window()
        assert acc is not None
        end = plan.ys[i + 1] if i + 1 < len(plan.ys) else min(h, y + plan.out_h)
        blended = acc[:, : end - y] / wsum[: end - y]
        rows = logits_to_labels(blended).cpu().numpy() if decode is None else decode(blended)
        yield y, rows, raw[:, plan.margin : plan.margin + end - y]


STATS_ROWS = 256
"""Rows read at a time for a streamed image's own statistics (the ``image`` normalisation)."""


def image_stats(reader: BandReader) -> ChannelStats:
    """The mean and sd per channel of the whole image, read band by band (one extra pass over
    the file), for models normalised per image."""
    return channel_stats(reader.mirrored_rows(top, min(reader.height, top + STATS_ROWS))
                         for top in range(0, reader.height, STATS_ROWS))


def _shift_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """Move rows ``n:`` of the last-but-one axis to the top and zero the rest."""
    out = torch.zeros_like(t)
    out[..., : t.shape[-2] - n, :] = t[..., n:, :]
    return out


def label_tiles(bands: Iterator[tuple[int, np.ndarray]], height: int, width: int, tile: int,
                dtype: np.dtype) -> Iterator[np.ndarray]:
    """Regroup bands of label rows (rows, W) or colour rows (rows, W, 3) into ``tile`` x ``tile``
    tiles in TIFF order (row-major), zero-padded at the right and bottom edges."""
    pending: list[np.ndarray] = []
    have = 0
    row = 0
    for _, rows in bands:
        pending.append(rows)
        have += rows.shape[0]
        while have >= tile or (row + have == height and have > 0):
            block = np.concatenate(pending) if len(pending) > 1 else pending[0]
            take = min(tile, block.shape[0])
            strip = np.zeros((tile, -(-width // tile) * tile, *block.shape[2:]), dtype)
            strip[:take, :width] = block[:take]
            for x in range(0, width, tile):
                yield strip[:, x : x + tile]
            rest = block[take:]
            pending, have, row = ([rest] if len(rest) else []), len(rest), row + take


class _Thumbnail:
    """Every ``step``-th row and column of the image and its class ids, for the overlay."""

    def __init__(self, height: int, width: int, longest: int = 2048):
        self.step = max(1, -(-max(height, width) // longest))
        self.image: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []

    def add(self, top: int, ids: np.ndarray, image_rows: np.ndarray) -> None:
        """Keep the sampled part of label rows (rows, W) and image rows (C, rows, W)."""
        keep = (np.arange(top, top + ids.shape[0]) % self.step) == 0
        self.ids.append(ids[keep, :: self.step])
        self.image.append(image_rows[:, keep, :: self.step])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(C, h, w) image and (h, w) class ids, the longer side at most ``longest``."""
        return np.concatenate(self.image, axis=1), np.concatenate(self.ids)


def label_tiff_options(classes: ClassTable) -> dict[str, Any]:
    """``tifffile.imwrite`` keywords that store decoded labels in the encoding
    :func:`~unetseg.data.masks.write_mask` gives a PNG: gray values, RGB colours, or palette
    indices with the masks' palette as the TIFF's colour map ((3, 256) uint16, 0..65535); the
    class table goes in the ImageDescription (:func:`~unetseg.data.masks.label_metadata`)."""
    description = {"description": label_metadata(classes)}
    if classes.encoding == "rgb":
        return {"photometric": "rgb", **description}
    if classes.encoding == "palette":
        flat = np.array(mask_palette(classes), np.uint16).reshape(-1, 3)
        colormap = np.zeros((3, 256), np.uint16)
        colormap[:, : len(flat)] = flat.T * 257
        return {"photometric": "palette", "colormap": colormap, **description}
    return {"photometric": "minisblack", **description}


def predict_large_tiff(model: torch.nn.Module, stats: ChannelStats, classes: ClassTable,
                       path: str | Path, out_path: str | Path, *, tile: int | None = None,
                       overlap: float = DEFAULT_OVERLAP, batch_size: int = DEFAULT_BATCH_SIZE,
                       out_tile: int = LABEL_TIFF_TILE,
                       max_pixels: int | None = None,
                       preview: Callable[[np.ndarray, np.ndarray], None] | None = None,
                       show_progress: bool = True) -> None:
    """Predict a large TIFF band by band into a tiled, zlib-compressed BigTIFF of labels.

    Args:
        model: a :class:`~unetseg.model.UNet` in eval mode.
        stats: the model's normalisation.
        classes: the model's class table; labels are written in its encoding
            (:func:`label_tiff_options`).
        tile, overlap, batch_size: the tiling; :meth:`~unetseg.infer.engine.ImagePredictor.
            tiling` gives the one of in-memory prediction, and with it the same labels.
        out_path: the label TIFF to write (atomically).
        out_tile: side of the output file's TIFF tiles.
        max_pixels: largest image accepted (see :class:`TiffBandReader`).
        preview: called once at the end with a decimated (C, h, w) image and (h, w) class ids
            whose longer side is at most 2048 pixels.
    """
    cfg = model_config(model)
    with TiffBandReader(path, max_pixels=max_pixels) as reader:
        if reader.channels != cfg.in_channels:
            raise UserError(f"{path}: the model takes {cfg.in_channels}-channel images but this"
                            f" one has {reader.channels}; convert it")
        plan = plan_windows(cfg.padding, cfg.depth, reader.height, reader.width, tile=tile,
                            overlap=overlap)
        thumbnail = _Thumbnail(reader.height, reader.width) if preview is not None else None
        bands = _label_bands(reader, model, plan, stats, classes, batch_size=batch_size,
                             thumbnail=thumbnail, show_progress=show_progress)
        _write_label_tiff(out_path, bands, reader.height, reader.width, classes, out_tile)
    if preview is not None and thumbnail is not None:
        preview(*thumbnail.result())


def _label_bands(reader: TiffBandReader, model: torch.nn.Module, plan: WindowPlan,
                 stats: ChannelStats, classes: ClassTable, *, batch_size: int,
                 thumbnail: _Thumbnail | None, show_progress: bool
                 ) -> Iterator[tuple[int, np.ndarray]]:
    """``(top, label rows)`` in the table's encoding: (rows, W) values or (rows, W, 3) colours."""
    param = next(model.parameters())

    @torch.inference_mode()
    def predictor(batch: torch.Tensor) -> torch.Tensor:
        return model(batch.to(param.device, param.dtype))

    with progress(total=len(plan.ys) * len(plan.xs), desc=f"predict {reader.path.name}",
              unit="tile", disable=not show_progress) as bar:
        for top, ids, image_rows in stream_labels(reader, predictor, plan, stats,
                                                  batch_size=batch_size, device=param.device,
                                                  on_window=lambda: bar.update(1)):
            if thumbnail is not None:
                thumbnail.add(top, ids, image_rows)
            yield top, classes.decode(ids)


def _write_label_tiff(out_path: str | Path, bands: Iterator[tuple[int, np.ndarray]],
                      height: int, width: int, classes: ClassTable, out_tile: int) -> None:
    """Write label rows as they come into a tiled BigTIFF of ``out_tile`` tiles, atomically."""
    from unetseg.files import atomic_path

    sample = classes.decode(np.zeros((1, 1), np.int64))  # (1, 1) values or (1, 1, 3) colours
    with atomic_path(out_path) as tmp:
        tifffile.imwrite(tmp, label_tiles(bands, height, width, out_tile, sample.dtype),
                         shape=(height, width, *sample.shape[2:]), dtype=sample.dtype,
                         tile=(out_tile, out_tile), bigtiff=True, compression="zlib",
                         **label_tiff_options(classes))
