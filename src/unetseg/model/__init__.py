"""U-Net models: blocks, the UNet, and their geometry."""

from unetseg.model.geometry import (
    input_size_for_output,
    is_legal_input_size,
    legal_input_sizes,
    nearest_legal_input_size,
    valid_margin,
    valid_output_size,
)
from unetseg.model.registry import (
    ExternalNet,
    architectures,
    build_model,
    model_config,
    register_architecture,
)
from unetseg.model.unet import UNet

__all__ = [
    "ExternalNet",
    "UNet",
    "architectures",
    "build_model",
    "model_config",
    "register_architecture",
    "input_size_for_output",
    "is_legal_input_size",
    "legal_input_sizes",
    "nearest_legal_input_size",
    "valid_margin",
    "valid_output_size",
]
