"""The U-Net's forward pass written for exporters: no Python branches on tensor sizes.

:class:`~unetseg.model.UNet` pads a same-padding input up to a multiple of ``2**depth`` with
``F.pad`` only when needed, choosing reflect or replicate mode from the sizes, and crops skips
only when their size differs. Exporters that trace the model (``torch.jit.trace``, the legacy
ONNX exporter) would bake those branches in for the example's size, and ``torch.export`` would
specialise on them. :class:`ExportableUNet` shares the UNet's layers (and weights) and computes
the same function with index arithmetic instead, so one exported graph serves every size;
:class:`ExportableNet` does the same for the built-in variants (their body and inference head:
no auxiliary heads of deep supervision) and :class:`ExportableExternal` for other networks.
"""

from __future__ import annotations

import torch
from torch import nn

from unetseg.model import ExternalNet, SegmentationNet, UNet
from unetseg.model.blocks import center_crop


def _pad_indices(size: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices that extend an axis of ``size`` by ``pad`` at the end.

    Returns ``(reflect, replicate)``: the mirror excluding the edge pixel (valid only when
    ``pad < size``, negative entries otherwise) and the edge pixel repeated.
    Shape: ``(size + pad,)`` each.
    """
    idx = torch.arange(size + pad)
    reflect = torch.where(idx < size, idx, idx.neg() + 2 * (size - 1))
    replicate = idx.clamp(max=size - 1)
    return reflect, replicate


def pad_to_multiple_indexed(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad H and W at the bottom/right to a multiple of ``multiple``, as
    :func:`unetseg.model.blocks.pad_to_multiple` does (reflect when both pads are shorter than
    their axes, else replicate), by gathering rows and columns.

    Shape: (N, C, H, W) -> (N, C, H + (-H % m), W + (-W % m)).
    """
    height, width = x.shape[-2], x.shape[-1]
    # ceil-to-multiple rather than -size % multiple: torch.export can bound it from below
    pad_h = (height + multiple - 1) // multiple * multiple - height
    pad_w = (width + multiple - 1) // multiple * multiple - width
    rows_reflect, rows_replicate = _pad_indices(height, pad_h)
    cols_reflect, cols_replicate = _pad_indices(width, pad_w)
    # reflect is possible iff no mirrored index went negative, i.e. pad < size on both axes
    reflect = (rows_reflect.min() >= 0) & (cols_reflect.min() >= 0)
    rows = torch.where(reflect, rows_reflect, rows_replicate).to(x.device)
    cols = torch.where(reflect, cols_reflect, cols_replicate).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


class ExportableUNet(nn.Module):
    """A :class:`UNet`'s layers with a size-generic forward; the same logits as ``unet(x)``.

    The layers are shared, not copied. Scriptable (``torch.jit.script``) and traceable.

    Shape:
        (N, C, H, W) -> (N, K, H, W) for same padding (any H, W >= 1); the valid output size for
        valid padding (legal H, W only; see :mod:`unetseg.model.geometry`).
    """

    def __init__(self, unet: UNet):
        super().__init__()
        self.same: bool = unet.config.padding == "same"
        self.multiple: int = 2**unet.config.depth
        self.inc = unet.inc
        self.downs = unet.downs
        self.dropout = unet.dropout
        self.ups = unet.ups
        self.head = unet.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        if self.same:
            x = pad_to_multiple_indexed(x, self.multiple)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = self.dropout(skips.pop())
        for up in self.ups:
            x = up.up(x)  # type: ignore[operator]
            skip = skips.pop()
            if not self.same:  # valid padding: the skip is larger; same: sizes are equal
                skip = center_crop(skip, x.shape[-2], x.shape[-1])
            x = up.conv(torch.cat([skip, x], dim=1))  # type: ignore[operator]
        logits = self.head(x)
        if self.same:  # crop by gathering: a slice needs a bound torch.export cannot prove
            rows = torch.arange(height, device=logits.device)
            cols = torch.arange(width, device=logits.device)
            logits = logits.index_select(2, rows).index_select(3, cols)
        return logits


def _crop_indexed(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The top-left ``height`` x ``width`` of ``logits``, by gathering: a slice needs a bound
    torch.export cannot prove."""
    rows = torch.arange(height, device=logits.device)
    cols = torch.arange(width, device=logits.device)
    return logits.index_select(2, rows).index_select(3, cols)


class ExportableNet(nn.Module):
    """A :class:`~unetseg.model.SegmentationNet`'s body and inference head with a size-generic
    forward; the same logits as ``net(x)`` in eval mode. Shares the layers. Shape: (N, C, H, W)
    -> (N, K, H, W) for any H, W >= 1."""

    def __init__(self, net: SegmentationNet):
        super().__init__()
        self.multiple: int = 2**net.config.depth
        self.body = net.body
        self.head = net.inference_head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        features = self.body(pad_to_multiple_indexed(x, self.multiple))
        return _crop_indexed(self.head(features[0]), height, width)


class ExportableExternal(nn.Module):
    """An :class:`~unetseg.model.ExternalNet` with indexed padding and cropping. Whether its
    network exports is up to the network."""

    def __init__(self, net: ExternalNet):
        super().__init__()
        self.multiple: int = 2**net.config.depth
        self.net = net.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        logits = self.net(pad_to_multiple_indexed(x, self.multiple))
        return _crop_indexed(logits, height, width)


def exportable(model: nn.Module) -> nn.Module:
    """The export-friendly module of a network :func:`unetseg.model.build_model` built, in
    eval mode, sharing its layers."""
    model = model.cpu().eval()
    if isinstance(model, UNet):
        return ExportableUNet(model).eval()
    if isinstance(model, SegmentationNet):
        return ExportableNet(model).eval()
    if isinstance(model, ExternalNet):
        return ExportableExternal(model).eval()
    raise TypeError(f"{type(model).__name__} is not a network build_model builds")
