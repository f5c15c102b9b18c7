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

from unetseg.infer.ensemble import MIN_PROBABILITY, EnsembleNet
from unetseg.model import ExternalNet, SegmentationNet, UNet
from unetseg.model.blocks import center_crop_to


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
    return pad_to_multiples_indexed(x, [multiple] * (x.dim() - 2))


def pad_to_multiples_indexed(x: torch.Tensor, multiples: list[int]) -> torch.Tensor:
    """:func:`pad_to_multiple_indexed` with one multiple per spatial axis (slowest first), for
    volumes (N, C, D, H, W) whose plan pools some axes less than others."""
    dims = x.dim() - 2
    reflects: list[torch.Tensor] = []
    replicates: list[torch.Tensor] = []
    reflect = torch.ones((), dtype=torch.bool)
    for axis in range(dims):
        size, m = x.shape[2 + axis], multiples[axis]
        # ceil-to-multiple rather than -size % multiple: torch.export can bound it from below
        pad = (size + m - 1) // m * m - size
        mirrored, repeated = _pad_indices(size, pad)
        reflects.append(mirrored)
        replicates.append(repeated)
        # reflect is possible iff no mirrored index went negative, i.e. pad < size on each axis
        reflect = reflect & (mirrored.min() >= 0)
    for axis in range(dims):
        index = torch.where(reflect, reflects[axis], replicates[axis]).to(x.device)
        x = x.index_select(2 + axis, index)
    return x


def crop_indexed(logits: torch.Tensor, size: list[int]) -> torch.Tensor:
    """The first ``size`` entries of each spatial axis of ``logits`` (slowest first), by
    gathering: a slice needs a bound torch.export cannot prove."""
    for axis in range(len(size)):
        logits = logits.index_select(2 + axis, torch.arange(size[axis], device=logits.device))
    return logits


class ExportableUNet(nn.Module):
    """A :class:`UNet`'s layers with a size-generic forward; the same logits as ``unet(x)``.

    The layers are shared, not copied. Scriptable (``torch.jit.script``) and traceable. A 3D
    network pads each axis to its own multiple (:attr:`UNet.size_multiple`: an anisotropic plan
    pools z less than y and x).

    Shape:
        (N, C, H, W) -> (N, K, H, W) for same padding (any H, W >= 1); the valid output size for
        valid padding (legal H, W only; see :mod:`unetseg.model.geometry`). Volumes
        (N, C, D, H, W) -> (N, K, D, H, W) (same padding).
    """

    def __init__(self, unet: UNet):
        super().__init__()
        self.same: bool = unet.config.padding == "same"
        self.multiple = list(unet.size_multiple)
        self.inc = unet.inc
        self.downs = unet.downs
        self.dropout = unet.dropout
        self.ups = unet.ups
        self.head = unet.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size: list[int] = list(x.shape[2:])
        if self.same:
            x = pad_to_multiples_indexed(x, self.multiple)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = self.dropout(skips.pop())
        for up in self.ups:
            x = up.up(x)  # type: ignore[operator]
            skip = skips.pop()
            if not self.same:  # valid padding: the skip is larger; same: sizes are equal
                skip = center_crop_to(skip, list(x.shape[2:]))
            x = up.conv(torch.cat([skip, x], dim=1))  # type: ignore[operator]
        logits = self.head(x)
        if self.same:
            logits = crop_indexed(logits, size)
        return logits


def _crop_indexed(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The top-left ``height`` x ``width`` of ``logits`` (:func:`crop_indexed` in 2D)."""
    return crop_indexed(logits, [height, width])


class ExportableNet(nn.Module):
    """A :class:`~unetseg.model.SegmentationNet`'s body and inference head with a size-generic
    forward; the same logits as ``net(x)`` in eval mode. Shares the layers. Shape: (N, C, H, W)
    -> (N, K, H, W) for any H, W >= 1; volumes (N, C, D, H, W) alike, each axis padded to its
    own multiple (:attr:`SegmentationNet.size_multiple`)."""

    def __init__(self, net: SegmentationNet):
        super().__init__()
        self.multiple = list(net.size_multiple)
        self.body = net.body
        self.head = net.inference_head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size: list[int] = list(x.shape[2:])
        features = self.body(pad_to_multiples_indexed(x, self.multiple))
        return crop_indexed(self.head(features[0]), size)


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


def exportable_network(model: nn.Module) -> nn.Module:
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


ENSEMBLE_LAYOUT = ("NCHW float32 normalised by the card's stats: the identity (each member"
                   " normalises with its own inside the graph), or for members normalised per"
                   " image each image z-scored by its own statistics; the output is the log of"
                   " the members' mean class probabilities")


class ExportableEnsemble(nn.Module):
    """An :class:`~unetseg.infer.ensemble.EnsembleNet` with size-generic members: images as
    read -> the log of the members' mean class probabilities, as the ensemble computes it.

    The members' normalisations (and the percentile scheme's clip bounds) are buffers of the
    graph, so one exported file holds the whole model set. Scriptable and traceable.

    Shape:
        (N, C, H, W) -> (N, K, H', W'), as one member.
    """

    def __init__(self, ensemble: EnsembleNet):
        super().__init__()
        if ensemble.tta:
            raise ValueError("an exported graph has no test-time augmentation")
        members = [exportable_network(m) for m in ensemble.members]
        self.members = nn.ModuleList(members)
        count, channels = len(members), ensemble.config.in_channels
        self.register_buffer("means", torch.tensor([s.mean for s in ensemble.stats],
                                                   dtype=torch.float32).view(count, channels,
                                                                             1, 1))
        self.register_buffer("stds", torch.tensor([s.std for s in ensemble.stats],
                                                  dtype=torch.float32).view(count, channels,
                                                                            1, 1))
        inf = float("inf")
        self.register_buffer("lows", torch.tensor(
            [s.low if s.low is not None else (-inf,) * channels for s in ensemble.stats],
            dtype=torch.float32).view(count, channels, 1, 1))
        self.register_buffer("highs", torch.tensor(
            [s.high if s.high is not None else (inf,) * channels for s in ensemble.stats],
            dtype=torch.float32).view(count, channels, 1, 1))
        self.clip: bool = any(s.scheme == "percentile" for s in ensemble.stats)
        self.binary: bool = ensemble.config.num_classes == 1
        self.floor: float = MIN_PROBABILITY

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = []
        for i, member in enumerate(self.members):
            member_x = x
            if self.clip:  # members normalised by the percentile scheme clip first
                member_x = torch.minimum(torch.maximum(x, self.lows[i]),  # type: ignore[index]
                                         self.highs[i])  # type: ignore[index]
            logits = member((member_x - self.means[i]) / self.stds[i])  # type: ignore[index]
            probabilities.append(torch.sigmoid(logits) if self.binary
                                 else torch.softmax(logits, 1))
        mean = torch.stack(probabilities).mean(0)
        if self.binary:
            return torch.log(mean.clamp_min(self.floor)) - torch.log(
                (1 - mean).clamp_min(self.floor))
        return torch.log(mean.clamp_min(self.floor))


def exportable(model: nn.Module) -> nn.Module:
    """The module an exporter writes for ``model``: a network as :func:`exportable_network`
    makes it, an ensemble as an :class:`ExportableEnsemble`; in eval mode on the CPU."""
    if isinstance(model, EnsembleNet):
        return ExportableEnsemble(model).eval()
    return exportable_network(model)
