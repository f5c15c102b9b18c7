"""The frame the built-in U-Net variants share: pad, run a body, classify, crop; plus the
auxiliary heads of deep supervision.

A body maps an input padded to a multiple of ``2**depth`` to its decoder features, finest
first: ``[level 0, level 1, ...]`` where level ``l`` has ``1 / 2**l`` of the padded side (or,
for U-Net++, its nested outputs, all at full resolution). The frame holds the 1x1 heads. In
training with deep supervision it returns the main logits followed by one auxiliary logit map
per coarser feature, each upsampled to the input's size, so the loss can compare every map
with the same target (:func:`unetseg.losses.deep_supervision_loss`); at inference only the
main head runs, and an exported graph holds only the body and that head
(:class:`unetseg.export.graph.ExportableNet`).

Deep supervision: Lee et al., "Deeply-Supervised Nets", AISTATS 2015; on U-Net decoders as in
nnU-Net (Isensee et al., Nature Methods 2021), whose weights (halving per level) the loss uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from unetseg.config import ModelConfig
from unetseg.model.blocks import center_crop_to, out_conv, pad_to_multiple, per_axis
from unetseg.model.geometry import size_multiple


def upsample_to(logits: torch.Tensor, scale: int | Sequence[int], like: torch.Tensor, *,
                same: bool) -> torch.Tensor:
    """Auxiliary ``logits`` of a level ``scale`` times coarser than ``like`` (the main logits,
    (N, K, H, W) or (N, K, D, H, W); ``scale`` one factor or one per axis), upsampled
    (bi/trilinearly) by ``scale`` and cropped to ``like``'s size: from the top left for same
    padding (the padding is at the bottom/right), centred for valid padding (whose maps shrink
    symmetrically)."""
    dims = logits.ndim - 2
    scales = per_axis(scale, dims)
    if any(v > 1 for v in scales):
        factor: float | tuple[float, ...] = (float(scales[0]) if len(set(scales)) == 1
                                             else tuple(float(v) for v in scales))
        logits = F.interpolate(logits, scale_factor=factor,
                               mode="trilinear" if dims == 3 else "bilinear",
                               align_corners=False)
    size = tuple(like.shape[-dims:])
    if same:
        top_left: tuple[Any, ...] = (..., *(slice(0, n) for n in size))
        return logits[top_left]
    return center_crop_to(logits, list(size))


class SegmentationNet(nn.Module):
    """A body and its heads, with the ``config`` the pipeline reads (same padding).

    Args:
        config: the network's :class:`ModelConfig` (``depth`` and ``pool_sizes`` set the
            padding multiple, ``spatial_dims`` the heads' dimensions).
        body: module mapping (N, C, H, W), H and W multiples of :attr:`size_multiple`, to a
            list of features, finest first (see the module docstring); in eval mode only the
            first is used. Volumes (N, C, D, H, W) alike for ``spatial_dims`` 3.
        head_channels: channels of the body's first feature.
        aux: (channels, scale) of each further feature the body returns in training (scale one
            factor or one per axis); one auxiliary head each when ``config.deep_supervision``.

    Shape:
        (N, in_channels, H, W) -> (N, num_classes, H, W) for any H, W (volumes: D, H, W); in
        training with deep supervision a list of such maps, the main one first.
    """

    def __init__(self, config: ModelConfig, body: nn.Module, head_channels: int,
                 aux: Sequence[tuple[int, int | Sequence[int]]] = ()):
        super().__init__()
        self.config = config
        self.body = body
        dims = config.spatial_dims
        self.head = out_conv(head_channels, config.num_classes, dims)
        self.aux_heads = nn.ModuleList(
            out_conv(channels, config.num_classes, dims) for channels, _ in aux
        ) if config.deep_supervision else nn.ModuleList()
        self.aux_scales = [scale for _, scale in aux]

    @property
    def size_multiple(self) -> tuple[int, ...]:
        """Per axis, what an input is padded to a multiple of: the product of the poolings
        along it (``2**depth`` for isotropic plans)."""
        cfg = self.config
        return size_multiple(cfg.depth, cfg.spatial_dims, cfg.pool_sizes)

    def inference_head(self) -> nn.Module:
        """The head that classifies the body's first feature at inference."""
        return self.head

    def output_size(self, *size: int) -> tuple[int, ...]:
        return tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        dims = self.config.spatial_dims
        if x.ndim != dims + 2:
            raise ValueError(f"input of shape {tuple(x.shape)}: this {dims}D network takes"
                             f" {'(N, C, D, H, W)' if dims == 3 else '(N, C, H, W)'}")
        multiple = self.size_multiple
        x, size = pad_to_multiple(x, multiple[0] if len(set(multiple)) == 1 else multiple)
        crop: tuple[Any, ...] = (..., *(slice(0, n) for n in size))
        features = self.body(x)
        if not self.training:
            return self.inference_head()(features[0])[crop]
        logits = self.head(features[0])[crop]
        if not len(self.aux_heads):
            return logits
        aux = [upsample_to(head(f), scale, logits, same=True)
               for head, scale, f in zip(self.aux_heads, self.aux_scales, features[1:])]
        return [logits, *aux]
