"""The U-Net (Ronneberger, Fischer, Brox. MICCAI 2015, arXiv:1505.04597), and its volumetric
form, the 3D U-Net (Cicek, Abdulkadir, Lienkamp, Brox, Ronneberger. MICCAI 2016,
arXiv:1606.06650)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from unetseg.config import ModelConfig, Norm, Padding, UpMode
from unetseg.model.blocks import DoubleConv, Down, Up, out_conv, pad_to_multiple
from unetseg.model.geometry import (
    Plan,
    network_plan,
    size_multiple,
    valid_output_size,
    valid_output_size_axis,
)
from unetseg.model.segnet import upsample_to


class UNet(nn.Module):
    """Encoder-decoder with skip connections, read as the paper's Fig. 1.

    Args:
        in_channels: image channels (1 gray, 3 RGB, ...).
        num_classes: logits per pixel.
        depth: number of 2x2 poolings (4 in the paper).
        width: channels at the first level; doubled at each level down (64 in the paper).
        padding: ``"same"`` takes any H x W and returns the same size (the input is padded to a
            multiple of ``2**depth`` and the logits cropped back); ``"valid"`` is the paper's
            unpadded network whose output is smaller (see :mod:`unetseg.model.geometry`).
        up: ``"transpose"`` (2x2 up-convolution, the paper), ``"bilinear"`` or ``"nearest"``.
        norm: ``"instance"`` (default), ``"batch"``, ``"group"`` or ``"none"`` (the paper).
            Instance norm normalises each image's channels with their own statistics, so it
            does not depend on the batch (small on a CPU) nor on running statistics that lag the
            weights; a tile is normalised with its own statistics, so tiled predictions depend
            slightly on the tiling (see :func:`unetseg.infer.fast.plan_tile`).
        dropout: drop-out probability at the end of the contracting path (the paper uses it).
        top_width: channels of the first (full-resolution) level alone, if not ``width``. That
            level sees the raw image and feeds the classifier; widening it alone costs far less
            than widening the network (see :func:`unetseg.train.plan.plan_top_width`).
        deep_supervision: a 1x1 head on each decoder level but the last (``aux_heads``, the
            coarsest first), whose logits, upsampled to the output, join the main ones in
            training (:mod:`unetseg.model.segnet`); unused at inference.
        spatial_dims: 2 (images) or 3 (volumes: 3x3x3 convs, 2x2x2 poolings).
        kernel_sizes: per level (``depth + 1``, finest first) the conv kernel along each axis,
            e.g. ``(1, 3, 3)`` for a level that must not mix slices; None: 3 everywhere.
        pool_sizes: per pooling (``depth``) the factor along each axis, e.g. ``(1, 2, 2)``
            for one that keeps the slices; None: 2 everywhere. See
            :func:`unetseg.model.geometry.anisotropic_plan`.

    Shape:
        (N, in_channels, H, W) -> (N, num_classes, H', W'), H' = H (same) or the valid output size;
        volumes (N, in_channels, D, H, W) -> (N, num_classes, D', H', W'); in training with deep
        supervision a list of such maps, the main one first.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, *, depth: int = 4,
                 width: int = 64, padding: Padding = "same", up: UpMode = "transpose",
                 norm: Norm = "instance", dropout: float = 0.0, top_width: int | None = None,
                 deep_supervision: bool = False, spatial_dims: int = 2,
                 kernel_sizes: Plan | None = None, pool_sizes: Plan | None = None):
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"unknown padding {padding!r}; use same or valid")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims {spatial_dims}: use 2 (images) or 3 (volumes)")
        kernels, pools = network_plan(depth, spatial_dims, kernel_sizes, pool_sizes,
                                      same=padding == "same")
        self.config = ModelConfig(
            in_channels, num_classes, depth, width, padding, up, norm, dropout,
            top_width=top_width, deep_supervision=deep_supervision, spatial_dims=spatial_dims,
            kernel_sizes=kernels if kernel_sizes is not None else None,
            pool_sizes=pools if pool_sizes is not None else None)
        self.kernels, self.pools = kernels, pools
        dims = spatial_dims
        widths = [top_width or width, *(width * 2**i for i in range(1, depth + 1))]
        self.inc = DoubleConv(in_channels, widths[0], padding=padding, norm=norm, dims=dims,
                              kernel=kernels[0])
        self.downs = nn.ModuleList(
            Down(widths[i], widths[i + 1], padding=padding, norm=norm, dims=dims, pool=pools[i],
                 kernel=kernels[i + 1]) for i in range(depth)
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], padding=padding, norm=norm, up=up,
               skip_channels=widths[i], dims=dims, scale=pools[i], kernel=kernels[i])
            for i in reversed(range(depth))
        )
        self.head = out_conv(widths[0], num_classes, dims)
        self.aux_heads = nn.ModuleList(
            out_conv(widths[level], num_classes, dims) for level in reversed(range(1, depth))
        ) if deep_supervision else nn.ModuleList()
        he_init(self)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> UNet:
        """The UNet of ``cfg``; an unplanned width (None) is the paper's 64."""
        if cfg.arch != "unet":
            raise ValueError(f"{cfg.arch!r} is not a UNet config; use unetseg.model.build_model")
        return cls(cfg.in_channels, cfg.num_classes, depth=cfg.depth, width=cfg.width or 64,
                   padding=cfg.padding, up=cfg.up, norm=cfg.norm, dropout=cfg.dropout,
                   top_width=cfg.top_width, deep_supervision=cfg.deep_supervision,
                   spatial_dims=cfg.spatial_dims, kernel_sizes=cfg.kernel_sizes,
                   pool_sizes=cfg.pool_sizes)

    @property
    def size_multiple(self) -> tuple[int, ...]:
        """Per axis, what a same-padding input is padded to a multiple of: the product of the
        poolings along it (``2**depth`` for isotropic plans)."""
        return size_multiple(self.config.depth, self.config.spatial_dims, self.pools)

    def output_size(self, *size: int) -> tuple[int, ...]:
        """Logit map size for an input of ``height`` x ``width`` (or ``depth`` x ``height``
        x ``width`` for volumes)."""
        if self.config.padding == "same":
            return tuple(size)
        if self.config.kernel_sizes is None and self.config.pool_sizes is None:
            return tuple(valid_output_size(s, self.config.depth) for s in size)
        return tuple(valid_output_size_axis(s, [k[a] for k in self.kernels],
                                            [p[a] for p in self.pools])
                     for a, s in enumerate(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        same = self.config.padding == "same"
        dims = self.config.spatial_dims
        if x.ndim != dims + 2:
            raise ValueError(f"input of shape {tuple(x.shape)}: this {dims}D network takes"
                             f" {'(N, C, D, H, W)' if dims == 3 else '(N, C, H, W)'}")
        if same:
            multiple = self.size_multiple
            x, size = pad_to_multiple(x, multiple[0] if len(set(multiple)) == 1 else multiple)
        else:
            self.output_size(*x.shape[2:])  # raises on an illegal size
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = self.dropout(skips.pop())
        decoded = []
        for up in self.ups:
            x = up(x, skips.pop())
            decoded.append(x)
        logits = self.head(x)
        if same:
            crop: tuple[Any, ...] = (..., *(slice(0, n) for n in size))
            logits = logits[crop]
        if not (self.training and len(self.aux_heads)):
            return logits
        levels = range(self.config.depth - 1, 0, -1)  # aux_heads' levels, coarsest first
        aux = [upsample_to(head(decoded[-1 - level]), self._scale(level), logits, same=same)
               for head, level in zip(self.aux_heads, levels)]
        return [logits, *aux]

    def _scale(self, level: int) -> int | tuple[int, ...]:
        """How much coarser level ``level`` is than the output, per axis (one int if equal)."""
        scale = tuple(math.prod(p[a] for p in self.pools[:level])
                      for a in range(self.config.spatial_dims))
        return scale[0] if len(set(scale)) == 1 else scale


def he_init(module: nn.Module) -> None:
    """He-normal weights (std = sqrt(2 / fan_in), the paper's choice) and zero biases.

    Tensors on the meta device (shapes only, no storage) are left alone: they hold no values,
    and drawing random numbers there costs PyTorch a second of imports on first use."""
    for m in module.modules():
        if (isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Conv3d | nn.ConvTranspose3d)
                and not m.weight.is_meta):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
