"""ONNX export of a U-Net with dynamic batch, height and width (and depth for a 3D U-Net).

Two exporters, both ``torch.onnx.export``:

* ``"dynamo"`` (``dynamo=True``): ``torch.export`` captures the graph symbolically and onnxscript
  translates it. The maintained path; the ONNX input shape names the legal sizes of a
  valid-padding model (``"16*height_steps + 188"``), because the dynamic height and width are
  declared as ``step * k + min`` with ``torch.export.Dim``.
* ``"legacy"`` (``dynamo=False``): the TorchScript tracer with ``dynamic_axes``. Deprecated
  upstream; kept as the fallback. Its dims are plain names (``"height"``).

Either way ONNX Runtime does not enforce the valid-padding sizes: an illegal side can run and
give wrong logits, so callers check the side first (see
:class:`~unetseg.infer.exported.ExportInfo`).
The graph is :func:`~unetseg.export.graph.exportable`'s module, the model's layers with a
forward free of size-dependent Python branches; a model set's is
:class:`~unetseg.export.graph.ExportableEnsemble`, its members' graphs and normalisations
averaged in one graph.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from unetseg.config import ModelConfig
from unetseg.export.graph import ENSEMBLE_LAYOUT, ExportableEnsemble, exportable
from unetseg.files import atomic_path
from unetseg.infer.exported import Tiling, export_info, to_props
from unetseg.model.geometry import min_legal_input_size, size_multiple
from unetseg.modelfile import ModelCard

OnnxExporter = Literal["dynamo", "legacy"]
ONNX_EXPORTERS: tuple[OnnxExporter, ...] = ("dynamo", "legacy")
OPSET = 18
INPUT, OUTPUT = "image", "logits"


def example_input(cfg: ModelConfig) -> torch.Tensor:
    """A batch of 2 for tracing; sides of at least two size steps above the minimum, so no
    dynamic dimension is 0 or 1 (``torch.export`` would specialise those). Volumes: three
    sides, each off its axis' size multiple."""
    generator = torch.Generator().manual_seed(0)
    if cfg.spatial_dims == 3:
        multiple = size_multiple(cfg.depth, 3, cfg.pool_sizes)
        sides = [(2 + a) * m + 1 + 2 * a for a, m in enumerate(multiple)]
        return torch.randn(2, cfg.in_channels, *sides, generator=generator)
    if cfg.padding == "valid":
        low, step = min_legal_input_size(cfg.depth), 2**cfg.depth
        height, width = low + 2 * step, low + 3 * step
    else:
        height, width = 2 * 2**cfg.depth + 3, 3 * 2**cfg.depth + 5
    return torch.randn(2, cfg.in_channels, height, width, generator=generator)


def spatial_axes(cfg: ModelConfig) -> tuple[str, ...]:
    """The names of the graph's spatial input axes, slowest first."""
    return ("depth", "height", "width") if cfg.spatial_dims == 3 else ("height", "width")


def _dynamic_shapes(cfg: ModelConfig) -> dict[str, Any]:
    from torch.export import Dim

    if cfg.padding == "valid":
        low, step = min_legal_input_size(cfg.depth), 2**cfg.depth
        height = step * Dim("height_steps", min=0) + low
        width = step * Dim("width_steps", min=0) + low
        return {"x": {0: Dim("batch"), 2: height, 3: width}}
    # torch.export specialises sizes 0 and 1: declare sides whose every level has >= 2 pixels;
    # the graph is the same for smaller ones (the parity check runs 1 x 1 and other tiny sizes)
    multiple = size_multiple(cfg.depth, cfg.spatial_dims, cfg.pool_sizes)
    axes = {2 + a: Dim(name, min=m + 1)
            for a, (name, m) in enumerate(zip(spatial_axes(cfg), multiple, strict=True))}
    return {"x": {0: Dim("batch"), **axes}}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints, deprecation warnings and info logs."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _dynamo(module: nn.Module, cfg: ModelConfig) -> Any:
    with _quiet():
        program = torch.onnx.export(module, (example_input(cfg),), None, dynamo=True,
                                    input_names=[INPUT], output_names=[OUTPUT],
                                    opset_version=OPSET, dynamic_shapes=_dynamic_shapes(cfg),
                                    verbose=False)
    assert program is not None
    return program.model_proto


def _legacy(module: nn.Module, cfg: ModelConfig) -> Any:
    import onnx

    names = spatial_axes(cfg)
    axes = {INPUT: {0: "batch", **{2 + a: n for a, n in enumerate(names)}},
            OUTPUT: {0: "batch", **{2 + a: f"out_{n}" for a, n in enumerate(names)}}}
    with tempfile.TemporaryDirectory(prefix="unetseg-onnx-") as folder, _quiet():
        target = Path(folder) / "model.onnx"
        torch.onnx.export(module, (example_input(cfg),), target, dynamo=False,
                          input_names=[INPUT], output_names=[OUTPUT], opset_version=OPSET,
                          dynamic_axes=axes)
        return onnx.load(str(target))


def export_onnx(model: nn.Module, card: ModelCard, path: str | Path, *,
                exporter: OnnxExporter = "dynamo", tiling: Tiling | None = None) -> Path:
    """Write ``model`` as an ONNX file with the card and tiling in its ``metadata_props``.

    The graph maps normalised images ``image`` (N, C, H, W) float32 to ``logits`` (N, K, H', W')
    with dynamic N, H and W (legal sizes only for valid padding); a 3D network's volumes
    (N, C, D, H, W) to (N, K, D, H, W) with dynamic N, D, H and W, each axis padded inside the
    graph to its own size multiple. The file is written atomically; it is not verified here
    (see :mod:`unetseg.export.verify`).

    Raises:
        ImportError: onnx or onnxscript is not installed.
        Exception: whatever the exporter raises for a graph it cannot handle.
    """
    import onnx

    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"unknown ONNX exporter {exporter!r}; use dynamo or legacy")
    module = exportable(model)
    make = _dynamo if exporter == "dynamo" else _legacy
    proto = make(module, card.model)
    info = export_info(card, exporter=f"torch.onnx.export(dynamo={exporter == 'dynamo'})",
                       tiling=tiling)
    if isinstance(module, ExportableEnsemble):
        info = replace(info, layout=ENSEMBLE_LAYOUT)
    onnx.helper.set_model_props(proto, to_props(card, info))
    onnx.checker.check_model(proto)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return path


def read_onnx_props(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (without loading its weights into a session)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
