"""Input/output sizes of U-Nets.

A valid-padding U-Net of depth ``d`` trims 4 pixels per double conv and halves at each of its
``d`` poolings, so only some input sizes are legal (every pooling must see an even size) and the
output is smaller than the input. Same-padding U-Nets map any size to itself.
All sizes are one side in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from unetseg.errors import UserError

Plan = Sequence[Sequence[int]]
"""Per level, one size per axis: ``((1, 3, 3), (3, 3, 3), ...)``."""


def valid_output_size(input_size: int, depth: int) -> int:
    """Output side of a valid-padding U-Net for ``input_size``; :class:`UserError` if illegal.

    The paper's network (depth 4) maps 572 to 388.
    """
    s = input_size
    for level in range(depth):
        s -= 4
        if s <= 0 or s % 2:
            legal = nearest_legal_input_size(input_size, depth)
            raise UserError(
                f"input size {input_size} is not legal for a valid-padding U-Net of depth {depth}"
                f" (the pooling at level {level + 1} would see an odd or empty size {s});"
                f" use {legal} instead"
            )
        s //= 2
    s -= 4
    for _ in range(depth):
        s = 2 * s - 4
    if s <= 0:
        raise UserError(
            f"input size {input_size} is too small for a valid-padding U-Net of depth {depth};"
            f" the smallest legal size is {min_legal_input_size(depth)}"
        )
    return s


def is_legal_input_size(input_size: int, depth: int) -> bool:
    """Whether a valid-padding U-Net of ``depth`` accepts ``input_size``."""
    try:
        valid_output_size(input_size, depth)
    except UserError:
        return False
    return True


def input_size_for_output(output_size: int, depth: int) -> int:
    """The input side whose valid-padding output is at least ``output_size`` (smallest such)."""
    s = max(1, output_size)
    for _ in range(depth):
        s = -(-(s + 4) // 2)
    s += 4
    for _ in range(depth):
        s = 2 * s + 4
    return s


def min_legal_input_size(depth: int) -> int:
    """The smallest legal input side (188 at depth 4)."""
    return input_size_for_output(1, depth)


def nearest_legal_input_size(input_size: int, depth: int) -> int:
    """The smallest legal input side that is >= ``input_size``."""
    step = 2**depth
    s = max(input_size, min_legal_input_size(depth))
    base = min_legal_input_size(depth)
    return base + -(-(s - base) // step) * step


def legal_input_sizes(depth: int, up_to: int) -> list[int]:
    """All legal input sides up to ``up_to`` (they are ``min + k * 2**depth``)."""
    return list(range(min_legal_input_size(depth), up_to + 1, 2**depth))


def valid_margin(depth: int) -> int:
    """Pixels lost on each side by a valid-padding U-Net: (input - output) / 2 (92 at depth 4)."""
    s = min_legal_input_size(depth)
    return (s - valid_output_size(s, depth)) // 2


def output_size(input_size: int, depth: int, padding: str) -> int:
    """Output side for ``input_size`` under either padding."""
    return input_size if padding == "same" else valid_output_size(input_size, depth)


def receptive_radius(depth: int, up: str) -> int:
    """The farthest an input pixel can lie from an output pixel it changes, along one side, in a
    same-padding U-Net with local normalisation (instance and group norm see the whole window):
    :func:`valid_margin` plus, through the poolings' phase, ``2**depth - 1`` (transposed
    convolutions, nearest upsampling) or twice that (bilinear upsampling also reads a neighbour
    at every level). 23 at depth 2 with transposed convolutions, 107 at depth 4."""
    extra = 2**depth - 1
    return valid_margin(depth) + (2 * extra if up == "bilinear" else extra)


def _valid_axis(input_size: int, kernels: Sequence[int], pools: Sequence[int]
                ) -> tuple[int, str]:
    """(output side, "") or (0, why not) along one axis; see :func:`valid_output_size_axis`."""
    depth = len(pools)
    if len(kernels) != depth + 1:
        raise ValueError(f"{len(kernels)} kernel sizes for depth {depth}; need {depth + 1}")
    s = input_size
    for level, (k, p) in enumerate(zip(kernels, pools, strict=False)):
        s -= 2 * (k - 1)
        if s <= 0 or s % p:
            return 0, f"the pooling at level {level + 1} would see {s}, not a multiple of {p}"
        s //= p
    s -= 2 * (kernels[depth] - 1)
    for k, p in zip(reversed(kernels[:depth]), reversed(pools), strict=True):
        s = s * p - 2 * (k - 1)
    return (s, "") if s > 0 else (0, "nothing would be left")


def valid_output_size_axis(input_size: int, kernels: Sequence[int], pools: Sequence[int]
                           ) -> int:
    """Output side along one axis of a valid-padding U-Net whose levels use ``kernels``
    (depth + 1 conv kernel sizes along this axis, finest level first) and ``pools`` (depth
    pooling factors). With kernels of 3 and pools of 2 it is :func:`valid_output_size`.

    Raises:
        UserError: a pooling would see a size it does not divide, or nothing is left.
    """
    size, why = _valid_axis(input_size, kernels, pools)
    if not size:
        legal = nearest_legal_input_size_axis(input_size, kernels, pools)
        raise UserError(f"input size {input_size} is not legal for this valid-padding U-Net"
                        f" ({why}); use {legal}")
    return size


def nearest_legal_input_size_axis(input_size: int, kernels: Sequence[int],
                                  pools: Sequence[int]) -> int:
    """The smallest legal input side >= ``input_size`` for :func:`valid_output_size_axis`."""
    s = max(1, input_size)
    while not _valid_axis(s, kernels, pools)[0]:
        s += 1
    return s


def size_multiple(depth: int, spatial_dims: int = 2,
                  pool_sizes: Sequence[Sequence[int]] | None = None) -> tuple[int, ...]:
    """Per axis (slowest first), what a same-padding input is padded to a multiple of: the
    product of the ``depth`` poolings along it (``pool_sizes``, one size per axis each), or
    ``2**depth`` when every pooling halves every axis. ``(4, 16, 16)`` for a depth-4 plan
    that pools z at two levels only."""
    if pool_sizes is None:
        return (2**depth,) * spatial_dims
    return tuple(math.prod(int(level[a]) for level in pool_sizes) for a in range(spatial_dims))


def anisotropic_plan(spacing: Sequence[float], depth: int, *, ratio: float = 2.0
                     ) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Per-level conv kernels and poolings for data whose pixels are not cubes (nnU-Net's rule
    of thumb, Isensee et al. 2021): an axis whose current spacing is more than ``ratio`` times
    the finest is neither convolved across (kernel 1) nor pooled, until the pooling of the
    finer axes has brought their spacing within ``ratio`` of it.

    Args:
        spacing: size of a pixel along each axis (``(z, y, x)``, any unit).
        depth: number of poolings.

    Returns:
        ``(kernel_sizes, pool_sizes)``: ``depth + 1`` and ``depth`` tuples of one size per
        axis, as :class:`~unetseg.model.UNet` takes them. Isotropic spacing gives 3 and 2
        everywhere; ``(4, 1, 1)`` starts with ``(1, 3, 3)`` and ``(1, 2, 2)``.
    """
    current = [float(v) for v in spacing]
    if not current or min(current) <= 0:
        raise ValueError(f"spacing {tuple(spacing)}: give a positive size per axis")
    kernels: list[tuple[int, ...]] = []
    pools: list[tuple[int, ...]] = []
    for level in range(depth + 1):
        finest = min(current)
        fine = [c <= ratio * finest for c in current]
        kernels.append(tuple(3 if f else 1 for f in fine))
        if level < depth:
            pools.append(tuple(2 if f else 1 for f in fine))
            current = [c * p for c, p in zip(current, pools[-1], strict=True)]
    return tuple(kernels), tuple(pools)


def valid_margin_axis(kernels: Sequence[int], pools: Sequence[int]) -> int:
    """Voxels lost on each side along one axis by a valid-padding U-Net of per-level
    ``kernels`` and ``pools`` (:func:`valid_output_size_axis`): ``(input - output) / 2``, the
    same for every legal input. With kernels of 3 and pools of 2 it is :func:`valid_margin`."""
    s = nearest_legal_input_size_axis(1, kernels, pools)
    return (s - valid_output_size_axis(s, kernels, pools)) // 2


def valid_input_size_axis(output_size: int, kernels: Sequence[int], pools: Sequence[int]
                          ) -> int:
    """The smallest legal input side along one axis whose valid-padding output is at least
    ``output_size`` (it is ``output_size + 2 * margin`` where that is legal)."""
    margin = valid_margin_axis(kernels, pools)
    return nearest_legal_input_size_axis(max(1, output_size) + 2 * margin, kernels, pools)


def level_plan(sizes: Plan | None, levels: int, dims: int, default: int, name: str
               ) -> tuple[tuple[int, ...], ...]:
    """``sizes`` checked (``levels`` entries of ``dims`` positive ints), or ``default``
    everywhere."""
    if sizes is None:
        return tuple((default,) * dims for _ in range(levels))
    plan = tuple(tuple(int(v) for v in level) for level in sizes)
    if len(plan) != levels or any(len(level) != dims or min(level) < 1 for level in plan):
        raise ValueError(f"{name} {plan}: give {levels} entries of {dims} positive sizes")
    return plan


def network_plan(depth: int, spatial_dims: int, kernel_sizes: Plan | None,
                 pool_sizes: Plan | None, *, same: bool = True
                 ) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """``(kernels, pools)`` of a network: ``depth + 1`` conv kernels and ``depth`` poolings,
    one size per axis each (3 and 2 where None), checked.

    Raises:
        ValueError: plans of the wrong length, or even kernels under same padding.
    """
    kernels = level_plan(kernel_sizes, depth + 1, spatial_dims, 3, "kernel_sizes")
    pools = level_plan(pool_sizes, depth, spatial_dims, 2, "pool_sizes")
    if same and any(k % 2 == 0 for level in kernels for k in level):
        raise ValueError(f"kernel_sizes {kernels}: same padding needs odd kernels")
    return kernels, pools
