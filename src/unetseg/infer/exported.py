"""What an exported model file says about itself.

An exported graph maps normalised windows ``(N, C, H, W)`` (a 3D network's ``(N, C, D, H, W)``)
to logits; everything else a user needs to run it on images travels in the file: the
:class:`~unetseg.modelfile.ModelCard` (model config, class table, normalisation) under the key
``"unetseg"`` (the same JSON as in a safetensors model file) and :class:`ExportInfo` (tiling
parameters, legal input sizes, exporter) under ``"unetseg.export"``. ONNX files keep both in
``metadata_props``, TorchScript files as ``_extra_files`` (``unetseg.json`` and
``unetseg.export.json``).

The format lives in ``infer/`` because both sides read it: :mod:`unetseg.export` writes it and
:mod:`unetseg.infer.backends` runs the files. ``export`` depends on ``infer``, never the reverse.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from unetseg.config import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_TILE, PredictConfig
from unetseg.errors import UserError
from unetseg.model.geometry import min_legal_input_size, size_multiple
from unetseg.modelfile import FORMAT, ModelCard

EXPORT_KEY = "unetseg.export"
EXPORT_VERSION = 1


@dataclass(frozen=True)
class Tiling:
    """How images larger than a window are predicted (see :mod:`unetseg.infer.predict`).

    ``tile`` is the window side for same padding and the input-window budget for valid padding;
    ``overlap`` and ``blend`` (Gaussian, ``sigma_scale`` of the side) apply to same padding.
    """

    tile: int = DEFAULT_TILE
    overlap: float = DEFAULT_OVERLAP
    batch_size: int = DEFAULT_BATCH_SIZE
    blend: str = "gaussian"
    sigma_scale: float = 0.125

    @classmethod
    def from_config(cls, config: PredictConfig) -> Tiling:
        """The tiling of ``config`` as a file stores it: an exported graph plans nothing, so a
        tile or overlap left None is the fixed default."""
        return cls(tile=config.fixed_tile, overlap=config.fixed_overlap,
                   batch_size=config.batch_size)


@dataclass(frozen=True)
class ExportInfo:
    """Everything about the exported graph that the card does not say.

    ``min_size`` and ``size_step``: a valid-padding graph accepts exactly the sides
    ``min_size + k * size_step`` (k >= 0); other sides give wrong or no output, so callers must
    check (:func:`unetseg.infer.backends.check_input_size` does). Same padding: any side >= 1
    (``min_size`` 1, ``size_step`` 1).

    ``spatial_dims`` 3: the graph maps volumes ``(N, C, D, H, W)``. ``size_multiple`` (one per
    spatial axis, slowest first) is what the graph pads each axis to a multiple of before the
    network (a window that already is one is not padded, so windows planned on it cost no
    extra work); ``spacing`` ``(z, y, x)`` is the voxel size the network was planned for
    (the training volumes' median), None for images or unknown. Files written before these
    were recorded read as 2D with no ``size_multiple``.
    """

    padding: str
    depth: int
    min_size: int
    size_step: int
    tiling: Tiling
    exporter: str
    torch_version: str
    input_name: str = "image"
    output_name: str = "logits"
    layout: str = "NCHW float32, normalised with the card's stats"
    spatial_dims: int = 2
    size_multiple: tuple[int, ...] = ()
    spacing: tuple[float, ...] | None = None

    def to_json(self) -> str:
        return json.dumps({"version": EXPORT_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> ExportInfo:
        d = json.loads(text)
        d.pop("version", None)
        d["tiling"] = Tiling(**d["tiling"])
        if "size_multiple" in d:
            d["size_multiple"] = tuple(int(v) for v in d["size_multiple"])
        if d.get("spacing") is not None:
            d["spacing"] = tuple(float(v) for v in d["spacing"])
        return cls(**d)

    def is_legal(self, side: int) -> bool:
        """Whether the graph accepts an input side of ``side`` pixels."""
        return side >= self.min_size and (side - self.min_size) % self.size_step == 0

    def legal_sizes_text(self) -> str:
        if self.size_step == 1:
            return "any height and width"
        return f"{self.min_size} + {self.size_step}*k pixels (k >= 0) per side"


def export_info(card: ModelCard, *, exporter: str, tiling: Tiling | None = None) -> ExportInfo:
    """The :class:`ExportInfo` of a model with ``card`` exported by ``exporter``."""
    import torch

    cfg = card.model
    if cfg.padding == "valid":
        min_size, step = min_legal_input_size(cfg.depth), 2**cfg.depth
    else:
        min_size, step = 1, 1
    spacing = card.info.get("spacing") if cfg.spatial_dims == 3 else None
    return ExportInfo(padding=cfg.padding, depth=cfg.depth, min_size=min_size, size_step=step,
                      tiling=tiling or Tiling(), exporter=exporter,
                      torch_version=str(torch.__version__),
                      layout=("NCDHW float32 volumes, normalised with the card's stats"
                              if cfg.spatial_dims == 3 else ExportInfo.layout),
                      spatial_dims=cfg.spatial_dims,
                      size_multiple=size_multiple(cfg.depth, cfg.spatial_dims, cfg.pool_sizes),
                      spacing=tuple(float(v) for v in spacing) if spacing else None)


def to_props(card: ModelCard, info: ExportInfo) -> dict[str, str]:
    """The string key/value pairs stored in an exported file."""
    return {FORMAT: card.to_json(), EXPORT_KEY: info.to_json()}


def from_props(props: dict[str, Any], source: str) -> tuple[ModelCard, ExportInfo]:
    """Parse what :func:`to_props` stored; :class:`UserError` naming ``source`` otherwise."""
    if FORMAT not in props or EXPORT_KEY not in props:
        raise UserError(f"{source}: no unetseg metadata in this file; export the model with"
                        " unetseg export MODEL --format onnx --out FILE")
    try:
        card = ModelCard.from_json(_text(props[FORMAT]))
        info = ExportInfo.from_json(_text(props[EXPORT_KEY]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{source}: damaged unetseg metadata ({exc}); export the model"
                        " again") from None
    return card, info


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
