"""Encoder weights from a local file: a ResNet state dict in torchvision's or timm's names.

``unetseg train --arch resnet34 --encoder-weights r34.safetensors`` starts the encoder of a
ResNet U-Net (:mod:`unetseg.model.resnet`) from weights trained elsewhere, typically on
ImageNet. Nothing is downloaded: the file is a safetensors file, or a ``.pth``/``.pt`` read
with ``torch.load(weights_only=True)`` (tensors and plain containers only, never arbitrary
pickled objects). timm's ``resnet18``/``34``/``50`` use torchvision's names; a checkpoint that
wraps the state dict (``{"state_dict": ...}``, ``{"model": ...}``) or prefixes its names
(``module.``, ``model.``, ``backbone.``, ``encoder.`` as in segmentation_models_pytorch,
``body.encoder.`` as in a unetseg model file) is unwrapped. The classifier ``fc`` is reported
unused, like any name the encoder does not have.

The first convolution is adapted to the network's input channels as timm's
``adapt_input_conv`` and segmentation_models_pytorch do: for one channel the RGB filters are
summed (a gray image then gives the response the RGB network gives to that image in all three
channels); for other counts the RGB filters are repeated over the channels (R, G, B, R, ...)
and scaled by ``3 / C``, so the filters keep their overall magnitude (for ``C`` a multiple of
3 a constant image gets the RGB network's response).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetseg.errors import UserError
from unetseg.model.resnet import ResNetEncoder

PREFIXES = ("module.", "model.", "backbone.", "body.encoder.", "encoder.")
"""Name prefixes stripped from a state dict's keys (repeatedly, in any order)."""
FIRST_CONV = "conv1.weight"


@dataclass(frozen=True)
class EncoderLoad:
    """What :func:`load_encoder_weights` did: the encoder keys it loaded, those the file
    lacked (left as initialised), the file's keys it did not use (``fc`` and names no encoder
    has), and how the first convolution was adapted (None: it was not)."""

    path: Path
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unused: tuple[str, ...]
    adapted: str | None = None

    def summary(self) -> str:
        """One line for the training log."""
        text = f"encoder weights from {self.path}: {len(self.loaded)} tensors loaded"
        if self.adapted:
            text += f", {self.adapted}"
        if self.missing:
            text += (f"; {len(self.missing)} missing and left initialised"
                     f" ({', '.join(self.missing[:3])}{', ...' if len(self.missing) > 3 else ''})")
        if self.unused:
            text += (f"; {len(self.unused)} unused ({', '.join(self.unused[:3])}"
                     f"{', ...' if len(self.unused) > 3 else ''})")
        return text


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors or ``.pth``/``.pt``/``.bin`` file, unwrapped from a
    ``state_dict``/``model`` entry.

    Raises:
        UserError: a missing or unreadable file, or a pickle that holds more than tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--encoder-weights {path}: file not found; give a ResNet state dict"
                        " (.safetensors or .pth)")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"--encoder-weights {path}: not a readable safetensors file"
                            f" ({' '.join(str(exc).split())})") from None
    try:
        data: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"--encoder-weights {path}: not a state dict torch.load can read with"
                        f" weights_only=True ({first[:160]}); save model.state_dict(), or"
                        " convert it to safetensors") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping):
        raise UserError(f"--encoder-weights {path}: holds a {type(data).__name__}, not a state"
                        " dict; save model.state_dict()")
    return {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}


def encoder_names(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Encoder name -> the file's name, for every key once its prefixes are stripped."""
    names: dict[str, str] = {}
    for key in state:
        name = key
        while True:
            prefix = next((p for p in PREFIXES if name.startswith(p)), None)
            if prefix is None:
                break
            name = name[len(prefix):]
        names.setdefault(name, key)
    return names


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB filters (O, 3, kh, kw) for ``in_channels`` inputs (see the module docstring)."""
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] != 3:
        raise ValueError(f"cannot adapt a first conv of {weight.shape[1]} input channels")
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / 3)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (3 / in_channels)


def resnet_encoder(model: nn.Module) -> ResNetEncoder:
    """The ResNet encoder of a ``resnet*`` network.

    Raises:
        UserError: the network has none.
    """
    body = getattr(model, "body", None)
    encoder = getattr(body, "encoder", None)
    if not isinstance(encoder, ResNetEncoder):
        arch = getattr(getattr(model, "config", None), "arch", type(model).__name__)
        raise UserError(f"--encoder-weights initialises a ResNet encoder, and --arch {arch} has"
                        " none; use --arch resnet18, resnet34 or resnet50, or drop"
                        " --encoder-weights")
    return encoder


def load_encoder_weights(model: nn.Module, path: str | Path) -> EncoderLoad:
    """Copy a ResNet state dict from ``path`` into ``model``'s encoder (see the module
    docstring) and say what was loaded.

    Raises:
        UserError: no ResNet encoder in ``model``, an unreadable file, a tensor whose shape is
            not the encoder's (another ResNet's weights), or a file with no encoder key.
    """
    encoder = resnet_encoder(model)
    path = Path(path)
    state = read_state_dict(path)
    names = encoder_names(state)
    own = encoder.state_dict()
    new: dict[str, torch.Tensor] = {}
    adapted = None
    for name, target in own.items():
        if name not in names:
            continue
        tensor = state[names[name]]
        if name == FIRST_CONV and tensor.ndim == 4 and tensor.shape[1] != target.shape[1]:
            try:
                tensor = adapt_first_conv(tensor, target.shape[1])
            except ValueError as exc:
                raise UserError(f"--encoder-weights {path}: {names[name]}: {exc}") from None
            verb = "summed over RGB" if target.shape[1] == 1 else "repeated and scaled by 3/C"
            adapted = f"{FIRST_CONV} {verb} for {target.shape[1]} input channels"
        if tuple(tensor.shape) != tuple(target.shape):
            raise UserError(f"--encoder-weights {path}: {names[name]} has shape"
                            f" {tuple(tensor.shape)} where the encoder's {name} has"
                            f" {tuple(target.shape)}; is it a state dict of this ResNet?")
        new[name] = tensor.to(target.dtype)
    if not new:
        raise UserError(f"--encoder-weights {path}: none of its {len(state)} keys is a ResNet"
                        " encoder's (torchvision's names: conv1.weight, layer1.0.conv1.weight,"
                        " ...)")
    encoder.load_state_dict({**own, **new})
    missing = tuple(k for k in own if k not in new and not k.endswith("num_batches_tracked"))
    unused = tuple(names[n] for n in names if n not in own)
    return EncoderLoad(path, tuple(new), missing, unused, adapted)
