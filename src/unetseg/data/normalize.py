"""Per-channel normalisation: statistics of the training images, applied to every input.

Three schemes (:class:`ChannelStats` ``scheme``; chosen by ``DataConfig.normalization``):

* ``dataset``: ``(x - mean) / sd`` per channel, with the training images' mean and sd.
* ``image``: each image z-scored per channel by its own mean and sd (computed over the whole
  image before any tiling), so images of different brightness or modality (dark-background
  fluorescence beside light-background brightfield) reach the network on one scale. The
  training set's mean and sd are kept for training (:func:`training_view`).
* ``percentile``: each channel clipped to the training images' 0.5th and 99.5th percentiles
  (``low``, ``high``), then z-scored with the mean and sd of the clipped training pixels, so a
  few hot pixels or a heavy tail do not set the scale.

The model file stores the statistics with their scheme, so training, prediction, evaluation,
serving and exported graphs (which take normalised input and carry the card) normalise alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import numpy as np
import torch

from unetseg.config import NormalizationScheme

MIN_STD = 1e-6
"""Floor for a channel's standard deviation, so constant channels do not divide by zero."""
SCHEMES: tuple[NormalizationScheme, ...] = ("dataset", "image", "percentile")
"""The normalisation schemes (the module docstring)."""
CLIP_PERCENTILES = (0.5, 99.5)
"""Percentiles the ``percentile`` scheme clips each channel to."""
PERCENTILE_SAMPLE = 65_536
"""Pixels drawn per training image (all of a smaller image) to estimate the clip bounds."""

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class ChannelStats:
    """Mean and standard deviation per channel, in the images' value units, and how they are
    applied (``scheme``, the module docstring). ``low`` and ``high`` are the ``percentile``
    scheme's clip bounds per channel (None for the other schemes)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scheme: NormalizationScheme = "dataset"
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"need one mean and one std per channel, got {self}")
        if not all(math.isfinite(m) for m in self.mean) or not all(
            math.isfinite(s) and s > 0 for s in self.std
        ):
            raise ValueError(f"means must be finite and stds finite and positive, got {self}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown normalisation scheme {self.scheme!r}; one of"
                             f" {', '.join(SCHEMES)}")
        bounds = (self.low, self.high)
        if self.scheme != "percentile":
            if bounds != (None, None):
                raise ValueError(f"clip bounds belong to the percentile scheme, not {self.scheme}")
            return
        if self.low is None or self.high is None:
            raise ValueError("the percentile scheme needs clip bounds low and high")
        low, high = tuple(float(v) for v in self.low), tuple(float(v) for v in self.high)
        if len(low) != self.channels or len(high) != self.channels or not all(
                math.isfinite(a) and math.isfinite(b) and a <= b for a, b in zip(low, high)):
            raise ValueError(f"need finite clip bounds low <= high per channel, got {low}, {high}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def channels(self) -> int:
        """Number of channels C."""
        return len(self.mean)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict ``{"mean": [...], "std": [...]}``, with ``"scheme"`` (and the clip
        bounds ``"low"``, ``"high"``) for schemes other than ``dataset``; files without a
        scheme are read as ``dataset``."""
        d: dict[str, Any] = {"mean": list(self.mean), "std": list(self.std)}
        if self.scheme != "dataset":
            d["scheme"] = self.scheme
        if self.low is not None and self.high is not None:
            d["low"], d["high"] = list(self.low), list(self.high)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChannelStats:
        """Rebuild statistics written by :meth:`to_dict`."""
        if not {"mean", "std"} <= set(d) <= {"mean", "std", "scheme", "low", "high"}:
            raise ValueError(f"not a channel statistics dict: keys {sorted(d)}")
        low, high = d.get("low"), d.get("high")
        return cls(tuple(d["mean"]), tuple(d["std"]), d.get("scheme", "dataset"),
                   None if low is None else tuple(low), None if high is None else tuple(high))

    def for_image(self, image: ChannelStats) -> ChannelStats:
        """The ``dataset``-scheme statistics that normalise one image as this scheme does,
        given that image's own statistics (for an image normalised piece by piece, such as a
        streamed TIFF). Only for the ``image`` scheme; the others do not depend on the image."""
        if self.scheme != "image":
            return self
        return ChannelStats(image.mean, image.std)

    def training(self) -> ChannelStats:
        """The statistics the training batches, already in :func:`training_view`, are
        normalised with: ``dataset`` with the training set's mean and sd for the ``image``
        scheme, else these."""
        return ChannelStats(self.mean, self.std) if self.scheme == "image" else self


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


def percentile_bounds(images: Iterable[np.ndarray], *, seed: int = 0,
                      percentiles: tuple[float, float] = CLIP_PERCENTILES,
                      sample: int = PERCENTILE_SAMPLE) -> tuple[tuple[float, ...],
                                                                tuple[float, ...]]:
    """The ``percentiles`` of each channel over ``images`` (C, H, W): exact for images of up
    to ``sample`` pixels, else over ``sample`` pixels drawn uniformly (seeded) from each, so
    every image weighs about the same."""
    rng = np.random.default_rng(seed)
    picked = []
    for image in images:
        flat = np.asarray(image, dtype=np.float32).reshape(image.shape[0], -1)
        if flat.shape[1] > sample:
            flat = flat[:, rng.choice(flat.shape[1], sample, replace=False)]
        picked.append(flat)
    if not picked:
        raise ValueError("percentile_bounds needs at least one image")
    values = np.concatenate(picked, axis=1).astype(np.float64)
    low, high = np.percentile(values, percentiles, axis=1)
    return tuple(low.tolist()), tuple(high.tolist())


def dataset_stats(images: Sequence[np.ndarray], scheme: NormalizationScheme = "dataset", *,
                  seed: int = 0) -> ChannelStats:
    """The statistics of the training ``images`` (C, H, W) for ``scheme``: the mean and sd of
    all pixels (:func:`channel_stats`), for ``percentile`` of the pixels clipped to the bounds
    of :func:`percentile_bounds`."""
    if scheme == "percentile":
        low, high = percentile_bounds(images, seed=seed)
        lo = np.asarray(low, np.float32).reshape(-1, 1, 1)
        hi = np.asarray(high, np.float32).reshape(-1, 1, 1)
        clipped = channel_stats(np.clip(im, lo, hi) for im in images)
        return ChannelStats(clipped.mean, clipped.std, "percentile", low, high)
    stats = channel_stats(images)
    return ChannelStats(stats.mean, stats.std, scheme)


def training_view(image: np.ndarray, stats: ChannelStats) -> np.ndarray:
    """An image (C, H, W) as training crops it, such that ``normalize(training_view(x, s),
    s.training())`` equals ``normalize(x, s)``, and augmentation's brightness and contrast
    act on the scale the data set has: for ``image`` the image is z-scored by its own
    statistics and mapped onto the training set's mean and sd; for ``percentile`` it is
    clipped; for ``dataset`` it is returned as is. A new float32 array unless unchanged."""
    if stats.scheme == "dataset":
        return image
    x = np.asarray(image, dtype=np.float32)
    if stats.scheme == "percentile":
        assert stats.low is not None and stats.high is not None
        return np.clip(x, np.asarray(stats.low, np.float32).reshape(-1, 1, 1),
                       np.asarray(stats.high, np.float32).reshape(-1, 1, 1))
    own = channel_stats([x])
    scale = (np.asarray(stats.std) / np.asarray(own.std)).reshape(-1, 1, 1)
    shift = (np.asarray(stats.mean) - np.asarray(own.mean) * scale.ravel()).reshape(-1, 1, 1)
    return (x * scale + shift).astype(np.float32)


@overload
def normalize(x: torch.Tensor, stats: ChannelStats) -> torch.Tensor: ...
@overload
def normalize(x: np.ndarray, stats: ChannelStats) -> np.ndarray: ...


def normalize(x: ArrayT, stats: ChannelStats) -> ArrayT:
    """Normalise per channel by ``stats``'s scheme, as float32: ``(x - mean) / std`` with the
    stored statistics (``dataset``), with each image's own mean and (population) sd over its
    height and width (``image``; an image of a batch by itself, sd floored at
    :data:`MIN_STD`), or after clipping to ``low``, ``high`` (``percentile``).

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
        t = x.to(torch.float32)
        if stats.scheme == "image":
            std, mean = torch.std_mean(t, dim=(-2, -1), keepdim=True, correction=0)
            return (t - mean) / std.clamp_min(MIN_STD)
        if stats.scheme == "percentile":
            assert stats.low is not None and stats.high is not None
            low = torch.tensor(stats.low, dtype=torch.float32, device=x.device).view(-1, 1, 1)
            high = torch.tensor(stats.high, dtype=torch.float32, device=x.device).view(-1, 1, 1)
            t = torch.minimum(torch.maximum(t, low), high)
        mean = torch.tensor(stats.mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        std = torch.tensor(stats.std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        return (t - mean) / std
    a = np.asarray(x, dtype=np.float32)
    if stats.scheme == "image":
        own = channel_stats([a])
        mean_np = np.asarray(own.mean, dtype=np.float32).reshape(-1, 1, 1)
        std_np = np.asarray(own.std, dtype=np.float32).reshape(-1, 1, 1)
        return (a - mean_np) / std_np
    if stats.scheme == "percentile":
        assert stats.low is not None and stats.high is not None
        a = np.clip(a, np.asarray(stats.low, np.float32).reshape(-1, 1, 1),
                    np.asarray(stats.high, np.float32).reshape(-1, 1, 1))
    mean_np = np.asarray(stats.mean, dtype=np.float32).reshape(-1, 1, 1)
    std_np = np.asarray(stats.std, dtype=np.float32).reshape(-1, 1, 1)
    return (a - mean_np) / std_np
