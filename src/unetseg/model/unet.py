"""The U-Net (Ronneberger, Fischer, Brox. MICCAI 2015, arXiv:1505.04597)."""

from __future__ import annotations

import torch
from torch import nn

from unetseg.config import ModelConfig, Norm, Padding, UpMode
from unetseg.model.blocks import DoubleConv, Down, OutConv, Up, pad_to_multiple
from unetseg.model.geometry import valid_output_size
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

    Shape:
        (N, in_channels, H, W) -> (N, num_classes, H', W'), H' = H (same) or the valid output size;
        in training with deep supervision a list of such maps, the main one first.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, *, depth: int = 4,
                 width: int = 64, padding: Padding = "same", up: UpMode = "transpose",
                 norm: Norm = "instance", dropout: float = 0.0, top_width: int | None = None,
                 deep_supervision: bool = False):
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"unknown padding {padding!r}; use same or valid")
        self.config = ModelConfig(in_channels, num_classes, depth, width, padding, up, norm,
                                  dropout, top_width=top_width,
                                  deep_supervision=deep_supervision)
        widths = [top_width or width, *(width * 2**i for i in range(1, depth + 1))]
        self.inc = DoubleConv(in_channels, widths[0], padding=padding, norm=norm)
        self.downs = nn.ModuleList(
            Down(widths[i], widths[i + 1], padding=padding, norm=norm) for i in range(depth)
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], padding=padding, norm=norm, up=up,
               skip_channels=widths[i])
            for i in reversed(range(depth))
        )
        self.head = OutConv(widths[0], num_classes)
        self.aux_heads = nn.ModuleList(
            OutConv(widths[level], num_classes) for level in reversed(range(1, depth))
        ) if deep_supervision else nn.ModuleList()
        he_init(self)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> UNet:
        """The UNet of ``cfg``; an unplanned width (None) is the paper's 64."""
        if cfg.arch != "unet":
            raise ValueError(f"{cfg.arch!r} is not a UNet config; use unetseg.model.build_model")
        return cls(cfg.in_channels, cfg.num_classes, depth=cfg.depth, width=cfg.width or 64,
                   padding=cfg.padding, up=cfg.up, norm=cfg.norm, dropout=cfg.dropout,
                   top_width=cfg.top_width, deep_supervision=cfg.deep_supervision)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Logit map size for an input of ``height`` x ``width``."""
        if self.config.padding == "same":
            return height, width
        return valid_output_size(height, self.config.depth), valid_output_size(width,
                                                                              self.config.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        same = self.config.padding == "same"
        if same:
            x, (h, w) = pad_to_multiple(x, 2**self.config.depth)
        else:
            self.output_size(x.shape[-2], x.shape[-1])  # raises on an illegal size
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
            logits = logits[..., :h, :w]
        if not (self.training and len(self.aux_heads)):
            return logits
        levels = range(self.config.depth - 1, 0, -1)  # aux_heads' levels, coarsest first
        aux = [upsample_to(head(decoded[-1 - level]), 2**level, logits, same=same)
               for head, level in zip(self.aux_heads, levels)]
        return [logits, *aux]


def he_init(module: nn.Module) -> None:
    """He-normal weights (std = sqrt(2 / fan_in), the paper's choice) and zero biases.

    Tensors on the meta device (shapes only, no storage) are left alone: they hold no values,
    and drawing random numbers there costs PyTorch a second of imports on first use."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and not m.weight.is_meta:
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
