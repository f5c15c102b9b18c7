"""Helpers for the export and serving tests: tiny models whose labels are not trivial."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unetseg.api import demo_data_root
from unetseg.config import ModelConfig
from unetseg.data.classes import ClassTable
from unetseg.data.io import read_image
from unetseg.data.normalize import ChannelStats, normalize
from unetseg.model import UNet, build_model
from unetseg.modelfile import ModelCard, save_model

ISBI_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012" / "test" / "images"
STATS = ChannelStats((0.5,), (0.17,))


def sample_images() -> list[Path]:
    """The ISBI 2012 test images, or the bundled demo images when shared data is absent."""
    found = sorted(ISBI_TEST.glob("*.png"))
    return found or sorted((demo_data_root() / "images").glob("*.png"))


def tiny_model(path: Path, *, padding: str = "same", depth: int = 2, width: int = 4,
               norm: str = "batch", seed: int = 0, arch: str = "unet",
               deep_supervision: bool = False) -> Path:
    """A randomly initialised U-Net (or variant ``arch``) saved as a model file, its last bias
    shifted so that about half of the pixels of a sample image fall in each class (so label
    comparisons mean something: many pixels lie close to the decision boundary)."""
    torch.manual_seed(seed)
    if arch == "unet" and not deep_supervision:
        net = UNet(1, 2, depth=depth, width=width, padding=padding, norm=norm).eval()  # type: ignore[arg-type]
    else:
        net = build_model(ModelConfig(1, 2, depth, width, padding, norm=norm, arch=arch,  # type: ignore[arg-type]
                                      deep_supervision=deep_supervision)).eval()
    image = torch.from_numpy(read_image(sample_images()[0]))
    x = normalize(image, STATS)[None, :, :188, :188]  # legal for valid padding of depth <= 4
    head = net.inference_head() if hasattr(net, "inference_head") else net.head
    with torch.no_grad():
        logits = net(x)[0]
        head.bias[1] -= (logits[1] - logits[0]).median()
    classes = ClassTable.from_values((0, 255), ("membrane", "cell"))
    save_model(path, net, ModelCard(net.config, classes, STATS))
    return path


def tiny_instance_model(path: Path, *, seed: int = 0) -> Path:
    """A random boundary-target U-Net (3 outputs) saved as an instance model file, its interior
    logit shifted so that its seeds cover about a third of a sample image (many objects)."""
    from unetseg.config import InstanceConfig

    torch.manual_seed(seed)
    net = UNet(1, 3, depth=2, width=4, norm="batch").eval()
    x = normalize(torch.from_numpy(read_image(sample_images()[0])), STATS)[None, :, :128, :128]
    with torch.no_grad():
        logits = net(x)[0]
        net.head.bias[1] -= (logits[1] - torch.maximum(logits[0], logits[2])).quantile(0.66)
        net.head.bias[2] -= (logits[2] - logits[0]).median()
    card = ModelCard(net.config, ClassTable.from_values((0, 255), ("background", "cell")), STATS,
                     instance=InstanceConfig(seed_threshold=0.5, min_size=0))
    save_model(path, net, card)
    return path


VOLUME_SPACING = (3.0, 1.0, 1.0)
"""The (z, y, x) voxel size :func:`tiny_volume_model` is planned for: slices three times
farther apart than pixels, so its first pooling keeps the slices (size multiple (2, 4, 4))."""


def sample_volume(shape: tuple[int, int, int] = (7, 13, 10), *, seed: int = 0) -> np.ndarray:
    """A uint8 volume ``(D, H, W)``: a bright ball in noise, so a random network's labels have
    structure. Its sides are not multiples of :func:`tiny_volume_model`'s (2, 4, 4)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    ball = (z**2 + y**2 + x**2 < 0.5) * 120.0
    return np.clip(ball + rng.normal(80, 40, shape), 0, 255).astype(np.uint8)


def tiny_volume_model(path: Path, *, seed: int = 0, padding: str = "same") -> Path:
    """A randomly initialised 3D U-Net (width 4, depth 2, instance norm, anisotropic plan of
    :data:`VOLUME_SPACING`) saved as a model file with that spacing in its card, as
    ``fit_volumes`` writes it; its last bias shifted so that about half of the voxels of
    :func:`sample_volume` fall in each class."""
    from unetseg.infer.volume import normalize_volume, volume_to_float
    from unetseg.model.geometry import anisotropic_plan

    torch.manual_seed(seed)
    kernels, pools = anisotropic_plan(VOLUME_SPACING, 2)
    net = UNet(1, 2, depth=2, width=4, padding=padding, spatial_dims=3,  # type: ignore[arg-type]
               kernel_sizes=kernels, pool_sizes=pools).eval()
    if padding == "same":
        volume = torch.from_numpy(volume_to_float(sample_volume()[None]))
        with torch.no_grad():
            logits = net(normalize_volume(volume, STATS)[None])[0]
            net.head.bias[1] -= (logits[1] - logits[0]).median()
    classes = ClassTable.from_values((0, 1), ("background", "cell"))
    save_model(path, net, ModelCard(net.config, classes, STATS,
                                    info={"spacing": list(VOLUME_SPACING)}))
    return path
