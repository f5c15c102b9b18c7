"""The built-in U-Net variants by name, and the configuration each network carries.

========== ========================================================= =============================
``arch``   network                                                   paper
========== ========================================================= =============================
unet       :class:`~unetseg.model.UNet`                              Ronneberger et al. 2015
residual   residual encoder stages (:mod:`.residual`)                He et al. 2016; ResUNet 2018
attention  attention gates on the skips (:mod:`.attention`)          Oktay et al. 2018
nested     U-Net++, nested dense skips (:mod:`.nested`)              Zhou et al. 2018
resnet18   ResNet-18 encoder, U-Net decoder (:mod:`.resnet`)         He et al. 2016; TernausNet
resnet34   ResNet-34 encoder, U-Net decoder                          He et al. 2016; smp ``Unet``
resnet50   ResNet-50 encoder, U-Net decoder                          He et al. 2016
========== ========================================================= =============================

All but ``unet`` use same padding (they pad inside, so any H x W works). ``unet``,
``residual``, ``attention`` and ``nested`` have 3D forms (``spatial_dims=3`` with per-axis
``kernel_sizes`` and ``pool_sizes``, as :class:`~unetseg.model.UNet`); the ResNets are 2D.
``width`` None is the U-Net's 64 (planned from a time budget in training, as the U-Net's),
32 for ``nested`` (the U-Net++ paper's) and 16 for the ResNet decoders (smp's 256 ... 16).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from torch import nn

from unetseg.config import ModelConfig
from unetseg.errors import UserError
from unetseg.model.attention import AttentionUNetBody
from unetseg.model.nested import NestedUNetBody
from unetseg.model.residual import ResidualUNetBody
from unetseg.model.resnet import RESNET_LAYERS, ResNetUNetBody
from unetseg.model.segnet import SegmentationNet
from unetseg.model.unet import he_init

RESNET_DEPTH = 5
"""Halvings of a ResNet encoder: the stride-2 stem conv, the max-pool and three strided layers."""
DEFAULT_WIDTHS = {"nested": 32, **{name: 16 for name in RESNET_LAYERS}}
"""``width`` where None and not planned (otherwise the U-Net's 64)."""
PLANNED_WIDTH = ("unet", "residual", "attention", "nested")
"""Architectures whose ``width`` None is planned from a time budget
(:func:`unetseg.train.plan.plan_width`); their cost grows as the width squared."""
VOLUME_ARCHS = ("unet", "residual", "attention", "nested")
"""Architectures with a 3D form (``spatial_dims=3``, per-axis ``kernel_sizes``/``pool_sizes``)."""


def unet_widths(cfg: ModelConfig) -> list[int]:
    """The channels of levels ``0..depth``: the U-Net's (``top_width`` at the first)."""
    width = cfg.width or DEFAULT_WIDTHS.get(cfg.arch, 64)
    return [cfg.top_width or width, *(width * 2**i for i in range(1, cfg.depth + 1))]


class NestedUNet(SegmentationNet):
    """U-Net++ (:mod:`unetseg.model.nested`) with its heads: ``head`` on ``X[0][depth]``,
    ``aux_heads[m]`` on ``X[0][depth - 1 - m]``; pruned to ``prune_level`` at inference."""

    def inference_head(self) -> nn.Module:
        depth, level = self.config.depth, self.config.prune_level or self.config.depth
        return self.head if level == depth else self.aux_heads[depth - 1 - level]


def level_scale(cfg: ModelConfig, level: int) -> int | tuple[int, ...]:
    """How much coarser decoder level ``level`` is than the output: ``2**level``, or per axis
    the product of the first ``level`` poolings of ``cfg.pool_sizes``."""
    if cfg.pool_sizes is None:
        return 2**level
    return tuple(math.prod(p[a] for p in cfg.pool_sizes[:level])
                 for a in range(cfg.spatial_dims))


def _ladder_net(cfg: ModelConfig, body: type[nn.Module]) -> SegmentationNet:
    """A U-Net-shaped ``body`` with the main head and one auxiliary head per coarser decoder
    level (channels, scale)."""
    widths = unet_widths(cfg)
    net = SegmentationNet(cfg, body(cfg, widths), widths[0],
                          [(widths[lvl], level_scale(cfg, lvl)) for lvl in range(1, cfg.depth)])
    he_init(net)
    return net


def build_residual(cfg: ModelConfig) -> SegmentationNet:
    return _ladder_net(cfg, ResidualUNetBody)


def build_attention(cfg: ModelConfig) -> SegmentationNet:
    return _ladder_net(cfg, AttentionUNetBody)


def build_nested(cfg: ModelConfig) -> SegmentationNet:
    widths = unet_widths(cfg)
    body = NestedUNetBody(cfg, widths, cfg.prune_level or cfg.depth)
    net = NestedUNet(cfg, body, widths[0], [(widths[0], 1)] * (cfg.depth - 1))
    he_init(net)
    return net


def build_resnet(cfg: ModelConfig) -> SegmentationNet:
    width = cfg.width or DEFAULT_WIDTHS[cfg.arch]
    body = ResNetUNetBody(cfg, width)
    he_init(body.blocks)
    net = SegmentationNet(cfg, body, width, [(width * 2**lvl, 2**lvl) for lvl in range(1, 5)])
    he_init(net.head)
    he_init(net.aux_heads)
    return net


BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "residual": build_residual,
    "attention": build_attention,
    "nested": build_nested,
    **{name: build_resnet for name in RESNET_LAYERS},
}
"""The built-in variants (``unet`` is built by :class:`~unetseg.model.UNet`)."""


def variant_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` as the built network of a built-in ``arch`` (``unet`` too) carries it:
    the ResNets' depth 5 and width, same padding and pruning checked.

    Raises:
        UserError: options the architecture cannot take.
    """
    arch = cfg.arch
    if cfg.prune_level is not None and arch != "nested":
        raise UserError(f"--prune-level {cfg.prune_level}: only --arch nested (U-Net++) can be"
                        " pruned; drop --prune-level")
    if arch == "unet":
        return cfg
    if cfg.spatial_dims == 3 and arch not in VOLUME_ARCHS:
        raise UserError(f"--arch {arch} has no 3D form (its pretrained encoder weights are 2D);"
                        f" for volumes use --arch {', '.join(VOLUME_ARCHS)}")
    if cfg.padding != "same":
        raise UserError(f"--arch {arch} pads inside the network (same padding); drop --padding"
                        f" {cfg.padding} (valid padding is the plain U-Net's, --arch unet)")
    if arch in RESNET_LAYERS:
        return replace(cfg, depth=RESNET_DEPTH, width=cfg.width or DEFAULT_WIDTHS[arch])
    if cfg.depth < 1:
        raise UserError(f"--arch {arch} needs --depth of at least 1, got {cfg.depth}")
    if arch == "nested" and cfg.prune_level is not None:
        if cfg.prune_level > cfg.depth:
            raise UserError(f"--prune-level {cfg.prune_level}: a U-Net++ of --depth {cfg.depth}"
                            f" has levels 1 to {cfg.depth}")
        if cfg.prune_level < cfg.depth and not cfg.deep_supervision:
            raise UserError(f"--prune-level {cfg.prune_level}: pruning needs the heads of deep"
                            " supervision; add --deep-supervision on")
    return cfg
