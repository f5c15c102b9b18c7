"""The U-Net's building blocks (Ronneberger et al. 2015, Fig. 1), each a small module.

``padding="valid"`` uses unpadded 3x3 convolutions as in the paper: every conv trims one pixel
from each side, so a skip connection is centre-cropped to the decoder's size before concatenation.

Every block takes ``dims`` (2 for images, 3 for volumes, as the 3D U-Net of Cicek et al. 2016,
"3D U-Net: learning dense volumetric segmentation from sparse annotation") and, for
anisotropic volumes, a kernel or pooling size per axis (``(1, 3, 3)``: no mixing across
slices; ``(1, 2, 2)``: pool within slices only), as nnU-Net plans them (Isensee et al. 2021).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from unetseg.config import Norm, Padding, UpMode

Size = int | Sequence[int]
"""One size for every axis, or one per axis (slowest first: ``(z, y, x)``)."""


def per_axis(size: Size, dims: int) -> tuple[int, ...]:
    """``size`` as one int per axis of a ``dims``-dimensional input."""
    if isinstance(size, int):
        return (size,) * dims
    size = tuple(int(v) for v in size)
    if len(size) != dims:
        raise ValueError(f"size {size} has {len(size)} axes; the input has {dims}")
    return size


def conv_layer(dims: int) -> Callable[..., nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return nn.Conv3d if dims == 3 else nn.Conv2d


class StridedPointwiseConv(nn.Conv2d):
    """A 1x1 convolution with ``stride``, computed as subsampling then a stride-1 1x1 conv.

    The same function and parameters as ``nn.Conv2d(in, out, 1, stride=stride)`` (its state dict
    loads either way), but it never calls oneDNN's strided 1x1 weight-gradient kernel, which
    corrupts the heap in torch 2.13 on CPU for channels-last inputs of fewer than 8 channels on
    one thread (a crash seen training a width-4 residual U-Net). ``stride`` is one for both
    axes or one per axis. Shape: (N, C_in, H, W) -> (N, C_out, ceil(H / s_y), ceil(W / s_x)).
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: Size, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)
        self.subsample = per_axis(stride, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.subsample
        return self._conv_forward(x[:, :, ::s[0], ::s[1]], self.weight, self.bias)


class StridedPointwiseConv3d(nn.Conv3d):
    """:class:`StridedPointwiseConv` for volumes: ``nn.Conv3d(in, out, 1, stride=stride)``
    as subsampling then a 1x1x1 conv, ``stride`` per axis (``(1, 2, 2)`` keeps the slices).
    Shape: (N, C_in, D, H, W) -> (N, C_out, ceil(D / s_z), ceil(H / s_y), ceil(W / s_x))."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: Size, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)
        self.subsample = per_axis(stride, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.subsample
        return self._conv_forward(x[:, :, ::s[0], ::s[1], ::s[2]], self.weight, self.bias)


def strided_pointwise_conv(in_channels: int, out_channels: int, *, stride: Size,
                           bias: bool = True, dims: int = 2) -> nn.Module:
    """The strided 1x1 (or 1x1x1) projection of a ``dims``-dimensional network."""
    cls = StridedPointwiseConv3d if dims == 3 else StridedPointwiseConv
    return cls(in_channels, out_channels, stride=stride, bias=bias)


def norm_layer(norm: Norm, channels: int, dims: int = 2) -> nn.Module:
    """The normalisation after each conv; ``group`` uses up to 8 groups that divide ``channels``.

    ``instance`` is built as a group norm with one channel per group: the same function and
    parameters (``weight``, ``bias``) as ``InstanceNorm2d(affine=True)``, but PyTorch's CPU kernel
    for it runs in channels-last, where a width-16 U-Net trained 1.18x faster per step than with
    ``InstanceNorm2d`` in its fastest layout (2 cores of an AVX-512 Xeon, 4 x 1 x 256 x 256).
    """
    if norm == "batch":
        return nn.BatchNorm3d(channels) if dims == 3 else nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.GroupNorm(channels, channels)
    if norm == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; use batch, instance, group or none")


class DoubleConv(nn.Sequential):
    """(3x3 conv -> norm -> ReLU) x 2. Shape: (N, C_in, H, W) -> (N, C_out, H', W') with
    H' = H for same padding and H - 4 for valid padding; (N, C, D, H, W) for ``dims=3``, where
    an axis of ``kernel`` 1 is left as it is."""

    def __init__(self, in_channels: int, out_channels: int, *, padding: Padding, norm: Norm,
                 dims: int = 2, kernel: Size = 3):
        kernel = per_axis(kernel, dims)
        pad = tuple(k // 2 for k in kernel) if padding == "same" else 0
        bias = norm == "none"
        conv = conv_layer(dims)
        super().__init__(
            conv(in_channels, out_channels, kernel, padding=pad, bias=bias),
            norm_layer(norm, out_channels, dims),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, kernel, padding=pad, bias=bias),
            norm_layer(norm, out_channels, dims),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool (stride 2) then :class:`DoubleConv`: one step down the contracting path.
    ``pool`` per axis for volumes (``(1, 2, 2)`` keeps the slices)."""

    def __init__(self, in_channels: int, out_channels: int, *, padding: Padding, norm: Norm,
                 dims: int = 2, pool: Size = 2, kernel: Size = 3):
        pool = per_axis(pool, dims)
        super().__init__(
            nn.MaxPool3d(pool) if dims == 3 else nn.MaxPool2d(pool),
            DoubleConv(in_channels, out_channels, padding=padding, norm=norm, dims=dims,
                       kernel=kernel),
        )


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The central ``height`` x ``width`` window of ``x`` (N, C, H, W)."""
    return center_crop_to(x, [height, width])


def center_crop_to(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """The central window of ``size`` of ``x``'s last ``len(size)`` axes."""
    offset = x.dim() - len(size)
    for i in range(len(size)):
        start = (x.shape[offset + i] - size[i]) // 2
        x = x.narrow(offset + i, start, size[i])
    return x


class Up(nn.Module):
    """Upsample x2 to the skip's channel count, concatenate the skip of the same level, DoubleConv.

    ``up="transpose"`` is the paper's 2x2 up-convolution; ``bilinear``/``nearest`` interpolate and
    then map the channels with a 1x1 conv, so every mode has the same channel counts.
    ``skip_channels`` defaults to half of ``in_channels`` (the paper's halving).
    Shape: x (N, C_in, h, w), skip (N, C_skip, H, W) -> (N, C_out, ...); volumes alike with
    ``dims=3``, upsampled by ``scale`` per axis (the pooling it undoes; bilinear is trilinear).
    """

    def __init__(self, in_channels: int, out_channels: int, *, padding: Padding, norm: Norm,
                 up: UpMode, skip_channels: int | None = None, dims: int = 2,
                 scale: Size = 2, kernel: Size = 3):
        super().__init__()
        skip_channels = skip_channels or in_channels // 2
        scale = per_axis(scale, dims)
        if up == "transpose":
            transpose: Callable[..., nn.Module] = (nn.ConvTranspose3d if dims == 3
                                                   else nn.ConvTranspose2d)
            self.up: nn.Module = transpose(in_channels, skip_channels, kernel_size=scale,
                                           stride=scale)
        elif up in ("bilinear", "nearest"):
            mode = "trilinear" if up == "bilinear" and dims == 3 else up
            align = False if up == "bilinear" else None
            factor: float | tuple[float, ...] = (
                2.0 if set(scale) == {2} else tuple(float(v) for v in scale))
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=factor, mode=mode, align_corners=align),
                conv_layer(dims)(in_channels, skip_channels, kernel_size=1),
            )
        else:
            raise ValueError(f"unknown up mode {up!r}; use transpose, bilinear or nearest")
        self.conv = DoubleConv(2 * skip_channels, out_channels, padding=padding, norm=norm,
                               dims=dims, kernel=kernel)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if skip.shape[2:] != x.shape[2:]:
            skip = center_crop_to(skip, list(x.shape[2:]))
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Conv2d):
    """The 1x1 conv that maps features to one logit per class and pixel."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__(in_channels, num_classes, kernel_size=1)


class OutConv3d(nn.Conv3d):
    """The 1x1x1 conv that maps features to one logit per class and voxel."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__(in_channels, num_classes, kernel_size=1)


def out_conv(in_channels: int, num_classes: int, dims: int = 2) -> nn.Module:
    """The classifier of a ``dims``-dimensional network."""
    return OutConv3d(in_channels, num_classes) if dims == 3 else OutConv(in_channels,
                                                                         num_classes)


def pad_to_multiple(x: torch.Tensor, multiple: Size
                    ) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the spatial axes of ``x`` (N, C, H, W) at the bottom/right up to a multiple of
    ``multiple``; volumes (N, C, D, H, W) with ``multiple`` per axis or one for all three.

    Mirror padding where the image is large enough, edge replication otherwise.
    Returns the padded tensor and the original (H, W) or (D, H, W) to crop back to.
    """
    dims = x.ndim - 2
    multiples = per_axis(multiple, dims)
    shape = tuple(int(v) for v in x.shape[-dims:])
    pads = [-s % m for s, m in zip(shape, multiples, strict=True)]
    if any(pads):
        mode = "reflect" if all(p < s for p, s in zip(pads, shape, strict=True)) else "replicate"
        flat: list[int] = []
        for p in reversed(pads):  # F.pad lists the last axis first
            flat += [0, p]
        x = F.pad(x, flat, mode=mode)
    return x, shape
