"""Prediction of volumes of any size: a 3D sliding window with Gaussian blending, streamed slab
by slab along the slowest axis.

The windows are placed over the whole volume as in 2D (:func:`~unetseg.infer.tiling.tile_starts`
on each axis) and run in order of their first slice, batched only with windows of the same first
slice. A slice is finished once no window left to run reaches it; :func:`stream_volume_logits`
hands finished slices on at once and forgets them, so it holds the blended sums of one window's
depth plus one stride of slices, and reads the input one window depth at a time, whatever the
volume's depth. The result does not depend on the streaming: the same windows, in the same
batches, are summed in the same order as over the whole volume
(:func:`sliding_window_volume_logits`), so the two agree to the last bit.

A valid-padding 3D U-Net runs the paper's overlap-tile strategy instead
(:func:`stream_valid_volume_logits`): the volume mirrored at its borders, abutting output blocks,
one block of slices at a time. :func:`predict_volume_slabs` picks the strategy from the model,
normalises slab by slab and is what ``predict`` runs on volume files, which are read
(:func:`~unetseg.data.volumes.open_volume`) and written
(:func:`~unetseg.data.volumes.write_volume_slabs`) slab by slab as well.

A *predictor* maps ``(B, C, d, h, w)`` to logits ``(B, K, d, h, w)`` (a same-padding 3D network;
a 2D network runs a volume slice by slice instead, :func:`slice_by_slice_logits`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from unetseg.data.normalize import ChannelStats, channel_stats, normalize
from unetseg.errors import UserError
from unetseg.infer.blending import MIN_WEIGHT
from unetseg.infer.engine import ImagePredictor
from unetseg.infer.tiling import max_stride, mirror_pad, reflect_indices, tile_starts
from unetseg.model import model_config
from unetseg.model.geometry import valid_input_size_axis, valid_margin_axis

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
        batch_size: windows per predictor call; a batch holds windows of one first slice
            only, so the slices above it are finished and handed on before the next read.
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
    batches = [group[i:i + batch_size]
               for group in _by_first_slice(windows) for i in range(0, len(group), batch_size)]
    weight: torch.Tensor | None = None
    logit_sum: torch.Tensor | None = None  # (K, slices held, H, W), slices from `held`
    weight_sum: torch.Tensor | None = None
    held = 0  # first slice not yet handed on
    done = 0
    for number, batch in enumerate(batches):
        zs = batch[0][0]
        if number == 0 or zs != batches[number - 1][0][0]:
            slab = read(zs.start, zs.stop)
        logits = predictor(torch.stack([slab[:, :, ys, xs] for _, ys, xs in batch])).float()
        if tuple(logits.shape[2:]) != sides:
            raise ValueError(f"the predictor returned {tuple(logits.shape)} for windows of"
                             f" {sides}; a volume needs a same-padding 3D network")
        if logit_sum is None:
            device = logits.device
            weight = gaussian_weight_nd(sides).to(device)
            logit_sum = torch.zeros(logits.shape[1], 0, height, width, device=device)
            weight_sum = torch.zeros(0, height, width, device=device)
        assert weight is not None and weight_sum is not None
        grow = zs.stop - held - logit_sum.shape[1]
        if grow > 0:
            logit_sum = torch.cat([logit_sum, logit_sum.new_zeros(
                logit_sum.shape[0], grow, height, width)], dim=1)
            weight_sum = torch.cat([weight_sum, weight_sum.new_zeros(grow, height, width)])
        local = slice(zs.start - held, zs.stop - held)
        for (_, ys, xs), window in zip(batch, logits, strict=True):
            logit_sum[:, local, ys, xs] += window * weight
            weight_sum[local, ys, xs] += weight
        done += len(batch)
        if on_batch is not None:
            on_batch(done, len(windows))
        finished = (batches[number + 1][0][0].start if number + 1 < len(batches)
                    else depth) - held
        if finished > 0:
            yield held, logit_sum[:, :finished] / weight_sum[:finished]
            logit_sum, weight_sum = logit_sum[:, finished:], weight_sum[finished:]
            held += finished


def _by_first_slice(windows: list[tuple[slice, slice, slice]]
                    ) -> list[list[tuple[slice, slice, slice]]]:
    """The windows in groups of one first slice, in order (they come sorted by it)."""
    groups: list[list[tuple[slice, slice, slice]]] = []
    for window in windows:
        if groups and groups[-1][0][0] == window[0]:
            groups[-1].append(window)
        else:
            groups.append([window])
    return groups


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


def stream_channel_stats(read: Callable[[int, int], np.ndarray], depth: int, slab: int
                         ) -> ChannelStats:
    """Mean and sd per channel of a whole volume of ``depth`` slices, read ``slab`` slices at
    a time (``read(z0, z1)`` -> ``(C, z1 - z0, H, W)``): one pass, float64 sums merged slab by
    slab (:func:`~unetseg.data.normalize.channel_stats`), equal to the statistics of the
    volume held whole. The ``image`` scheme's per-volume z-score of a streamed volume."""
    if slab < 1:
        raise ValueError(f"slab must be >= 1 slice, got {slab}")
    return channel_stats(read(z0, min(z0 + slab, depth)) for z0 in range(0, depth, slab))


@dataclass(frozen=True)
class ValidVolumePlan:
    """The overlap-tile windows of a valid-padding 3D U-Net, per axis ``(z, y, x)``.

    Attributes:
        out_tile: output block each window fills, a multiple of the network's pooling product
            along the axis, so every window sits on the pooling grid of one pass over the
            whole mirrored volume.
        in_tile: input window (legal for the network) giving at least ``out_tile``.
        margin: voxels the network loses on each side (the mirror padding before the volume).
        net_out: what the network returns for ``in_tile`` (``out_tile`` or a little more; the
            rest is dropped).
    """

    out_tile: tuple[int, int, int]
    in_tile: tuple[int, int, int]
    margin: tuple[int, int, int]
    net_out: tuple[int, int, int]

    def padded(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Side along each axis of the mirrored volume the windows tile: the margin, the
        volume, and what the last window reaches past it."""
        sides = [(-(-int(n) // o) - 1) * o + i
                 for n, o, i in zip(shape, self.out_tile, self.in_tile, strict=True)]
        return sides[0], sides[1], sides[2]


def plan_valid_volume(kernels: Sequence[Sequence[int]], pools: Sequence[Sequence[int]],
                      shape: Sequence[int], tile: Sequence[int] | None = None, *,
                      max_voxels: int = 128**3) -> ValidVolumePlan:
    """Windows of a valid-padding U-Net of per-level ``kernels`` and ``pools`` (one size per
    axis, :class:`~unetseg.model.UNet`'s ``kernels`` and ``pools``) over a volume of
    ``shape``: output blocks as large as the volume, shrunk one pooling step at a time (the
    axis of the largest input first) until each input side is at most ``tile``'s, or, without
    ``tile``, the window holds at most ``max_voxels``."""
    steps, margins, outs = [], [], []
    for axis, size in enumerate(shape):
        ks, ps = [k[axis] for k in kernels], [p[axis] for p in pools]
        step = math.prod(ps)
        steps.append(step)
        margins.append(valid_margin_axis(ks, ps))
        outs.append(-(-int(size) // step) * step)

    def inputs() -> list[int]:
        return [valid_input_size_axis(o, [k[a] for k in kernels], [p[a] for p in pools])
                for a, o in enumerate(outs)]

    while True:
        ins = inputs()
        if tile is not None:
            over = [a for a in range(3) if ins[a] > tile[a] and outs[a] > steps[a]]
        else:
            over = ([a for a in range(3) if outs[a] > steps[a]]
                    if math.prod(ins) > max_voxels else [])
        if not over:
            break
        axis = max(over, key=lambda a: ins[a])
        outs[axis] -= steps[axis]
    nets = [i - 2 * m for i, m in zip(ins, margins, strict=True)]
    return ValidVolumePlan((outs[0], outs[1], outs[2]), (ins[0], ins[1], ins[2]),
                           (margins[0], margins[1], margins[2]), (nets[0], nets[1], nets[2]))


def stream_valid_volume_logits(predictor: Predictor, read: SlabReader, shape: Sequence[int],
                               plan: ValidVolumePlan, *, batch_size: int = 2,
                               on_batch: BatchCallback | None = None
                               ) -> Iterator[tuple[int, torch.Tensor]]:
    """The U-Net paper's overlap-tile strategy in 3D, slab by slab: the volume is mirrored by
    each axis's margin before it (and past its end as far as the last window reaches;
    :func:`~unetseg.infer.tiling.reflect_indices`), and abutting output blocks of
    ``plan.out_tile`` are predicted from windows of ``plan.in_tile``, so the logits equal
    those of one pass over the whole mirrored volume (for a translation-equivariant network:
    no instance or group norm, no bilinear upsampling; see
    :func:`~unetseg.infer.predict.overlap_tile_logits`).

    Only the input slices of one block's windows (``in_tile[0]``, mirrored in y and x) and one
    block's logits are held at a time; windows of one block are batched together.

    Args:
        predictor: ``(B, C, *in_tile) -> (B, K, *net_out)``.
        read: the input slices ``[z0, z1)`` as ``(C, z1 - z0, H, W)`` (normalised, on the
            predictor's device).
        shape: ``(D, H, W)``.
        plan: :func:`plan_valid_volume`.

    Yields:
        ``(z0, logits)``: float32 ``(K, n, H, W)`` of slices ``[z0, z0 + n)``, in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    depth, height, width = (int(v) for v in shape)
    (oz, oy, ox), (iz, iy, ix) = plan.out_tile, plan.in_tile
    (mz, my, mx) = plan.margin
    pz, py, px = plan.padded(shape)
    z_source = reflect_indices(depth, mz, pz - mz - depth)
    origins = [(y, x) for y in range(0, height, oy) for x in range(0, width, ox)]
    blocks = -(-depth // oz)
    done = 0
    for z0 in range(0, depth, oz):
        wanted = z_source[z0:z0 + iz]
        low, high = int(wanted.min()), int(wanted.max()) + 1
        slab = read(low, high)
        slab = slab.index_select(1, (wanted - low).to(slab.device))
        slab = mirror_pad(slab, my, py - my - height, mx, px - mx - width)
        n = min(oz, depth - z0)
        block: torch.Tensor | None = None
        for first in range(0, len(origins), batch_size):
            batch = origins[first:first + batch_size]
            logits = predictor(torch.stack([slab[:, :, y:y + iy, x:x + ix]
                                            for y, x in batch])).float()
            if tuple(logits.shape[2:]) != plan.net_out:
                raise ValueError(f"the predictor returned {tuple(logits.shape)} for windows of"
                                 f" {plan.in_tile}; expected {plan.net_out} from a"
                                 " valid-padding 3D U-Net")
            if block is None:
                block = logits.new_zeros(logits.shape[1], n, height, width)
            for (y, x), out in zip(batch, logits, strict=True):
                h, w = min(oy, height - y), min(ox, width - x)
                block[:, :, y:y + h, x:x + w] = out[:, :n, :h, :w]
            done += len(batch)
            if on_batch is not None:
                on_batch(done, blocks * len(origins))
        assert block is not None
        yield z0, block


@torch.inference_mode()
def predict_volume_slabs(model: nn.Module, stats: ChannelStats,
                         read: Callable[[int, int], np.ndarray], shape: Sequence[int], *,
                         tile: Sequence[int] | None = None, overlap: float = 0.5,
                         batch_size: int = 2, on_batch: BatchCallback | None = None
                         ) -> Iterator[tuple[int, torch.Tensor]]:
    """Logits of a volume of ``shape`` ``(D, H, W)`` read slab by slab, handed on slab by slab
    in z order: ``(z0, logits)`` with float32 CPU logits ``(K, n, H, W)``.

    ``read(z0, z1)`` gives the raw slices ``(C, z1 - z0, H, W)`` in the file's type (e.g.
    :meth:`~unetseg.data.volumes.VolumeSource.read`); they are scaled by
    :func:`volume_to_float` and normalised slab by slab; the ``image`` scheme's per-volume
    statistics come from a first pass (:func:`stream_channel_stats`).

    A same-padding 3D network runs the blended sliding window (:func:`stream_volume_logits`;
    ``tile`` ``(d, h, w)``, or :func:`plan_volume_tile`), a valid-padding one the overlap-tile
    strategy (:func:`stream_valid_volume_logits`; ``tile`` bounds the input window, or
    :func:`plan_valid_volume` plans it), a 2D network each slice as a 2D image
    (:class:`~unetseg.infer.engine.ImagePredictor`). Input slices are read at most one window
    depth at a time and at most a window depth of logits is held, so memory grows with the
    window and the slice size, not with D.
    """
    device = next(model.parameters()).device
    config = model_config(model)
    depth = int(shape[0])
    if config.spatial_dims == 2:
        predictor = ImagePredictor(model, stats, batch_size=batch_size)
        for z in range(depth):
            yield z, predictor.logits(volume_to_float(read(z, z + 1))[:, 0])[:, None].cpu()
            if on_batch is not None:
                on_batch(z + 1, depth)
        return
    valid = config.padding == "valid"
    if valid:
        plan = plan_valid_volume(model.kernels, model.pools, shape, tile)  # type: ignore[arg-type]
        slab_depth = plan.in_tile[0]
    else:
        multiple = getattr(model, "size_multiple", (2**config.depth,) * 3)
        window = tuple(tile) if tile is not None else plan_volume_tile(shape, multiple)
        slab_depth = min(window[0], depth)

    def scaled(z0: int, z1: int) -> np.ndarray:
        return volume_to_float(read(z0, z1))

    if stats.scheme == "image":
        stats = stats.for_image(stream_channel_stats(scaled, depth, slab_depth))

    def normalised(z0: int, z1: int) -> torch.Tensor:
        return normalize_volume(torch.from_numpy(scaled(z0, z1)), stats).to(device)

    slabs = (stream_valid_volume_logits(model, normalised, shape, plan, batch_size=batch_size,
                                        on_batch=on_batch) if valid else
             stream_volume_logits(model, normalised, shape, window, overlap=overlap,
                                  batch_size=batch_size, on_batch=on_batch))
    for z0, logits in slabs:
        yield z0, logits.cpu()


def predict_volume_logits(model: nn.Module, stats: ChannelStats, volume: np.ndarray, *,
                          tile: Sequence[int] | None = None, overlap: float | None = None,
                          batch_size: int = 2, on_batch: BatchCallback | None = None
                          ) -> torch.Tensor:
    """Logits ``(K, D, H, W)`` (CPU, float32) of a volume ``(C, D, H, W)`` held in memory, in
    its file's type: :func:`predict_volume_slabs` reading from it (``overlap`` None is
    :data:`VOLUME_OVERLAP`, 0 no overlap)."""
    config = model_config(model)
    if volume.shape[0] != config.in_channels:
        raise UserError(f"the volume has {volume.shape[0]} channel(s); the model takes"
                        f" {config.in_channels}")
    return torch.cat([logits for _, logits in predict_volume_slabs(
        model, stats, lambda z0, z1: volume[:, z0:z1], volume.shape[1:], tile=tile,
        overlap=VOLUME_OVERLAP if overlap is None else overlap, batch_size=batch_size,
        on_batch=on_batch)], dim=1)


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
