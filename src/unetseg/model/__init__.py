"""U-Net models: blocks, the UNet and its variants, and their geometry."""

from unetseg.model.geometry import (
    input_size_for_output,
    is_legal_input_size,
    legal_input_sizes,
    nearest_legal_input_size,
    valid_margin,
    valid_output_size,
)
from unetseg.model.registry import (
    ENTRY_POINT_GROUP,
    ExternalNet,
    arch_config,
    architectures,
    build_model,
    model_config,
    register_architecture,
)
from unetseg.model.segnet import SegmentationNet
from unetseg.model.unet import UNet

__all__ = [
    "ENTRY_POINT_GROUP",
    "ExternalNet",
    "SegmentationNet",
    "UNet",
    "arch_config",
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
