"""Input/output sizes of U-Nets.

A valid-padding U-Net of depth ``d`` trims 4 pixels per double conv and halves at each of its
``d`` poolings, so only some input sizes are legal (every pooling must see an even size) and the
output is smaller than the input. Same-padding U-Nets map any size to itself.
All sizes are one side in pixels.
"""

from __future__ import annotations

from unetseg.errors import UserError


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
