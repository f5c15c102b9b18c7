"""Peer networks and losses, plugged into unetseg's pipeline for the benchmarks.

Each peer keeps its library's defaults, as its documentation shows them for 2-D segmentation:

* ``monai-basicunet``: MONAI's ``BasicUNet(spatial_dims=2)``, features (32, 32, 64, 128, 256,
  32), instance norm, LeakyReLU, 4 poolings.
* ``fepegar-unet2d``: ``unet.UNet2D`` (fepegar/unet) with ``padding=1`` (same size out) and
  ``normalization="batch"``; 64 channels first, 4 poolings.

:func:`monai_dice_ce` is MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)``, the loss
MONAI's tutorials pair with BasicUNet. DiceCELoss knows no ignored label, so where a batch has
ignored pixels (CamVid's void) the same sum is taken over the others: MONAI's
``MaskedDiceLoss`` plus cross-entropy ignoring them; without ignored pixels it is
``DiceCELoss`` itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from unetseg.config import ModelConfig
from unetseg.data.classes import IGNORE_INDEX
from unetseg.model import register_architecture

PEERS = ("monai-basicunet", "fepegar-unet2d")


def _basicunet(cfg: ModelConfig) -> torch.nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=cfg.in_channels, out_channels=cfg.num_classes)


def _unet2d(cfg: ModelConfig) -> torch.nn.Module:
    from unet import UNet2D

    return UNet2D(in_channels=cfg.in_channels, out_classes=cfg.num_classes, padding=1,
                  normalization="batch")


def register_peers() -> None:
    """Make ``ModelConfig(arch=...)`` accept the names in :data:`PEERS`."""
    register_architecture("monai-basicunet", _basicunet, downsamplings=4)
    register_architecture("fepegar-unet2d", _unet2d, downsamplings=4)


def monai_dice_ce() -> Any:
    """MONAI's Dice + cross-entropy as a unetseg loss ``(logits, target, weights=None)``."""
    from monai.losses import DiceCELoss, MaskedDiceLoss

    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    masked_dice = MaskedDiceLoss(to_onehot_y=True, softmax=True)

    def loss(logits: torch.Tensor, target: torch.Tensor,
             pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
        valid = target != IGNORE_INDEX
        if bool(valid.all()):
            return dice_ce(logits, target.unsqueeze(1))
        labels = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)
        return (masked_dice(logits, labels, mask=valid.unsqueeze(1).to(logits.dtype))
                + F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX))

    return loss
