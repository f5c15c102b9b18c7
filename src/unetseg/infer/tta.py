"""Test-time augmentation (TTA) as predictor wrappers.

:func:`tta_predictor` turns a predictor (any callable ``(B, C, h, w) -> (B, K, h', w')``) into
one that predicts every transformed copy of its input, maps each output back with the exact
inverse transform and returns the mean of the logits. The wrapped predictor is again a
predictor, so it composes with :func:`~unetseg.infer.predict.sliding_window_logits` and
:func:`~unetseg.infer.predict.overlap_tile_logits`: every tile is augmented on its own.

Modes (:func:`parse_tta`):

* ``"flip"``: identity, left-right, up-down and both flips (4 predictions).
* ``"d4"``: the 8 symmetries of the square (quarter turns, each with and without a flip).
* ``"rot:N"``: N rotations by ``k * 360 / N`` degrees, ``k = 0..N-1``. Multiples of 90 degrees
  are exact quarter turns; other angles resample input and output bilinearly about the tile
  centre, mirroring at the border (the U-Net paper averaged 7 rotated versions of the input for
  ISBI 2012, Ronneberger et al. 2015, Sec. 4).

Flips and quarter turns are pixel permutations, so their inverses are exact. A valid-padding
output is centred in its input window, so rotating it back about its own centre is right.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Predictor = Callable[[torch.Tensor], torch.Tensor]

TTA_MODES = ("flip", "d4", "rot:N")


@dataclass(frozen=True)
class Dihedral:
    """Flip the columns (if ``flip``), then turn by ``turns`` quarter turns
    (``torch.rot90(x, turns, dims=(-2, -1))``). Exact for every size."""

    turns: int = 0
    flip: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip:
            x = torch.flip(x, dims=(-1,))
        return torch.rot90(x, self.turns % 4, dims=(-2, -1)) if self.turns % 4 else x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.turns % 4:
            y = torch.rot90(y, -(self.turns % 4), dims=(-2, -1))
        return torch.flip(y, dims=(-1,)) if self.flip else y


@dataclass(frozen=True)
class Rotation:
    """Rotate the content by ``degrees`` about the tile centre (bilinear, mirrored border)."""

    degrees: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rotate(x, self.degrees)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return rotate(y, -self.degrees)


Transform = Dihedral | Rotation


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate the last two axes' content counter-clockwise (as displayed, rows downwards) by
    ``degrees`` about the centre ``((W - 1) / 2, (H - 1) / 2)``; bilinear, reflection padding.

    Shape:
        (B, C, H, W) -> (B, C, H, W), same dtype and device.
    """
    b, _, height, width = x.shape
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    u = torch.arange(width, device=x.device, dtype=dtype) - (width - 1) / 2  # (W,)
    v = (torch.arange(height, device=x.device, dtype=dtype) - (height - 1) / 2).unsqueeze(-1)
    # an output pixel at (u, v) reads the source at R(-angle) (u, v); rows point down
    src_u = cos * u - sin * v  # (H, W)
    src_v = sin * u + cos * v
    grid = torch.stack([src_u * (2 / width), src_v * (2 / height)], dim=-1)  # align_corners=False
    grid = grid.unsqueeze(0).expand(b, height, width, 2)
    return F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def dihedral_transforms() -> list[Dihedral]:
    """The 8 symmetries of the square, identity first."""
    return [Dihedral(k, flip) for flip in (False, True) for k in range(4)]


def flip_transforms() -> list[Dihedral]:
    """Identity, left-right flip, up-down flip (flip + half turn) and both (half turn)."""
    return [Dihedral(0, False), Dihedral(0, True), Dihedral(2, True), Dihedral(2, False)]


def rotation_transforms(n: int) -> list[Transform]:
    """``n`` rotations by ``k * 360 / n`` degrees; multiples of 90 are exact quarter turns."""
    if n < 1:
        raise ValueError(f"rot:N needs N >= 1 rotations, got {n}")
    out: list[Transform] = []
    for k in range(n):
        degrees = 360.0 * k / n
        quarter = degrees / 90.0
        out.append(Dihedral(round(quarter)) if abs(quarter - round(quarter)) < 1e-9
                   else Rotation(degrees))
    return out


def parse_tta(spec: str | None) -> list[Transform]:
    """Transforms of a TTA mode: ``None``/``"none"`` (no TTA: empty list), ``"flip"``, ``"d4"``
    or ``"rot:N"``.

    Raises:
        ValueError: for any other text; the message lists the modes.
    """
    if spec is None or spec == "none":
        return []
    if spec == "flip":
        return list(flip_transforms())
    if spec == "d4":
        return list(dihedral_transforms())
    if spec.startswith("rot:"):
        try:
            n = int(spec[4:])
        except ValueError:
            n = 0
        if n >= 1:
            return rotation_transforms(n)
    raise ValueError(f"unknown test-time augmentation {spec!r}; use flip, d4 or rot:N"
                     " (N rotations, e.g. rot:8)")


def tta_predictor(predictor: Predictor, transforms: Sequence[Transform]) -> Predictor:
    """A predictor returning the mean over ``transforms`` of ``t.inverse(predictor(
    t.forward(batch)))``; ``predictor`` itself when ``transforms`` is empty.

    Shape:
        (B, C, h, w) -> (B, K, h', w'), as ``predictor``.
    """
    if not transforms:
        return predictor
    chosen = tuple(transforms)

    def averaged(batch: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for t in chosen:
            out = t.inverse(predictor(t.forward(batch)))
            total = out if total is None else total + out
        assert total is not None
        return total / len(chosen)

    return averaged


def with_tta(predictor: Predictor, spec: str | None) -> Predictor:
    """:func:`tta_predictor` with the transforms of ``spec`` (see :func:`parse_tta`)."""
    return tta_predictor(predictor, parse_tta(spec))
