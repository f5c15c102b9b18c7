"""Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas",
MIDL 2018, arXiv:1804.03999): additive attention gates on the U-Net's skip connections.

Before a skip joins the decoder, a gate weighs each of its pixels by a coefficient in (0, 1)
computed from the skip itself and from the coarser decoder features (the gating signal), so
the decoder is fed the regions the coarser level found relevant. The gate is the paper's
Fig. 2 and its grid-attention code: the skip is brought to the gating signal's resolution by a
strided 2x2 conv, the two are added after linear maps, and the coefficients are resampled
bilinearly back to the skip's resolution.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from unetseg.config import ModelConfig
from unetseg.model.blocks import DoubleConv, Down, Size, Up, conv_layer, per_axis
from unetseg.model.geometry import network_plan


class AttentionGate(nn.Module):
    """``alpha = sigmoid(psi(relu(theta(skip) + phi(gate))))`` upsampled x2, ``skip * alpha``.

    ``theta``: 2x2 conv, stride 2, no bias (skip -> ``inter`` channels at the gate's size);
    ``phi``: 1x1 conv (gate -> ``inter``); ``psi``: 1x1 conv (``inter`` -> 1).
    Shape: skip (N, C_s, H, W), gate (N, C_g, H / 2, W / 2) -> (N, C_s, H, W). Volumes
    (``dims=3``) alike, ``scale`` (the pooling between skip and gate) per axis: theta's kernel
    and stride, and the trilinear upsampling of the coefficients.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int, *,
                 dims: int = 2, scale: Size = 2):
        super().__init__()
        conv = conv_layer(dims)
        scale = per_axis(scale, dims)
        self.theta = conv(skip_channels, inter_channels, scale, stride=scale, bias=False)
        self.phi = conv(gate_channels, inter_channels, 1)
        self.psi = conv(inter_channels, 1, 1)
        factor: float | tuple[float, ...] = (
            2.0 if set(scale) == {2} else tuple(float(v) for v in scale))
        self.upsample = nn.Upsample(scale_factor=factor,
                                    mode="trilinear" if dims == 3 else "bilinear",
                                    align_corners=False)

    def coefficients(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The attention coefficients (N, 1, H, W) (volumes: (N, 1, D, H, W)), each in
        (0, 1)."""
        f = F.relu(self.theta(skip) + self.phi(gate))
        return self.upsample(torch.sigmoid(self.psi(f)))

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return skip * self.coefficients(skip, gate)


class AttentionUNetBody(nn.Module):
    """The U-Net's encoder and decoder with an :class:`AttentionGate` on every skip, gated
    by the decoder features one level below. Volumes (``cfg.spatial_dims`` 3) take the
    config's kernels and poolings per level.

    Shape: (N, C, H, W), H and W multiples of ``2**depth`` -> decoder features finest first,
    level ``l`` of ``widths[l]`` channels at ``1 / 2**l`` of the size (``depth`` maps).
    """

    def __init__(self, cfg: ModelConfig, widths: list[int]):
        super().__init__()
        dims = cfg.spatial_dims
        kernels, pools = network_plan(cfg.depth, dims, cfg.kernel_sizes, cfg.pool_sizes)
        self.inc = DoubleConv(cfg.in_channels, widths[0], padding="same", norm=cfg.norm,
                              dims=dims, kernel=kernels[0])
        self.downs = nn.ModuleList(
            Down(widths[i], widths[i + 1], padding="same", norm=cfg.norm, dims=dims,
                 pool=pools[i], kernel=kernels[i + 1])
            for i in range(cfg.depth)
        )
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.gates = nn.ModuleList(
            AttentionGate(widths[i], widths[i + 1], max(1, widths[i] // 2), dims=dims,
                          scale=pools[i])
            for i in reversed(range(cfg.depth))
        )
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], padding="same", norm=cfg.norm, up=cfg.up,
               skip_channels=widths[i], dims=dims, scale=pools[i], kernel=kernels[i])
            for i in reversed(range(cfg.depth))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = self.dropout(skips.pop())
        decoded: list[torch.Tensor] = []
        for gate, up in zip(self.gates, self.ups):
            skip = gate(skips.pop(), x)
            x = up.conv(torch.cat([skip, up.up(x)], dim=1))  # type: ignore[operator]
            decoded.insert(0, x)
        return decoded
