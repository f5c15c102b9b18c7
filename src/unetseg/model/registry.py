"""Architectures by name, so that another U-Net can run through unetseg's whole pipeline.

``ModelConfig.arch`` names the network a run trains and a model file rebuilds. ``"unet"`` is
:class:`~unetseg.model.UNet`; any other name must first be registered with
:func:`register_architecture` in the process that trains, predicts or evaluates. Comparing
networks this way keeps everything else (data, augmentation, loss, schedule, tiling, metrics)
the same, which is how ``benchmarks/quality.py`` compares unetseg's U-Net with its peers.

A registered network takes any (N, C, H, W) batch with H and W multiples of
``2**downsamplings`` and returns (N, K, H, W) logits; :class:`ExternalNet` pads other sizes
by mirroring and crops the logits back, as a same-padding :class:`UNet` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from unetseg.config import ModelConfig
from unetseg.errors import UserError
from unetseg.model.blocks import pad_to_multiple
from unetseg.model.unet import UNet

Builder = Callable[[ModelConfig], nn.Module]


@dataclass(frozen=True)
class Architecture:
    """A network builder (``ModelConfig`` -> module) and how often the network halves H, W."""

    build: Builder
    downsamplings: int


_ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(name: str, build: Builder, *, downsamplings: int) -> None:
    """Make ``ModelConfig(arch=name)`` build ``build(cfg)`` (it reads ``in_channels`` and
    ``num_classes``, and may read the other fields). Registering a name again replaces it."""
    if name == "unet":
        raise ValueError("'unet' is unetseg's own UNet and cannot be replaced")
    if downsamplings < 0:
        raise ValueError(f"downsamplings must be >= 0, got {downsamplings}")
    _ARCHITECTURES[name] = Architecture(build, downsamplings)


def architectures() -> list[str]:
    """The names ``ModelConfig.arch`` accepts in this process."""
    return ["unet", *sorted(_ARCHITECTURES)]


class ExternalNet(nn.Module):
    """A registered network with a ``config`` (same padding, ``depth`` = its downsamplings),
    so that training, tiling and model files treat it like a same-padding :class:`UNet`.

    Shape:
        (N, in_channels, H, W) -> (N, num_classes, H, W) for any H, W.
    """

    def __init__(self, net: nn.Module, config: ModelConfig):
        super().__init__()
        self.net = net
        self.config = config

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, 2**self.config.depth)
        return self.net(x)[..., :h, :w]


def model_config(model: nn.Module) -> ModelConfig:
    """The :class:`ModelConfig` of a :class:`UNet` or :class:`ExternalNet`.

    Raises:
        TypeError: for a module that carries none.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"{type(model).__name__} has no ModelConfig; build it with build_model")
    return config


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network ``cfg`` describes: a :class:`UNet`, or a registered architecture wrapped in
    an :class:`ExternalNet`.

    Raises:
        UserError: for an architecture this process does not know.
    """
    if cfg.arch == "unet":
        return UNet.from_config(cfg)
    arch = _ARCHITECTURES.get(cfg.arch)
    if arch is None:
        raise UserError(f"model architecture {cfg.arch!r} is not registered in this process;"
                        " register it with unetseg.model.register_architecture before loading,"
                        f" or use one of {', '.join(architectures())}")
    config = replace(cfg, depth=arch.downsamplings, padding="same")
    return ExternalNet(arch.build(config), config)
