"""Prediction of volumes of any size: a 3D sliding window with Gaussian blending, streamed slab
by slab along the slowest axis.

The windows are placed over the whole volume as in 2D (:func:`~unetseg.infer.tiling.tile_starts`
on each axis) and run in order of their first slice. A slice is finished once no window left
to run reaches it; :func:`stream_volume_logits` hands finished slices on at once and forgets
them, so it holds the blended sums of one window's depth plus one stride of slices, and reads
the input one window depth at a time, whatever the volume's depth. The result does not depend
on the streaming: the same windows, in the same batches, are summed in the same order as over
the whole volume (:func:`sliding_window_volume_logits`), so the two agree to the last bit.

A *predictor* maps ``(B, C, d, h, w)`` to logits ``(B, K, d, h, w)`` (a same-padding 3D network;
a 2D network runs a volume slice by slice instead, :func:`slice_by_slice_logits`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from unetseg.data.normalize import ChannelStats, normalize
from unetseg.errors import UserError
from unetseg.infer.blending import MIN_WEIGHT
from unetseg.infer.engine import ImagePredictor
from unetseg.infer.tiling import max_stride, tile_starts
from unetseg.model import model_config

Predictor = Callable[[torch.Tensor], torch.Tensor]
SlabReader = Callable[[int, int], torch.Tensor]
"""``read(z0, z1)`` -> the input slices ``[z0, z1)`` as ``(C, z1 - z0, H, W)``."""
BatchCallback = Callable[[int, int], None]
VOLUME_OVERLAP = 0.5
"""Overlap of neighbouring 3D windows, a fraction of each side, where none is given."""


def gaussian_weight_nd(tile: Sequence[int], *, sigma_scale: float = 0.125,
                       min_weight: float = MIN_WEIGHT, dtype: torch.dtype = torch.float32
                       ) -> torch.Tensor:
    """A separable Gaussian over a window of shape ``tile``, peak 1, never below
    ``min_weight``; sd ``sigma_scale * side`` along each axis (nnU-Net's 1/8). In 2D it is
    :func:`~unetseg.infer.blending.gaussian_weight`."""
    weight = torch.ones((), dtype=torch.float64)
    for axis, side in enumerate(tile):
        x = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
        g = torch.exp(-0.5 * (x / (sigma_scale * side)) ** 2)
        shape = [1] * len(tile)
        shape[axis] = side
        weight = weight * g.reshape(shape)
    return (weight / weight.max()).clamp_min(min_weight).to(dtype)


def volume_windows(shape: Sequence[int], tile: Sequence[int], overlap: float
                   ) -> list[tuple[slice, slice, slice]]:
    """The ``(z, y, x)`` slices of overlapping windows covering a volume of ``shape``
    ``(D, H, W)``, in order of their first slice (then rows, then columns). A tile side larger
    than the volume shrinks to it."""
    sides = [min(t, s) for t, s in zip(tile, shape, strict=True)]
    starts = [tile_starts(s, t, overlap) for s, t in zip(shape, sides, strict=True)]
    return [(slice(z, z + sides[0]), slice(y, y + sides[1]), slice(x, x + sides[2]))
            for z in starts[0] for y in starts[1] for x in starts[2]]


def stream_volume_logits(predictor: Predictor, read: SlabReader, shape: Sequence[int],
                         tile: Sequence[int], *, overlap: float = 0.5, batch_size: int = 2,
                         on_batch: BatchCallback | None = None
                         ) -> Iterator[tuple[int, torch.Tensor]]:
    """Blended logits of a volume of ``shape`` ``(D, H, W)``, slab by slab.

    Args:
        predictor: ``(B, C, d, h, w) -> (B, K, d, h, w)``.
        read: the input slices ``[z0, z1)`` as ``(C, z1 - z0, H, W)`` (normalised, on the
            predictor's device).
        tile: window ``(d, h, w)``.
        overlap: minimum overlap of neighbouring windows, a fraction of each side, in [0, 1).
        batch_size: windows per predictor call.
        on_batch: called after each batch with (windows done, windows in all).

    Yields:
        ``(z0, logits)``: float32 logits ``(K, n, H, W)`` of the finished slices
        ``[z0, z0 + n)``, in order, covering ``[0, D)`` once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for t in tile:
        max_stride(t, overlap)
    depth, height, width = (int(v) for v in shape)
    windows = volume_windows(shape, tile, overlap)
    sides = tuple(s.stop - s.start for s in windows[0])
    weight: torch.Tensor | None = None
    logit_sum: torch.Tensor | None = None  # (K, slices held, H, W), slices from `held`
    weight_sum: torch.Tensor | None = None
    held = 0  # first slice not yet handed on
    slab_z, slab = -1, torch.empty(0)
    done = 0
    for first in range(0, len(windows), batch_size):
        batch = windows[first:first + batch_size]
        inputs = []
        for zs, ys, xs in batch:
            if zs.start != slab_z:
                slab_z, slab = zs.start, read(zs.start, zs.stop)
            inputs.append(slab[:, :, ys, xs])
        logits = predictor(torch.stack(inputs)).float()
        if tuple(logits.shape[2:]) != sides:
            raise ValueError(f"the predictor returned {tuple(logits.shape)} for windows of"
                             f" {sides}; a volume needs a same-padding 3D network")
        if logit_sum is None:
            device = logits.device
            weight = gaussian_weight_nd(sides).to(device)
            logit_sum = torch.zeros(logits.shape[1], 0, height, width, device=device)
            weight_sum = torch.zeros(0, height, width, device=device)
        assert weight is not None and weight_sum is not None
        for (zs, ys, xs), window in zip(batch, logits, strict=True):
            grow = zs.stop - held - logit_sum.shape[1]
            if grow > 0:
                logit_sum = torch.cat([logit_sum, logit_sum.new_zeros(
                    logit_sum.shape[0], grow, height, width)], dim=1)
                weight_sum = torch.cat([weight_sum, weight_sum.new_zeros(grow, height, width)])
            local = slice(zs.start - held, zs.stop - held)
            logit_sum[:, local, ys, xs] += window * weight
            weight_sum[local, ys, xs] += weight
        done += len(batch)
        if on_batch is not None:
            on_batch(done, len(windows))
        finished = (windows[done][0].start if done < len(windows) else depth) - held
        if finished > 0:
            yield held, logit_sum[:, :finished] / weight_sum[:finished]
            logit_sum, weight_sum = logit_sum[:, finished:], weight_sum[finished:]
            held += finished


def sliding_window_volume_logits(predictor: Predictor, volume: torch.Tensor,
                                 tile: Sequence[int], *, overlap: float = 0.5,
                                 batch_size: int = 2, on_batch: BatchCallback | None = None
                                 ) -> torch.Tensor:
    """Blended logits ``(K, D, H, W)`` of a whole volume ``(C, D, H, W)`` held in memory
    (:func:`stream_volume_logits` reading from it)."""
    if volume.ndim != 4:
        raise ValueError(f"volume must be (C, D, H, W), got {tuple(volume.shape)}")
    slabs = [logits for _, logits in stream_volume_logits(
        predictor, lambda z0, z1: volume[:, z0:z1], volume.shape[1:], tile, overlap=overlap,
        batch_size=batch_size, on_batch=on_batch)]
    return torch.cat(slabs, dim=1)


def slice_by_slice_logits(predict_slice: Callable[[torch.Tensor], torch.Tensor],
                          volume: torch.Tensor) -> torch.Tensor:
    """Logits ``(K, D, H, W)`` of a 2D model run on each slice ``(C, H, W)`` of ``volume``
    ``(C, D, H, W)``: the baseline every 3D result is compared with (and the usual choice for
    EM stacks whose slices are far apart)."""
    return torch.stack([predict_slice(volume[:, z]) for z in range(volume.shape[1])], dim=1)


def plan_volume_tile(shape: Sequence[int], multiple: Sequence[int], *,
                     max_voxels: int = 128**3) -> tuple[int, int, int]:
    """A window ``(d, h, w)`` for a volume of ``shape``: the whole volume when it holds at most
    ``max_voxels``, else each side shrunk in proportion, each a multiple of the network's
    ``multiple`` along it (at least one multiple)."""
    shape = [int(v) for v in shape]
    scale = min(1.0, (max_voxels / math.prod(shape)) ** (1 / 3))
    tile = []
    for side, m in zip(shape, multiple, strict=True):
        want = max(m, int(side * scale) // m * m)
        tile.append(min(want, side) if side >= m else side)
    return tile[0], tile[1], tile[2]


def volume_to_float(array: np.ndarray) -> np.ndarray:
    """Voxels as float32, scaled as 2D images are (uint8 / 255, uint16 / 65535) so that a 2D
    model reads a stack's slices as it read its training images; signed integers (CT in
    Hounsfield units) and floats as they are."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255)
    if array.dtype == np.uint16:
        return array.astype(np.float32) / np.float32(65535)
    return array.astype(np.float32)


def normalize_volume(x: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    """:func:`~unetseg.data.normalize.normalize` of a volume ``(C, D, H, W)``: per channel, the
    ``image`` scheme over the whole volume."""
    c, d, h, w = x.shape
    return normalize(x.reshape(c, d * h, w), stats).reshape(c, d, h, w)


@torch.inference_mode()
def predict_volume_logits(model: nn.Module, stats: ChannelStats, volume: np.ndarray, *,
                          tile: Sequence[int] | None = None, overlap: float | None = None,
                          batch_size: int = 2, on_batch: BatchCallback | None = None
                          ) -> torch.Tensor:
    """Logits ``(K, D, H, W)`` (CPU, float32) of a volume ``(C, D, H, W)`` in its read scale
    (:func:`volume_to_float`).

    A 3D network (``spatial_dims=3``) runs the 3D sliding window (``tile`` ``(d, h, w)``, or
    :func:`plan_volume_tile`; ``overlap`` None is :data:`VOLUME_OVERLAP`, 0 no overlap); a 2D
    network predicts slice by slice, each slice normalised and tiled as a 2D image is
    (:class:`~unetseg.infer.engine.ImagePredictor`).
    """
    device = next(model.parameters()).device
    config = model_config(model)
    if volume.shape[0] != config.in_channels:
        raise UserError(f"the volume has {volume.shape[0]} channel(s); the model takes"
                        f" {config.in_channels}")
    if config.spatial_dims == 2:
        predictor = ImagePredictor(model, stats, batch_size=batch_size)

        def one_slice(image: torch.Tensor) -> torch.Tensor:
            logits = predictor.logits(image.numpy())
            if on_batch is not None:
                on_batch(len(done) + 1, volume.shape[1])
            done.append(None)
            return logits

        done: list[None] = []
        return slice_by_slice_logits(one_slice, torch.as_tensor(volume))
    multiple = getattr(model, "size_multiple", (2**config.depth,) * 3)
    return window_volume_logits(model, stats, volume, multiple, tile=tile, overlap=overlap,
                                batch_size=batch_size, on_batch=on_batch, device=device)


@torch.inference_mode()
def window_volume_logits(predictor: Predictor, stats: ChannelStats, volume: np.ndarray,
                         multiple: Sequence[int], *, tile: Sequence[int] | None = None,
                         overlap: float | None = None, batch_size: int = 2,
                         on_batch: BatchCallback | None = None,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits ``(K, D, H, W)`` (CPU, float32) of a volume ``(C, D, H, W)`` in its read scale
    by any window predictor ``(B, C, d, h, w) -> (B, K, d, h, w)`` (a 3D network, or an
    exported graph run by ONNX Runtime): normalised over the whole volume, then the 3D sliding
    window of ``tile`` (or :func:`plan_volume_tile` on the network's size ``multiple`` per
    axis) overlapping by ``overlap`` (None: :data:`VOLUME_OVERLAP`)."""
    x = normalize_volume(torch.as_tensor(volume, dtype=torch.float32), stats).to(device)
    window = tuple(tile) if tile is not None else plan_volume_tile(x.shape[1:], multiple)
    return sliding_window_volume_logits(
        predictor, x, window, overlap=VOLUME_OVERLAP if overlap is None else overlap,
        batch_size=batch_size, on_batch=on_batch).cpu()
