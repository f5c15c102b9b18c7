"""Images (as read from disk) to logits: normalise, tile, predict, on one device."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unetseg.config import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_TILE
from unetseg.data.normalize import ChannelStats, channel_stats, normalize
from unetseg.errors import UserError
from unetseg.infer.fast import plan_tile
from unetseg.infer.precision import (
    PrecisionChoice,
    check_bf16,
    choice_without_check,
    sample_window,
)
from unetseg.infer.predict import BatchCallback, logits_to_labels, predict_logits
from unetseg.model import model_config
from unetseg.model.layout import fastest_memory_format

AUTO_MAX_TILE = 1088
"""Largest planned tile side: two 1056-pixel tiles cover 2048 pixels with a 64-pixel overlap."""
AUTO_MIN_OVERLAP = 64
"""Overlap of planned tiles, pixels: wider than a U-Net's border effects at 4 poolings."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU.

    Raises:
        UserError: an unknown device name, or a CUDA device on a machine without one.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N"
                        ) from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (
            device.index is not None and device.index >= torch.cuda.device_count())):
        raise UserError(f"--device {name}: no such CUDA device on this machine; use --device"
                        " cpu (or auto)")
    return device


def check_channels(want: int, image: np.ndarray, source: str | Path) -> None:
    """:class:`UserError` when ``image`` (C,H,W) does not have ``want`` channels."""
    got = image.shape[0]
    if want != got:
        target = {1: "gray", 3: "RGB"}.get(want, f"{want} channels")
        raise UserError(
            f"{source}: the model takes {want}-channel images but this one has {got};"
            f" convert it to {target}"
        )


@dataclass
class ImagePredictor:
    """A model with its normalisation and tiling settings.

    Args:
        model: a :class:`UNet` (or :class:`~unetseg.model.ExternalNet`) in eval mode on
            ``device``.
        stats: the training set's channel statistics, applied before the model.
        tile: tile side in pixels (input tile for same padding; bounds the input tile for
            valid). None plans it per image for same padding (:meth:`tiling`: the
            whole image up to :data:`AUTO_MAX_TILE` pixels, else the fewest tiles overlapping
            by :data:`AUTO_MIN_OVERLAP` pixels) and is :data:`~unetseg.config.DEFAULT_TILE` for
            valid padding.
        overlap: fraction of a tile shared with its neighbour (same-padding models); None is
            planned with the tile, or :data:`~unetseg.config.DEFAULT_OVERLAP` with a given tile.
        batch_size: most tiles per forward pass; planned tiles larger than 512 pixels go in
            fewer, so a batch never holds more pixels than ``batch_size`` 512-pixel tiles.
        tta: test-time augmentation of every tile (``"flip"``, ``"d4"``, ``"rot:N"``) or None.
        fast_layout: convert the model's weights, in place, to the memory layout it runs
            fastest in on its device (:func:`~unetseg.model.layout.fastest_memory_format`:
            channels-last for most, which runs CPU and tensor-core convolutions faster); the
            model is then for inference only.
        precision: ``fp32``, ``bf16`` (autocast) or ``auto``: bf16 on a CPU with native bf16
            when the model's bf16 labels agree with its fp32 labels on a sample of the first
            image predicted (:mod:`unetseg.infer.precision`), else fp32. Decided once, on the
            first image, and kept in :attr:`choice` (which a caller may also set from an
            earlier check); :attr:`on_check`, when set, is called with a checked choice.
    """

    model: nn.Module
    stats: ChannelStats
    tile: int | None = None
    overlap: float | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    tta: str | None = None
    fast_layout: bool = False
    precision: str = "fp32"
    choice: PrecisionChoice | None = field(default=None, init=False)
    on_check: Callable[[PrecisionChoice], None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.fast_layout:
            layout = fastest_memory_format(self.model)
            self.model.to(memory_format=layout)  # type: ignore[call-overload]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_channels(self, image: np.ndarray, source: str | Path) -> None:
        """:class:`UserError` when ``image`` (C,H,W) has another channel count than the model."""
        check_channels(model_config(self.model).in_channels, image, source)

    def tiling(self, height: int, width: int) -> tuple[int, float, int]:
        """(tile, overlap, tiles per batch) for an image of ``height`` x ``width`` pixels."""
        config = model_config(self.model)
        same = config.padding == "same"
        if self.tile is None and self.overlap is None and same:
            tile, overlap = plan_tile(height, width, max_tile=AUTO_MAX_TILE,
                                      min_overlap=AUTO_MIN_OVERLAP,
                                      multiple=2**config.depth)
        else:
            tile = self.tile or DEFAULT_TILE
            overlap = DEFAULT_OVERLAP if self.overlap is None else self.overlap
        side = min(tile, max(height, width))
        batch = max(1, min(self.batch_size, self.batch_size * DEFAULT_TILE**2 // side**2))
        return tile, overlap, batch

    def choose_precision(self, image: np.ndarray | torch.Tensor) -> PrecisionChoice:
        """The number format of every prediction of this predictor, decided on the first call
        (``auto`` checks bf16 on the centre of ``image``, (C, H, W) in its read scale) and kept.

        Two threads may both decide on their first images; they come to the same choice.

        Raises:
            UserError: ``bf16`` forced on a device that cannot run it.
        """
        if self.choice is None:
            try:
                choice = choice_without_check(self.precision, self.device)
            except ValueError as exc:
                raise UserError(f"--precision {self.precision}: {exc}") from None
            if choice is None:
                sample = self._normalized_window(torch.as_tensor(image))
                choice = check_bf16(self._labels_in, sample, model_config(self.model).num_classes)
                if self.on_check is not None:
                    self.on_check(choice)  # e.g. a cache of the check's outcome
            self.choice = choice
        return self.choice

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Run the model in the chosen number format (:meth:`choose_precision` first)."""
        assert self.choice is not None, "choose_precision before predicting"
        with _autocast(self.device, self.choice.dtype):
            yield

    def _normalized(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(image, dtype=torch.float32).to(self.device)
        return normalize(x, self.stats)

    def _normalized_window(self, image: torch.Tensor) -> torch.Tensor:
        """The precision check's sample, normalised as it is within the whole image (the
        ``image`` scheme takes the whole image's statistics, not the window's)."""
        if self.stats.scheme != "image":
            return self._normalized(sample_window(image))
        own = channel_stats([image.numpy() if image.device.type == "cpu" else
                             image.cpu().numpy()])
        window = torch.as_tensor(sample_window(image), dtype=torch.float32).to(self.device)
        return normalize(window, self.stats.for_image(own))

    def _tiled_logits(self, x: torch.Tensor, on_batch: BatchCallback | None = None
                      ) -> torch.Tensor:
        tile, overlap, batch = self.tiling(x.shape[-2], x.shape[-1])
        return predict_logits(self.model, x, tile=tile, overlap=overlap, batch_size=batch,
                              tta=self.tta, on_batch=on_batch).float()

    @torch.inference_mode()
    def _labels_in(self, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        """Labels of a normalised image under autocast to ``dtype`` (None: fp32)."""
        with _autocast(self.device, dtype):
            return logits_to_labels(self._tiled_logits(x)).cpu()

    @torch.inference_mode()
    def device_logits(self, image: np.ndarray | torch.Tensor,
                      on_batch: BatchCallback | None = None) -> torch.Tensor:
        """Logits (K, H, W) float32 on the model's device for an image (C, H, W) in its read
        scale, computed in the chosen number format (:meth:`choose_precision`); ``on_batch``
        is called after each batch of tiles with (tiles done, tiles in all)."""
        self.choose_precision(image)
        x = self._normalized(image)
        with self.autocast():
            return self._tiled_logits(x, on_batch)

    def logits(self, image: np.ndarray | torch.Tensor,
               on_batch: BatchCallback | None = None) -> torch.Tensor:
        """Logits (K, H, W) on the CPU for an image (C, H, W) in its read scale."""
        return self.device_logits(image, on_batch).cpu()

    @torch.inference_mode()
    def labels(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Class ids (H, W) int64 on the CPU, computed on the model's device
        (:func:`~unetseg.infer.predict.logits_to_labels`)."""
        return logits_to_labels(self.device_logits(image)).cpu()


def _autocast(device: torch.device, dtype: torch.dtype | None
              ) -> contextlib.AbstractContextManager[object]:
    """``torch.autocast`` to ``dtype`` on ``device``; nothing for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
