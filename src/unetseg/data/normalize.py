"""Per-channel normalisation: statistics of the training images, applied to every input."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import numpy as np
import torch

MIN_STD = 1e-6
"""Floor for a channel's standard deviation, so constant channels do not divide by zero."""

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class ChannelStats:
    """Mean and standard deviation per channel, in the images' value units."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"need one mean and one std per channel, got {self}")
        if not all(math.isfinite(m) for m in self.mean) or not all(
            math.isfinite(s) and s > 0 for s in self.std
        ):
            raise ValueError(f"means must be finite and stds finite and positive, got {self}")

    @property
    def channels(self) -> int:
        """Number of channels C."""
        return len(self.mean)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict ``{"mean": [...], "std": [...]}``."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChannelStats:
        """Rebuild statistics written by :meth:`to_dict`."""
        if set(d) != {"mean", "std"}:
            raise ValueError(f"not a channel statistics dict: keys {sorted(d)}")
        return cls(tuple(d["mean"]), tuple(d["std"]))


def channel_stats(images: Iterable[np.ndarray]) -> ChannelStats:
    """Exact mean and (population) standard deviation per channel over all pixels of all images.

    Each image contributes its own centred sums in float64, merged with the parallel-variance
    formula, so the result equals the statistics of all pixels concatenated, without the
    cancellation of a sum-of-squares and without holding all images at once.

    Args:
        images: arrays of shape ``(C, H, W)`` with one C for all; sizes may differ.

    Returns:
        the statistics; stds are floored at :data:`MIN_STD`.

    Raises:
        ValueError: no images, or images with different channel counts.
    """
    count = 0
    mean: np.ndarray | None = None  # (C,)
    m2: np.ndarray | None = None  # (C,) sum of squared deviations from the mean
    for image in images:
        x = np.asarray(image, dtype=np.float64).reshape(image.shape[0], -1)  # (C, H*W)
        n = x.shape[1]
        if n == 0:
            continue
        mean_i = x.mean(axis=1)
        m2_i = np.square(x - mean_i[:, None]).sum(axis=1)
        if mean is None or m2 is None:
            count, mean, m2 = n, mean_i, m2_i
            continue
        if mean_i.shape != mean.shape:
            raise ValueError(f"images have {mean.shape[0]} and {mean_i.shape[0]} channels")
        total = count + n
        delta = mean_i - mean
        mean = mean + delta * (n / total)
        m2 = m2 + m2_i + np.square(delta) * (count * n / total)
        count = total
    if mean is None or m2 is None:
        raise ValueError("channel_stats needs at least one non-empty image")
    std = np.maximum(np.sqrt(m2 / count), MIN_STD)
    return ChannelStats(tuple(mean.tolist()), tuple(std.tolist()))


@overload
def normalize(x: torch.Tensor, stats: ChannelStats) -> torch.Tensor: ...
@overload
def normalize(x: np.ndarray, stats: ChannelStats) -> np.ndarray: ...


def normalize(x: ArrayT, stats: ChannelStats) -> ArrayT:
    """``(x - mean) / std`` per channel, as float32.

    Args:
        x: torch tensor ``(N, C, H, W)`` or ``(C, H, W)`` (any device), or numpy ``(C, H, W)``.
        stats: the training set's statistics; C must match.

    Returns:
        a new float32 array/tensor of the same shape (and device).
    """
    if x.ndim < 3 or x.shape[-3] != stats.channels:
        raise ValueError(
            f"expected (C, H, W) or (N, C, H, W) with C={stats.channels}, got {tuple(x.shape)}"
        )
    if isinstance(x, torch.Tensor):
        mean = torch.tensor(stats.mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        std = torch.tensor(stats.std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        return (x.to(torch.float32) - mean) / std
    mean_np = np.asarray(stats.mean, dtype=np.float32).reshape(-1, 1, 1)
    std_np = np.asarray(stats.std, dtype=np.float32).reshape(-1, 1, 1)
    return (np.asarray(x, dtype=np.float32) - mean_np) / std_np
