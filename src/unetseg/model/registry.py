"""Architectures by name, so that another U-Net can run through unetseg's whole pipeline.

``ModelConfig.arch`` names the network a run trains and a model file rebuilds. ``"unet"`` is
:class:`~unetseg.model.UNet`, the built-in variants are :mod:`unetseg.model.variants`'; any
other name is looked up among the networks registered with :func:`register_architecture` in
this process, then among the entry points of the group ``unetseg.architectures`` that
installed packages declare (:data:`ENTRY_POINT_GROUP`), so ``unetseg train --arch NAME`` can
train a network from another package. Comparing networks this way keeps everything else
(data, augmentation, loss, schedule, tiling, metrics) the same, which is how
``benchmarks/quality.py`` compares unetseg's U-Net with its peers.

An entry point names a class or function that builds the network from a :class:`ModelConfig`
and says how often the network halves H and W in its attribute ``downsamplings``::

    [project.entry-points."unetseg.architectures"]
    tiny-net = "tinynet:TinyNet"     # class TinyNet(nn.Module): downsamplings = 3

A registered network takes any (N, C, H, W) batch with H and W multiples of
``2**downsamplings`` and returns (N, K, H, W) logits; :class:`ExternalNet` pads other sizes
by mirroring and crops the logits back, as a same-padding :class:`UNet` does.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from unetseg.config import ModelConfig
from unetseg.errors import UserError
from unetseg.model.blocks import pad_to_multiple
from unetseg.model.unet import UNet
from unetseg.model.variants import BUILDERS, variant_config

ENTRY_POINT_GROUP = "unetseg.architectures"
"""The entry point group in which installed packages declare architectures."""

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
    if name == "unet" or name in BUILDERS:
        raise ValueError(f"{name!r} is one of unetseg's own networks and cannot be replaced")
    if downsamplings < 0:
        raise ValueError(f"downsamplings must be >= 0, got {downsamplings}")
    _ARCHITECTURES[name] = Architecture(build, downsamplings)


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def architectures() -> list[str]:
    """The names ``ModelConfig.arch`` accepts in this process: ``unet``, the built-in
    variants, then registered and installed ones."""
    others = (set(_ARCHITECTURES) | set(_entry_points())) - set(BUILDERS) - {"unet"}
    return ["unet", *BUILDERS, *sorted(others)]


def _external(name: str) -> Architecture:
    """A registered architecture, else an installed package's (loaded and registered once).

    Raises:
        UserError: for a name neither registered nor installed, or an entry point that does
            not load or lacks ``downsamplings``.
    """
    if name in _ARCHITECTURES:
        return _ARCHITECTURES[name]
    entry = _entry_points().get(name)
    if entry is None:
        raise UserError(f"model architecture {name!r} is not registered in this process;"
                        " install the package that provides it (entry point group"
                        f" {ENTRY_POINT_GROUP}), register it with"
                        " unetseg.model.register_architecture before loading,"
                        f" or use one of {', '.join(architectures())}")
    try:
        build = entry.load()
    except Exception as exc:  # a third party's import can fail in any way
        raise UserError(f"--arch {name}: its entry point {entry.value} does not load"
                        f" ({type(exc).__name__}: {exc}); reinstall its package") from None
    downsamplings = getattr(build, "downsamplings", None)
    if not isinstance(downsamplings, int) or downsamplings < 0:
        raise UserError(f"--arch {name}: {entry.value} has no integer attribute"
                        " downsamplings (how often the network halves H and W); fix its"
                        " package")
    _ARCHITECTURES[name] = Architecture(build, downsamplings)
    return _ARCHITECTURES[name]


def arch_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` as the network it names carries it (``model.config``): for built-in networks
    see :func:`~unetseg.model.variants.variant_config`; others take same padding and
    ``depth`` = their downsamplings.

    Raises:
        UserError: an unknown architecture, or options it cannot take.
    """
    if cfg.arch == "unet" or cfg.arch in BUILDERS:
        return variant_config(cfg)
    arch = _external(cfg.arch)
    if cfg.spatial_dims != 2:
        raise UserError(f"--arch {cfg.arch}: registered networks take images (N, C, H, W);"
                        " for volumes use --arch unet, residual, attention or nested")
    if cfg.deep_supervision or cfg.prune_level is not None:
        raise UserError(f"--arch {cfg.arch}: deep supervision and pruning are for unetseg's"
                        " own networks; drop --deep-supervision and --prune-level")
    return replace(cfg, depth=arch.downsamplings, padding="same")


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
    """The :class:`ModelConfig` of a network :func:`build_model` built.

    Raises:
        TypeError: for a module that carries none.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"{type(model).__name__} has no ModelConfig; build it with build_model")
    return config


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network ``cfg`` describes: a :class:`UNet`, a built-in variant
    (:mod:`unetseg.model.variants`), or another architecture wrapped in an
    :class:`ExternalNet`. Its ``config`` is :func:`arch_config` of ``cfg``.

    Raises:
        UserError: for an architecture this process does not know, or options it cannot take.
    """
    config = arch_config(cfg)
    if cfg.arch == "unet":
        return UNet.from_config(config)
    if cfg.arch in BUILDERS:
        return BUILDERS[cfg.arch](config)
    return ExternalNet(_ARCHITECTURES[cfg.arch].build(config), config)
