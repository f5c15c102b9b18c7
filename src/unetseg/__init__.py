"""unetseg: semantic segmentation with the U-Net family.

Heavy modules (torch) load on first use of a name, so ``import unetseg`` and ``unetseg --help``
stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "UNet": "unetseg.model",
    "ModelConfig": "unetseg.config",
    "DataConfig": "unetseg.config",
    "AugmentConfig": "unetseg.config",
    "TrainConfig": "unetseg.config",
    "RunConfig": "unetseg.config",
    "PredictConfig": "unetseg.config",
    "UserError": "unetseg.errors",
    "ClassTable": "unetseg.data.classes",
    "fit": "unetseg.train.fit",
    "load_model": "unetseg.modelfile",
    "predict": "unetseg.api",
    "evaluate": "unetseg.api",
    "demo": "unetseg.api",
    "plan": "unetseg.api",
    "check_data": "unetseg.data.doctor",
    "convert_checkpoint": "unetseg.train.convert",
    "export_model": "unetseg.export",
    "create_app": "unetseg.serve.app",
    "run_server": "unetseg.serve.app",
    "preview_augment": "unetseg.preview",
    "preview_weights": "unetseg.preview",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unetseg' has no attribute {name!r}")
