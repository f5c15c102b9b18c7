"""A U-Net whose encoder stages are residual blocks (He, Zhang, Ren, Sun, "Deep Residual
Learning for Image Recognition", CVPR 2016, arXiv:1512.03385), as in ResUNet (Zhang, Liu,
Wang, "Road Extraction by Deep Residual U-Net", IEEE GRSL 2018, arXiv:1711.10684) and nnU-Net's
residual-encoder presets (Isensee et al., "nnU-Net Revisited", MICCAI 2024, arXiv:2404.09556).

Each encoder stage is ``encoder_blocks`` basic blocks; the first block of every stage below the
top halves the size with a stride-2 convolution and a strided 1x1 projection shortcut (He et
al.'s option B), in place of the plain U-Net's max-pooling. The decoder is the U-Net's.
"""

from __future__ import annotations

import torch
from torch import nn

from unetseg.config import ModelConfig, Norm
from unetseg.model.blocks import (
    Size,
    Up,
    conv_layer,
    norm_layer,
    per_axis,
    strided_pointwise_conv,
)
from unetseg.model.geometry import network_plan


class ResidualBlock(nn.Module):
    """(3x3 conv -> norm -> ReLU -> 3x3 conv -> norm) + shortcut, then ReLU: He et al.'s basic
    block. The shortcut is the identity, or a 1x1 conv and norm where the channels or the
    stride change. Shape: (N, C_in, H, W) -> (N, C_out, H / stride, W / stride); volumes
    (``dims=3``) alike, with ``kernel`` and ``stride`` one per axis or one for all."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: Size = 1, norm: Norm,
                 dims: int = 2, kernel: Size = 3):
        super().__init__()
        bias = norm == "none"
        strides, kernels = per_axis(stride, dims), per_axis(kernel, dims)
        pad = tuple(k // 2 for k in kernels)
        conv = conv_layer(dims)
        self.conv1 = conv(in_channels, out_channels, kernels, stride=strides, padding=pad,
                          bias=bias)
        self.norm1 = norm_layer(norm, out_channels, dims)
        self.conv2 = conv(out_channels, out_channels, kernels, padding=pad, bias=bias)
        self.norm2 = norm_layer(norm, out_channels, dims)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if any(s != 1 for s in strides) or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                strided_pointwise_conv(in_channels, out_channels, stride=strides, bias=bias,
                                       dims=dims),
                norm_layer(norm, out_channels, dims),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class ResidualStage(nn.Sequential):
    """``blocks`` residual blocks; the first maps the channels and applies ``stride``."""

    def __init__(self, in_channels: int, out_channels: int, *, blocks: int, stride: Size,
                 norm: Norm, dims: int = 2, kernel: Size = 3):
        super().__init__(
            ResidualBlock(in_channels, out_channels, stride=stride, norm=norm, dims=dims,
                          kernel=kernel),
            *(ResidualBlock(out_channels, out_channels, norm=norm, dims=dims, kernel=kernel)
              for _ in range(blocks - 1)),
        )


class ResidualUNetBody(nn.Module):
    """Residual encoder of ``depth + 1`` stages (widths as the U-Net's), the U-Net's decoder.
    Volumes (``cfg.spatial_dims`` 3) take the config's kernels and poolings per level: stage
    ``l`` strides by pooling ``l - 1``.

    Shape: (N, C, H, W), H and W multiples of ``2**depth`` -> decoder features finest first,
    level ``l`` of ``widths[l]`` channels at ``1 / 2**l`` of the size (``depth`` maps).
    """

    def __init__(self, cfg: ModelConfig, widths: list[int]):
        super().__init__()
        dims = cfg.spatial_dims
        kernels, pools = network_plan(cfg.depth, dims, cfg.kernel_sizes, cfg.pool_sizes)
        self.stages = nn.ModuleList(
            ResidualStage(cfg.in_channels if i == 0 else widths[i - 1], widths[i],
                          blocks=cfg.encoder_blocks, stride=1 if i == 0 else pools[i - 1],
                          norm=cfg.norm, dims=dims, kernel=kernels[i])
            for i in range(cfg.depth + 1)
        )
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], padding="same", norm=cfg.norm, up=cfg.up,
               skip_channels=widths[i], dims=dims, scale=pools[i], kernel=kernels[i])
            for i in reversed(range(cfg.depth))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        x = self.dropout(skips.pop())
        decoded: list[torch.Tensor] = []
        for up in self.ups:
            x = up.conv(torch.cat([skips.pop(), up.up(x)], dim=1))  # type: ignore[operator]
            decoded.insert(0, x)
        return decoded
