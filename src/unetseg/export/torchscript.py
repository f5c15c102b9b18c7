"""TorchScript export of a U-Net, loadable with ``torch.jit.load`` and no unetseg.

Two exporters: ``"script"`` (``torch.jit.script``, which compiles the forward's control flow) and
``"trace"`` (``torch.jit.trace``, which records the operations run on an example; sizes are
recorded symbolically, so other sizes work too). Both are deprecated upstream in favour of
``torch.export`` but remain the only format that loads in C++ LibTorch without extra runtimes.
The card and tiling are stored as ``_extra_files``.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from unetseg.export.graph import ENSEMBLE_LAYOUT, ExportableEnsemble, exportable
from unetseg.export.onnx import example_input
from unetseg.files import atomic_path
from unetseg.infer.exported import EXPORT_KEY, ExportInfo, Tiling, export_info, from_props, to_props
from unetseg.modelfile import FORMAT, ModelCard

ScriptExporter = Literal["script", "trace"]
SCRIPT_EXPORTERS: tuple[ScriptExporter, ...] = ("script", "trace")


def _extra_name(key: str) -> str:
    return f"{key}.json"


def export_torchscript(model: nn.Module, card: ModelCard, path: str | Path, *,
                       exporter: ScriptExporter = "script", tiling: Tiling | None = None) -> Path:
    """Write ``model`` as a TorchScript archive with the card and tiling as extra files.

    The module maps normalised images (N, C, H, W) float32 to logits, like the ONNX graph.
    """
    if exporter not in SCRIPT_EXPORTERS:
        raise ValueError(f"unknown TorchScript exporter {exporter!r}; use script or trace")
    module = exportable(model)
    info = export_info(card, exporter=f"torch.jit.{exporter}", tiling=tiling)
    if isinstance(module, ExportableEnsemble):
        info = replace(info, layout=ENSEMBLE_LAYOUT)
    extra = {_extra_name(k): v for k, v in to_props(card, info).items()}
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "script":
            scripted = torch.jit.script(module)
        else:
            with torch.no_grad():
                scripted = torch.jit.trace(module, example_input(card.model))
        with atomic_path(path) as tmp:
            torch.jit.save(scripted, str(tmp), _extra_files=extra)
    return path


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, ModelCard, ExportInfo]:
    """Load an archive written by :func:`export_torchscript` on the CPU, with its metadata."""
    extra = {_extra_name(FORMAT): "", _extra_name(EXPORT_KEY): ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    props = {k.removesuffix(".json"): v for k, v in extra.items() if v}
    card, info = from_props(props, str(path))
    return module.eval(), card, info
