"""Images (as read from disk) to logits: normalise, tile, predict, on one device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unetseg.data.normalize import ChannelStats, normalize
from unetseg.errors import UserError
from unetseg.infer.predict import predict_logits
from unetseg.model import UNet


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
        model: a :class:`UNet` in eval mode on ``device``.
        stats: the training set's channel statistics, applied before the model.
        tile: tile side in pixels (input tile for same padding; bounds the input tile for valid).
        overlap: fraction of a tile shared with its neighbour (same-padding models).
        batch_size: tiles per forward pass.
        tta: test-time augmentation of every tile (``"flip"``, ``"d4"``, ``"rot:N"``) or None.
    """

    model: UNet
    stats: ChannelStats
    tile: int = 512
    overlap: float = 0.25
    batch_size: int = 4
    tta: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_channels(self, image: np.ndarray, source: str | Path) -> None:
        """:class:`UserError` when ``image`` (C,H,W) has another channel count than the model."""
        check_channels(self.model.config.in_channels, image, source)

    @torch.inference_mode()
    def logits(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Logits (K, H, W) on the CPU for an image (C, H, W) in its read scale."""
        x = torch.as_tensor(image, dtype=torch.float32).to(self.device)
        x = normalize(x, self.stats)
        out = predict_logits(self.model, x, tile=self.tile, overlap=self.overlap,
                             batch_size=self.batch_size, tta=self.tta)
        return out.float().cpu()
