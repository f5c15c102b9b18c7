"""Per-pixel weights for blending overlapping window predictions.

A window's logits are least reliable near its borders, where the network saw the least context;
the Gaussian weight trusts a window's centre most. Weights are never zero, so every pixel covered
by at least one window gets a well-defined weighted average.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch

BlendMode = Literal["gaussian", "constant"]

#: Floor of the Gaussian weight relative to its peak of 1.
MIN_WEIGHT = 1e-3


@functools.lru_cache(maxsize=16)
def _gaussian_cpu(tile_h: int, tile_w: int, sigma_scale: float, min_weight: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """The Gaussian weight on the CPU; cached, so callers must not modify it in place."""
    axes = []
    for side in (tile_h, tile_w):
        x = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
        axes.append(torch.exp(-0.5 * (x / (sigma_scale * side)) ** 2))
    weight = torch.outer(axes[0], axes[1])  # (tile_h, tile_w)
    weight = (weight / weight.max()).clamp_min(min_weight)
    return weight.to(dtype)


def gaussian_weight(
    tile_h: int,
    tile_w: int,
    *,
    sigma_scale: float = 0.125,
    min_weight: float = MIN_WEIGHT,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A separable Gaussian centred on the tile, peak 1, never below ``min_weight``.

    Along each axis the standard deviation is ``sigma_scale * side`` pixels (nnU-Net's 1/8).
    The map is symmetric under flips of either axis. The CPU tensor is cached and shared: treat
    the result as read-only.

    Args:
        tile_h: tile rows.
        tile_w: tile columns.
        sigma_scale: standard deviation as a fraction of the side; > 0.
        min_weight: floor of the weight, in (0, 1].
        device: where the weight should live (CPU by default).
        dtype: floating dtype of the weight.

    Returns:
        Tensor of shape ``(tile_h, tile_w)`` with values in ``[min_weight, 1]``.
    """
    _check_tile(tile_h, tile_w)
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}; 0.125 is usual")
    if not 0 < min_weight <= 1:
        raise ValueError(f"min_weight must be in (0, 1], got {min_weight}")
    weight = _gaussian_cpu(tile_h, tile_w, float(sigma_scale), float(min_weight), dtype)
    return weight.to(device) if device is not None else weight


def constant_weight(
    tile_h: int,
    tile_w: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """All-ones weight (a plain mean over overlapping windows). Shape: ``(tile_h, tile_w)``."""
    _check_tile(tile_h, tile_w)
    return torch.ones(tile_h, tile_w, device=device, dtype=dtype)


def blend_weight(
    mode: BlendMode,
    tile_h: int,
    tile_w: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The weight for ``mode`` (``"gaussian"`` with default sigma, or ``"constant"``).

    Returns:
        Tensor of shape ``(tile_h, tile_w)``, all entries > 0.
    """
    if mode == "gaussian":
        return gaussian_weight(tile_h, tile_w, device=device, dtype=dtype)
    if mode == "constant":
        return constant_weight(tile_h, tile_w, device=device, dtype=dtype)
    raise ValueError(f"unknown blend mode {mode!r}; use 'gaussian' or 'constant'")


def _check_tile(tile_h: int, tile_w: int) -> None:
    if tile_h < 1 or tile_w < 1:
        raise ValueError(f"tile sides must be >= 1 pixel, got {tile_h} x {tile_w}")
