"""An image layer's data as the model's input images, and the shape of the labels it gets.

napari holds an image as a gray ``(Y, X)`` array, an RGB(A) ``(..., Y, X, 3|4)`` array (the
layer's ``rgb``), or any other array whose last two axes are Y and X. For a model that takes
``C`` channels:

* RGB layers are read channel-last; an alpha channel is dropped for a 3-channel model.
* ``(..., C, Y, X)`` with ``C > 1`` is read channel-first (napari shows C as a slider).
* For a gray model (``C = 1``) every axis before Y and X is a stack of gray images, each
  predicted on its own: an EM stack ``(Z, Y, X)`` gets labels ``(Z, Y, X)``.

Anything else is a channel-count mismatch, a :class:`~unetseg.errors.UserError` naming the
layer and the fix. Samples are scaled as :func:`unetseg.data.io.read_image` scales a file
(uint8 / 255, uint16 / 65535, bool 0/1, float as is), so a layer opened from a file predicts
as ``unetseg predict`` predicts that file.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from unetseg.errors import UserError

Layout = Literal["gray", "rgb", "channels-first", "stack"]


@dataclass(frozen=True)
class Planes:
    """The model inputs of an image layer.

    Attributes:
        data: the layer's array (numpy, dask, zarr: anything indexable with a shape).
        layout: how it is read (see the module docstring).
        channels: the model's input channels ``C``.
        lead: the stack axes; the labels have the shape ``lead + (Y, X)``.
        height, width: Y and X in pixels.
    """

    data: Any
    layout: Layout
    channels: int
    lead: tuple[int, ...]
    height: int
    width: int

    @property
    def count(self) -> int:
        """How many images the layer holds (1 without stack axes)."""
        return int(np.prod(self.lead, dtype=np.int64))

    @property
    def labels_shape(self) -> tuple[int, ...]:
        return (*self.lead, self.height, self.width)

    def indices(self) -> Iterator[tuple[int, ...]]:
        """The stack positions, row-major (``()`` once without stack axes)."""
        return itertools.product(*(range(n) for n in self.lead))

    def image(self, index: tuple[int, ...], name: str = "image") -> np.ndarray:
        """The input at stack position ``index``: ``(C, Y, X)`` float32 in the read scale."""
        raw = np.asarray(self.data[index])
        if self.layout == "rgb":
            raw = np.moveaxis(raw[..., : self.channels], -1, 0)
        elif self.layout in ("gray", "stack"):
            raw = raw[None]
        return np.ascontiguousarray(_to_float(raw, name))


def model_planes(data: Any, *, rgb: bool, in_channels: int, name: str = "image") -> Planes:
    """How a layer's ``data`` (``rgb`` as napari says) feeds a model of ``in_channels``.

    Raises:
        UserError: the layer's channels do not match the model's (naming the layer, both
            counts and what to do), or it has fewer than two axes.
    """
    shape = tuple(int(n) for n in data.shape)
    want = {1: "1-channel (gray)", 3: "3-channel (RGB)"}.get(in_channels,
                                                           f"{in_channels}-channel")
    if rgb and len(shape) >= 3:
        have = shape[-1]
        if have == in_channels or (have == 4 and in_channels == 3):
            return Planes(data, "rgb", in_channels, shape[:-3], shape[-3], shape[-2])
        fix = ("split its colours (right-click the layer: Split RGB) and predict one of them,"
               " or choose a gray layer") if in_channels == 1 else "choose another layer"
        raise UserError(f"layer '{name}': the model takes {want} images but this layer is"
                        f" {'RGBA' if have == 4 else 'RGB'} {shape}; {fix}")
    if len(shape) < 2:
        raise UserError(f"layer '{name}': shape {shape} is not an image; choose a layer with"
                        " Y and X axes")
    if in_channels == 1:
        layout: Layout = "gray" if len(shape) == 2 else "stack"
        return Planes(data, layout, 1, shape[:-2], shape[-2], shape[-1])
    if len(shape) >= 3 and shape[-3] == in_channels:
        return Planes(data, "channels-first", in_channels, shape[:-3], shape[-2], shape[-1])
    raise UserError(f"layer '{name}': the model takes {want} images but this layer has shape"
                    f" {shape}, with no axis of {in_channels} channels before Y and X; open the"
                    f" image as RGB or with its channels first (C, Y, X)")


def _to_float(raw: np.ndarray, name: str) -> np.ndarray:
    """Samples to float32 as :func:`unetseg.data.io.scale_to_float` reads a file's."""
    if raw.dtype == np.bool_:
        return raw.astype(np.float32)
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / np.float32(255)
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / np.float32(65535)
    if np.issubdtype(raw.dtype, np.floating):
        out = raw.astype(np.float32)
        if not np.isfinite(out).all():
            raise UserError(f"layer '{name}': holds NaN or infinite values; replace them before"
                            " predicting")
        return out
    raise UserError(f"layer '{name}': samples of type {raw.dtype} are not what the model was"
                    " trained on (8- or 16-bit unsigned, or float); convert the layer first")
