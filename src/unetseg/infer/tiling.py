"""Where the windows of a tiled prediction go, and how an image is mirrored at its borders.

Pure functions over sizes and tensors; nothing here runs a model. All sizes are in pixels.
"""

from __future__ import annotations

import math

import torch

from unetseg.model.geometry import is_legal_input_size, nearest_legal_input_size, valid_margin

# Guards ``tile * (1 - overlap)`` against float error, so 10 * (1 - 0.7) gives a stride of 3.
_STRIDE_EPS = 1e-9


def max_stride(tile: int, overlap: float) -> int:
    """The largest whole stride allowed between windows of side ``tile`` that overlap by
    at least ``overlap`` (a fraction of ``tile``): ``floor(tile * (1 - overlap))``, at least 1.

    Raises:
        ValueError: if ``tile < 1`` or ``overlap`` is outside [0, 1).
    """
    if tile < 1:
        raise ValueError(f"tile must be a positive number of pixels, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(
            f"overlap must be a fraction in [0, 1), got {overlap}; 0.25 or 0.5 are usual values"
        )
    return max(1, math.floor(tile * (1.0 - overlap) + _STRIDE_EPS))


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Starts of windows of length ``tile`` that cover ``[0, size)``, spread evenly.

    There are ``n = ceil((size - tile) / max_stride) + 1`` windows whose starts are
    ``round(linspace(0, size - tile, n))`` (rounding halves up), so the first starts at 0, the
    last ends exactly at ``size`` and consecutive starts differ by at most
    :func:`max_stride` ``(tile, overlap)`` and at least 1.

    Args:
        size: length of the axis to cover.
        tile: window length; if ``size <= tile`` a single window starts at 0 (it is then
            longer than the axis, see :func:`iter_windows` for clipped windows).
        overlap: minimum overlap of neighbouring windows as a fraction of ``tile``, in [0, 1).

    Returns:
        The sorted, distinct window starts.

    Raises:
        ValueError: for ``size < 1``, ``tile < 1`` or ``overlap`` outside [0, 1).
    """
    stride = max_stride(tile, overlap)
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    span = size - tile
    if span <= 0:
        return [0]
    gaps = -(-span // stride)  # n - 1 = ceil(span / stride) >= 1
    # round(i * span / gaps) with halves rounded up, in exact integer arithmetic
    return [(2 * i * span + gaps) // (2 * gaps) for i in range(gaps + 1)]


def iter_windows(
    height: int, width: int, tile_h: int, tile_w: int, overlap: float
) -> list[tuple[slice, slice]]:
    """The (rows, cols) slices of overlapping windows covering a ``height`` x ``width`` image.

    A tile side larger than the image shrinks to the image's side, so every window lies inside
    the image and has the shape ``(min(tile_h, height), min(tile_w, width))``.

    Args:
        height: image rows.
        width: image columns.
        tile_h: window rows.
        tile_w: window columns.
        overlap: minimum overlap of neighbouring windows, a fraction in [0, 1).

    Returns:
        Row-major list of ``(slice(y, y + th), slice(x, x + tw))``.
    """
    th, tw = min(tile_h, height), min(tile_w, width)
    ys = tile_starts(height, th, overlap)
    xs = tile_starts(width, tw, overlap)
    return [(slice(y, y + th), slice(x, x + tw)) for y in ys for x in xs]


def reflect_indices(size: int, before: int, after: int, device: torch.device | None = None
                    ) -> torch.Tensor:
    """Source indices that mirror an axis of length ``size`` by ``before``/``after`` pixels.

    The mirror excludes the edge pixel (``reflect`` mode: ``a b c`` -> ``c b | a b c | b a``)
    and repeats as often as needed, so pads longer than the axis are allowed (the result equals
    reflecting again and again, like ``numpy.pad(mode="reflect")``). An axis of length 1 cannot
    be reflected and is replicated instead.

    Returns:
        int64 tensor of shape ``(before + size + after,)`` with values in ``[0, size)``.
    """
    if size < 1 or before < 0 or after < 0:
        raise ValueError(f"need size >= 1 and pads >= 0, got {size}, {before}, {after}")
    idx = torch.arange(-before, size + after, device=device)
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx < size, idx, period - idx)


def mirror_pad(image: torch.Tensor, top: int, bottom: int, left: int, right: int
               ) -> torch.Tensor:
    """Mirror-pad the last two axes of ``image`` (the U-Net paper's border extrapolation).

    Unlike ``torch.nn.functional.pad(mode="reflect")`` the pads may exceed the image size:
    the mirror repeats (see :func:`reflect_indices`).

    Shape:
        (..., H, W) -> (..., top + H + bottom, left + W + right)
    """
    h, w = image.shape[-2:]
    rows = reflect_indices(h, top, bottom, device=image.device)
    cols = reflect_indices(w, left, right, device=image.device)
    return image.index_select(-2, rows).index_select(-1, cols)


def overlap_tile_input_size(out_tile: int, depth: int) -> int:
    """The input window of a valid-padding U-Net that yields an ``out_tile`` output tile.

    ``out_tile`` must be a positive multiple of ``2**depth`` so that every window sits on the
    same pooling grid as a single pass over the whole image. The window is the smallest legal
    input that is at least ``out_tile + 2 * valid_margin(depth)``; for depth <= 2 that is exactly
    this sum, for depth >= 3 the legal sizes are 4 pixels off the pooling grid and the network
    computes 4 extra output rows/columns at the bottom/right, which the caller discards.

    Raises:
        ValueError: if ``out_tile`` is not a positive multiple of ``2**depth``; the message
            names the nearest ones.
    """
    step = 2**depth
    if out_tile < step or out_tile % step:
        below = max(step, out_tile // step * step)
        above = max(step, -(-out_tile // step) * step)
        hint = f"{below}" if below == above else f"{below} or {above}"
        raise ValueError(
            f"out_tile {out_tile} must be a positive multiple of 2**depth = {step} for a"
            f" valid-padding U-Net of depth {depth}; use {hint}"
        )
    margin = valid_margin(depth)
    in_tile = nearest_legal_input_size(out_tile + 2 * margin, depth)
    assert is_legal_input_size(in_tile, depth), (out_tile, depth, in_tile)
    assert in_tile - 2 * margin - out_tile < step, (out_tile, depth, in_tile)
    return in_tile
