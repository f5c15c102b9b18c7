"""Joint augmentation of volume batches: the 2D recipe of :mod:`unetseg.data.augment` in 3D.

Per sample: flips along each axis and in-plane quarter turns (permutations of voxels, exact),
then one resampling with a 5-D ``grid_sample`` that composes an affine map (rotation about the
slice axis, isotropic scaling within the slices, shift) with an elastic displacement field
(drawn on a coarse ``G x G x G`` lattice, upsampled trilinearly), then the intensity jitter of
2D. Images are resampled trilinearly, masks nearest, with ``padding_mode="reflection"`` and
``align_corners=False``. The z axis is never rotated into the slices: anisotropic volumes
(slices far apart) keep their slices as slices, as nnU-Net augments them. Given the voxel
spacing, the elastic displacements have the same physical sd along every axis: ``elastic_sigma``
voxels along the finest axis, proportionally fewer across thick slices (4 mm slices of 1 mm
pixels move a quarter as many slices as pixels), so a thin stack is not scrambled across its
slices.

Like 2D, every random number is drawn on the CPU from the caller's generator in a fixed order
and amount, so a seed gives the same draws on every device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from unetseg.config import AugmentConfig
from unetseg.data.augment import apply_intensity


@dataclass(frozen=True)
class VolumeAugmentParams:
    """The per-sample draws (CPU tensors) of one :func:`augment_volume_batch` call.

    Attributes:
        flips: (N, 3) bool, flip z, y, x (applied first).
        quarter_turns: (N,) int64 in 0..3, ``torch.rot90(k, dims=(-2, -1))`` after the flips.
        affine: (N, 3, 4) float32 sampling map in centred voxel units, rows (x, y, z): an output
            voxel at centred position ``p = (x, y, z)`` reads ``affine[:, :3] @ p +
            affine[:, 3]``. Identity where ``affine_on`` is false.
        affine_on: (N,) bool.
        lattice: (N, 3, G, G, G) float32 elastic displacements (dx, dy, dz) in voxels.
        elastic_on: (N,) bool.
        intensity_on, brightness, contrast, gamma: (N,) as in 2D.
    """

    flips: Tensor
    quarter_turns: Tensor
    affine: Tensor
    affine_on: Tensor
    lattice: Tensor
    elastic_on: Tensor
    intensity_on: Tensor
    brightness: Tensor
    contrast: Tensor
    gamma: Tensor

    def rows(self, index: slice) -> VolumeAugmentParams:
        """The draws of the samples ``index``, e.g. one process's share of a global batch."""
        return VolumeAugmentParams(**{f.name: getattr(self, f.name)[index]
                                      for f in fields(self)})


def elastic_axis_scale(spacing: Sequence[float] | None) -> Tensor:
    """(3,) factors of the elastic displacements' sd along (x, y, z) for voxels of ``spacing``
    ``(z, y, x)``: finest spacing / the axis's spacing (1 along the finest axis), so every
    axis moves the same physical length; ones without a spacing."""
    if spacing is None:
        return torch.ones(3)
    z, y, x = (float(v) for v in spacing)
    finest = min(z, y, x)
    return torch.tensor([finest / x, finest / y, finest / z])


def sample_volume_params(n: int, cfg: AugmentConfig, generator: torch.Generator, *,
                         shape: tuple[int, int, int], spacing: Sequence[float] | None = None
                         ) -> VolumeAugmentParams:
    """Draw the augmentation of ``n`` volumes of ``shape`` (D, H, W) with voxels of ``spacing``
    ``(z, y, x)`` (None: cubes), which scales the elastic sd per axis
    (:func:`elastic_axis_scale`). Quarter turns are 0 or 2 when H != W (an odd turn would
    change the shape)."""
    depth, height, width = shape
    flip_u = torch.rand((n, 3), generator=generator)
    turns = torch.randint(0, 4, (n,), generator=generator)
    affine_u = torch.rand((n, 5), generator=generator)
    elastic_u = torch.rand((n,), generator=generator)
    grid = cfg.elastic_grid
    lattice = torch.randn((n, 3, grid, grid, grid), generator=generator) * cfg.elastic_sigma
    lattice = lattice * elastic_axis_scale(spacing).view(1, 3, 1, 1, 1)
    intensity_u = torch.rand((n, 4), generator=generator)

    turns = turns * cfg.rot90 if height == width else (turns % 2) * 2 * cfg.rot90
    affine_on = affine_u[:, 0] < cfg.affine_p
    elastic_on = elastic_u < cfg.elastic_p
    angle = torch.deg2rad((affine_u[:, 1] * 2 - 1) * cfg.rotate_deg)
    lo, hi = cfg.scale
    scale = lo + affine_u[:, 2] * (hi - lo)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    affine = torch.zeros(n, 3, 4)
    affine[:, 0, 0], affine[:, 0, 1] = cos, -sin
    affine[:, 1, 0], affine[:, 1, 1] = sin, cos
    affine[:, 2, 2] = 1.0
    affine[:, 0, 3] = (affine_u[:, 3] * 2 - 1) * cfg.shift * width
    affine[:, 1, 3] = (affine_u[:, 4] * 2 - 1) * cfg.shift * height
    identity = torch.eye(3, 4).expand(n, 3, 4)
    affine = torch.where(affine_on.view(n, 1, 1), affine, identity)
    return VolumeAugmentParams(
        flips=(flip_u < 0.5) & cfg.flip,
        quarter_turns=turns,
        affine=affine.float(),
        affine_on=affine_on,
        lattice=lattice * elastic_on.view(n, 1, 1, 1, 1),
        elastic_on=elastic_on,
        intensity_on=intensity_u[:, 0] < cfg.intensity_p,
        brightness=(intensity_u[:, 1] * 2 - 1) * cfg.brightness,
        contrast=1.0 + (intensity_u[:, 2] * 2 - 1) * cfg.contrast,
        gamma=cfg.gamma[0] + intensity_u[:, 3] * (cfg.gamma[1] - cfg.gamma[0]),
    )


def volume_sampling_grid(affine: Tensor, displacement: Tensor | None,
                         shape: tuple[int, int, int]) -> Tensor:
    """Normalised 5-D ``grid_sample`` grid (align_corners=False) of affine + displacement maps.

    Args:
        affine: (M, 3, 4) centred-voxel sampling maps (see :class:`VolumeAugmentParams`).
        displacement: optional (M, 3, D, H, W) (dx, dy, dz) in voxels.
        shape: (D, H, W).

    Returns:
        (M, D, H, W, 3) float32 (x, y, z) in [-1, 1] for in-volume positions.
    """
    depth, height, width = shape
    device = affine.device
    x = (torch.arange(width, device=device) - (width - 1) / 2).view(1, 1, width)
    y = (torch.arange(height, device=device) - (height - 1) / 2).view(1, height, 1)
    z = (torch.arange(depth, device=device) - (depth - 1) / 2).view(depth, 1, 1)
    a = affine.to(torch.float32)[..., None, None, None]  # (M, 3, 4, 1, 1, 1)
    src = a[:, :, 0] * x + a[:, :, 1] * y + a[:, :, 2] * z + a[:, :, 3]  # (M, 3, D, H, W)
    if displacement is not None:
        src = src + displacement
    scale = torch.tensor([2 / width, 2 / height, 2 / depth], device=device).view(1, 3, 1, 1, 1)
    return (src * scale).permute(0, 2, 3, 4, 1)


def apply_volume_params(images: Tensor, masks: Tensor, params: VolumeAugmentParams,
                        ) -> tuple[Tensor, Tensor]:
    """Flips and quarter turns, then affine + elastic in one resampling, then intensity.

    Args:
        images: (N, C, D, H, W) float volumes in their read scale.
        masks: (N, D, H, W) int64 class ids (-1 ignored, preserved exactly).

    Returns:
        ``(images, masks)`` of the same shapes, dtypes and device.
    """
    if images.ndim != 5 or masks.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"images (N, C, D, H, W) and masks (N, D, H, W) expected, got"
                         f" {tuple(images.shape)} and {tuple(masks.shape)}")
    images, masks = images.clone(), masks.clone()
    for i in range(images.shape[0]):
        axes = [a for a, on in zip((-3, -2, -1), params.flips[i].tolist(), strict=True) if on]
        k = int(params.quarter_turns[i])
        if axes:
            images[i], masks[i] = images[i].flip(axes), masks[i].flip(axes)
        if k:
            images[i] = images[i].rot90(k, dims=(-2, -1))
            masks[i] = masks[i].rot90(k, dims=(-2, -1))
    warped = (params.affine_on | params.elastic_on).nonzero().flatten()
    if len(warped):
        shape = (images.shape[2], images.shape[3], images.shape[4])
        displacement = None
        if params.elastic_on[warped].any():
            displacement = F.interpolate(params.lattice[warped].to(images.device), size=shape,
                                         mode="trilinear", align_corners=True)
        grid = volume_sampling_grid(params.affine[warped].to(images.device), displacement,
                                    shape)
        idx = warped.to(images.device)
        images[idx] = F.grid_sample(images[idx], grid.to(images.dtype), mode="bilinear",
                                    padding_mode="reflection", align_corners=False)
        picked = F.grid_sample(masks[idx, None].to(grid.dtype), grid, mode="nearest",
                               padding_mode="reflection", align_corners=False)
        masks[idx] = picked[:, 0].round().to(masks.dtype)
    images = apply_intensity(images, params.intensity_on, params.gamma, params.contrast,
                             params.brightness)
    return images, masks


def augment_volume_batch(images: Tensor, masks: Tensor, cfg: AugmentConfig, *,
                         generator: torch.Generator, spacing: Sequence[float] | None = None
                         ) -> tuple[Tensor, Tensor]:
    """Randomly augment a batch of volume/mask pairs jointly (draw, then apply)."""
    n, _, depth, height, width = images.shape
    params = sample_volume_params(n, cfg, generator, shape=(depth, height, width),
                                  spacing=spacing)
    return apply_volume_params(images, masks, params)


def rotation_about_z(degrees: float) -> Tensor:
    """(3, 4) sampling map of an in-plane rotation by ``degrees`` (for tests and pictures)."""
    angle = math.radians(degrees)
    affine = torch.eye(3, 4)
    affine[0, 0], affine[0, 1] = math.cos(angle), -math.sin(angle)
    affine[1, 0], affine[1, 1] = math.sin(angle), math.cos(angle)
    return affine
