"""ResNet encoders with a U-Net decoder: the encoder-decoder of Kaggle's segmentation contests
(TernausNet, Iglovikov and Shvets 2018, arXiv:1801.05746; segmentation_models_pytorch's
``Unet``, Iakubovskii 2019).

The encoder is ResNet-18, -34 or -50 (He, Zhang, Ren, Sun, CVPR 2016, arXiv:1512.03385) in
torchvision's layout: the same module names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``,
``downsample.0``/``.1``), shapes and strides (the v1.5 bottleneck strides its 3x3 conv), so a
torchvision or timm state dict loads into ``encoder`` (:mod:`unetseg.model.encoder_weights`);
the classifier ``fc`` is left out. It halves the size five times, so the network pads its
input to a multiple of 32. Its normalisation is batch norm whatever ``norm`` says, so that
pretrained statistics load.

The decoder is segmentation_models_pytorch's: five blocks that each upsample x2, concatenate
the encoder features of that size (none at full resolution) and apply a double 3x3 conv; its
channels are ``16 * width, 8 * width, ..., width`` (smp's default 256, 128, 64, 32, 16 for
``width`` 16). ``up="nearest"`` upsamples as smp does; ``transpose`` is a 2x2 transposed conv
keeping the channels, ``bilinear`` interpolates.
"""

from __future__ import annotations

import torch
from torch import nn

from unetseg.config import ModelConfig, Norm, UpMode
from unetseg.model.blocks import DoubleConv, StridedPointwiseConv

RESNET_LAYERS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
"""Block type and blocks per layer (He et al.'s Table 1)."""


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: two 3x3 convs with batch norm, identity or projected
    shortcut (``downsample``)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = _projection(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (ResNet v1.5: the 3x3 conv strides): 1x1 -> 3x3 -> 1x1 to
    4x the channels, identity or projected shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """torchvision's ``downsample``: 1x1 conv (strided) + batch norm where the shape changes."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(StridedPointwiseConv(in_channels, out_channels, stride=stride,
                                              bias=False),
                         nn.BatchNorm2d(out_channels))


class ResNetEncoder(nn.Module):
    """torchvision's ``ResNet`` without ``avgpool`` and ``fc``, returning the features of
    every size.

    Shape: (N, C, H, W), H and W multiples of 32 -> five maps at 1/2 (``relu(bn1(conv1))``),
    1/4 (``layer1``), 1/8, 1/16 and 1/32 (``layer4``) of the size, with :attr:`channels`.
    """

    def __init__(self, name: str, in_channels: int = 3):
        super().__init__()
        kind, layers = RESNET_LAYERS[name]
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c = 64
        stages = []
        for i, (blocks, channels) in enumerate(zip(layers, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            modules = [block(c, channels, stride)]
            c = channels * block.expansion
            modules += [block(c, channels) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*modules))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels = [64, *(w * block.expansion for w in (64, 128, 256, 512))]
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        return [f1, f2, f3, f4, self.layer4(f4)]


class DecoderBlock(nn.Module):
    """smp's ``DecoderBlock``: upsample x2, concatenate the skip (if any), double 3x3 conv.
    Shape: x (N, C_in, h, w), skip (N, C_skip, 2h, 2w) or None -> (N, C_out, 2h, 2w)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *, up: UpMode,
                 norm: Norm):
        super().__init__()
        self.up: nn.Module
        if up == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2)
        elif up in ("nearest", "bilinear"):
            self.up = nn.Upsample(scale_factor=2.0, mode=up,
                                  align_corners=False if up == "bilinear" else None)
        else:
            raise ValueError(f"unknown up mode {up!r}; use transpose, bilinear or nearest")
        self.conv = DoubleConv(in_channels + skip_channels, out_channels, padding="same",
                               norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class ResNetUNetBody(nn.Module):
    """:class:`ResNetEncoder` and five :class:`DecoderBlock` (see the module docstring).

    Shape: (N, C, H, W), H and W multiples of 32 -> the decoder blocks' outputs finest first,
    at 1, 1/2, 1/4, 1/8 and 1/16 of the size, with ``width * 2**l`` channels at level ``l``.
    """

    def __init__(self, cfg: ModelConfig, width: int):
        super().__init__()
        self.encoder = ResNetEncoder(cfg.arch, cfg.in_channels)
        enc = self.encoder.channels
        dec = [width * 2**i for i in (4, 3, 2, 1, 0)]
        ins = [enc[4], *dec[:-1]]
        skips = [enc[3], enc[2], enc[1], enc[0], 0]
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o, up=cfg.up, norm=cfg.norm) for i, s, o in zip(ins, skips, dec)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.encoder(x)
        x = self.dropout(features.pop())
        decoded: list[torch.Tensor] = []
        for block in self.blocks:
            skip: torch.Tensor | None = features.pop() if len(features) else None
            x = block(x, skip)
            decoded.insert(0, x)
        return decoded
