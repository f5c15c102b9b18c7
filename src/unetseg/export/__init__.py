"""Shipping a model: ONNX and TorchScript export with a parity check against PyTorch.

``export_model(model, out, "onnx")`` writes a file that describes itself (class table,
normalisation, tiling) and whose logits match the eager model; see :mod:`.pipeline`.
``export_model(model, "model.zip", "bioimageio", sample=IMAGE)`` writes both into a BioImage
Model Zoo package; see :mod:`.bioimageio`.
"""

from unetseg.export.pipeline import ExportError, ExportResult, export_model
from unetseg.export.verify import FP32_TOLERANCE, ParityError, ParityReport
from unetseg.infer.exported import ExportInfo, Tiling

__all__ = [
    "FP32_TOLERANCE",
    "ExportError",
    "ExportInfo",
    "ExportResult",
    "ParityError",
    "ParityReport",
    "Tiling",
    "export_model",
]
