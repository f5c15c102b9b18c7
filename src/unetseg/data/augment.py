"""Joint image/mask augmentation as batched torch ops on the training device.

One call of :func:`augment_batch` draws, per sample, a member of the square's symmetry group
(flips and quarter turns), a continuous affine map (rotation, isotropic scale, shift) and an
elastic displacement field, then applies them to images, masks and optional loss weights
together, followed by an intensity jitter of the images only.

Geometry is applied in two exact-by-construction steps that together are a single resampling:

1. flips and quarter turns are permutations of pixels, applied with ``torch.flip`` /
   ``torch.rot90`` (bit-exact for every image size, no interpolation);
2. the affine map and the elastic field are composed into one sampling grid and applied with one
   ``grid_sample`` call per tensor kind (image bilinear, or bicubic with
   ``AugmentConfig.image_interpolation``, mask nearest, weights bilinear, all with
   ``padding_mode="reflection"`` and ``align_corners=False``), only on the samples that drew one.

Composing the permutations into the grid as well would be mathematically the same, but
``grid_sample`` reproduces an integer pixel position exactly only when the size is a power of
two; elsewhere a pure flip would come out of the bilinear path off by float rounding.

All random numbers are drawn on the CPU from the caller's ``torch.Generator`` in a fixed order
and amount (whatever the probabilities), then moved to the data's device, so a seed gives the
same draws on every device. :func:`sample_params` and :func:`apply_params` expose the two halves.

Coordinates: ``(x, y)`` is (column, row). Geometry maps each output pixel to the source position
it reads; pixel-unit maps are centred on the image centre ``((W - 1) / 2, (H - 1) / 2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from unetseg.config import AugmentConfig

_EPS = 1e-6


@dataclass(frozen=True)
class AugmentParams:
    """The per-sample draws of one :func:`augment_batch` call (CPU tensors).

    Attributes:
        flip_y: (N,) bool, flip rows (``torch.flip(dims=(-2,))``), applied first.
        flip_x: (N,) bool, flip columns (``torch.flip(dims=(-1,))``), applied first.
        quarter_turns: (N,) int64 in 0..3, then ``torch.rot90(k, dims=(-2, -1))``.
        affine: (N, 2, 3) float32 sampling map in centred pixel units: an output pixel at
            centred position ``p`` reads the flipped/turned image at ``affine[:, :2] @ p +
            affine[:, 2]``. Identity where ``affine_on`` is false.
        affine_on: (N,) bool.
        lattice: (N, 2, G, G) float32 elastic displacements (dx, dy) in pixels on the coarse
            lattice; zero where ``elastic_on`` is false.
        elastic_on: (N,) bool.
        intensity_on: (N,) bool.
        brightness: (N,) float32 offset added to the image.
        contrast: (N,) float32 factor on the deviation from the per-sample mean.
        gamma: (N,) float32 exponent on the min-max rescaled image.
    """

    flip_y: Tensor
    flip_x: Tensor
    quarter_turns: Tensor
    affine: Tensor
    affine_on: Tensor
    lattice: Tensor
    elastic_on: Tensor
    intensity_on: Tensor
    brightness: Tensor
    contrast: Tensor
    gamma: Tensor

    def rows(self, index: slice) -> AugmentParams:
        """The draws of the samples ``index``, e.g. one process's share of a global batch."""
        return AugmentParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def augment_batch(
    images: Tensor,
    masks: Tensor,
    cfg: AugmentConfig,
    *,
    generator: torch.Generator,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """Randomly augment a batch of image/mask pairs (and loss weights) jointly.

    Args:
        images: (N, C, H, W) floating images in their read scale (about [0, 1]), before
            normalisation. Values are not clipped after the intensity jitter.
        masks: (N, H, W) int64 class ids; -1 (ignore) or any other id is preserved exactly.
        cfg: probabilities and ranges of each component.
        generator: CPU generator, the only source of randomness.
        weights: optional (N, H, W) float per-pixel loss weights, warped like the image.

    Returns:
        ``(images, masks)`` or ``(images, masks, weights)`` when ``weights`` is given; same
        shapes, dtypes and device as the inputs. Tensors no component touched may be returned
        as the input objects themselves (never modified in place).
    """
    _check_inputs(images, masks, weights)
    n, _, height, width = images.shape
    params = sample_params(n, cfg, generator, height=height, width=width)
    return apply_params(images, masks, params, weights=weights,
                        image_mode=cfg.image_interpolation)


def sample_params(
    n: int, cfg: AugmentConfig, generator: torch.Generator, *, height: int, width: int
) -> AugmentParams:
    """Draw the per-sample augmentation parameters for a batch of ``n`` images of H x W.

    Always draws the same amount of random numbers in the same order, whatever the
    probabilities, so configs that differ only in probabilities share a random stream. On
    non-square images quarter turns are restricted to 0 or 2 (an odd turn would change shape).

    Returns:
        :class:`AugmentParams` of CPU tensors.
    """
    _check_config(cfg)
    if generator.device.type != "cpu":
        raise ValueError("generator must be a CPU torch.Generator; draws are moved to the device")
    flip_u = torch.rand((n, 2), generator=generator)
    turns = torch.randint(0, 4, (n,), generator=generator)
    affine_u = torch.rand((n, 5), generator=generator)
    elastic_u = torch.rand((n,), generator=generator)
    lattice = elastic_lattice(n, cfg.elastic_grid, cfg.elastic_sigma, generator)
    intensity_u = torch.rand((n, 4), generator=generator)

    flips = (flip_u < 0.5) & cfg.flip
    turns = turns * cfg.rot90 if height == width else (turns % 2) * 2 * cfg.rot90
    affine_on = affine_u[:, 0] < cfg.affine_p
    elastic_on = elastic_u < cfg.elastic_p
    return AugmentParams(
        flip_y=flips[:, 0],
        flip_x=flips[:, 1],
        quarter_turns=turns,
        affine=_draw_affine(affine_u[:, 1:], affine_on, cfg, height, width),
        affine_on=affine_on,
        lattice=lattice * elastic_on.view(n, 1, 1, 1),
        elastic_on=elastic_on,
        intensity_on=intensity_u[:, 0] < cfg.intensity_p,
        brightness=_spread(intensity_u[:, 1], cfg.brightness),
        contrast=1.0 + _spread(intensity_u[:, 2], cfg.contrast),
        gamma=cfg.gamma[0] + intensity_u[:, 3] * (cfg.gamma[1] - cfg.gamma[0]),
    )


def apply_params(
    images: Tensor, masks: Tensor, params: AugmentParams, *, weights: Tensor | None = None,
    image_mode: str = "bilinear",
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """Apply drawn parameters: flips, quarter turns, then affine + elastic, then intensity.

    ``image_mode`` is how images are resampled (``"bilinear"`` or ``"bicubic"``); masks are
    always resampled nearest and weights bilinearly, with the same sampling grid.
    Shapes and return value as in :func:`augment_batch`.
    """
    _check_inputs(images, masks, weights)
    if image_mode not in ("bilinear", "bicubic"):
        raise ValueError(f"image_mode must be bilinear or bicubic, got {image_mode!r}")
    images, masks, weights = _apply_dihedral(images, masks, weights, params)
    images, masks, weights = _apply_warp(images, masks, weights, params, image_mode)
    images = _apply_intensity(images, params)
    return (images, masks) if weights is None else (images, masks, weights)


def elastic_lattice(n: int, grid: int, sigma: float, generator: torch.Generator) -> Tensor:
    """Coarse elastic displacements: i.i.d. normal with std ``sigma`` pixels.

    Returns:
        (N, 2, grid, grid) float32 CPU tensor of (dx, dy) in pixels.
    """
    if grid < 2:
        raise ValueError(f"elastic grid must be at least 2 lattice points per side, got {grid}")
    if sigma < 0:
        raise ValueError(f"elastic sigma must be >= 0 pixels, got {sigma}")
    return torch.randn((n, 2, grid, grid), generator=generator) * sigma


def upsample_lattice(lattice: Tensor, height: int, width: int) -> Tensor:
    """Per-pixel displacements from a coarse lattice spanning the image, bicubically.

    The lattice's corner points sit on the corner pixels (``align_corners=True``), so a pixel on
    a lattice point gets that point's value exactly.

    Shape:
        (N, 2, G, G) -> (N, 2, H, W), same units (pixels) and device.
    """
    return F.interpolate(lattice, size=(height, width), mode="bicubic", align_corners=True)


def elastic_displacement(
    n: int,
    height: int,
    width: int,
    *,
    grid: int,
    sigma: float,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """Smooth random displacement fields as in the U-Net paper (Ronneberger et al. 2015).

    Displacements drawn on a ``grid`` x ``grid`` lattice from N(0, sigma^2) pixels (drawn on
    the CPU from ``generator``) and upsampled bicubically to every pixel.

    Returns:
        (N, 2, H, W) float32 (dx, dy) in pixels on ``device``: a pixel reads the source at its
        own position plus this displacement.
    """
    lattice = elastic_lattice(n, grid, sigma, generator).to(device)
    return upsample_lattice(lattice, height, width)


def normalized_affine(params: AugmentParams, height: int, width: int) -> Tensor:
    """The flips, quarter turns and affine map of ``params`` as one normalised matrix.

    For use with ``F.affine_grid(theta, size, align_corners=False)``: sampling the input with
    that grid equals :func:`apply_params` without elastic and intensity, up to float rounding.

    Returns:
        (N, 2, 3) float32 CPU tensor.
    """
    n = params.affine.shape[0]
    half = torch.tensor([width / 2, height / 2])
    linear = params.affine[:, :, :2] * half.view(1, 1, 2) / half.view(1, 2, 1)
    shift = params.affine[:, :, 2] / half
    dihedral = _dihedral_matrix(params)  # (N, 2, 2)
    theta = torch.empty((n, 2, 3))
    theta[:, :, :2] = dihedral @ linear
    theta[:, :, 2] = (dihedral @ shift.unsqueeze(-1)).squeeze(-1)
    return theta


def _dihedral_matrix(params: AugmentParams) -> Tensor:
    """(N, 2, 2) normalised source map of flip-then-rot90: source = flip @ turn @ output."""
    turn = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # torch.rot90 k=1: out(x, y) = in(-y, x)
    turns = torch.stack([torch.matrix_power(turn, int(k)) for k in params.quarter_turns])
    signs = torch.stack([params.flip_x, params.flip_y], dim=1).float() * -2 + 1  # (N, 2)
    return signs.unsqueeze(-1) * turns


def _spread(u: Tensor, half_width: float) -> Tensor:
    """Map uniform [0, 1) draws to uniform [-half_width, half_width)."""
    return (u * 2 - 1) * half_width


def _draw_affine(
    u: Tensor, on: Tensor, cfg: AugmentConfig, height: int, width: int
) -> Tensor:
    """(N, 2, 3) centred-pixel sampling maps from (N, 4) uniforms; identity where ``on`` is off.

    source = R(angle) / scale @ p + shift: the content turns by the angle (either sign, the range
    is symmetric), is magnified by the scale and moves by minus the shift (pixels).
    """
    angle = _spread(u[:, 0], math.radians(cfg.rotate_deg))
    scale = cfg.scale[0] + u[:, 1] * (cfg.scale[1] - cfg.scale[0])
    shift = torch.stack([_spread(u[:, 2], cfg.shift) * width,
                         _spread(u[:, 3], cfg.shift) * height], dim=1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    affine = torch.stack([torch.stack([cos, -sin, shift[:, 0]], dim=1),
                          torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand_as(affine)
    return torch.where(on.view(-1, 1, 1), affine, identity)


def _apply_dihedral(
    images: Tensor, masks: Tensor, weights: Tensor | None, params: AugmentParams
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Flip then quarter-turn each sample exactly (``torch.flip`` / ``torch.rot90``)."""
    codes = params.flip_y.long() * 8 + params.flip_x.long() * 4 + params.quarter_turns
    if not codes.any():
        return images, masks, weights
    weights = None if weights is None else _dihedral(weights, codes)
    return _dihedral(images, codes), _dihedral(masks, codes), weights


def _dihedral(x: Tensor, codes: Tensor) -> Tensor:
    """Apply per-sample codes (8 flip_y + 4 flip_x + turns) to the last two axes of (N, ..., H, W),
    one batched op per distinct code."""
    out = x.clone()
    for code in codes.unique().tolist():
        if code == 0:
            continue
        idx = (codes == code).nonzero().flatten().to(x.device)
        dims = [d for d, bit in ((-2, 8), (-1, 4)) if code & bit]
        part = torch.flip(x[idx], dims) if dims else x[idx]
        out[idx] = torch.rot90(part, code % 4, dims=(-2, -1))
    return out


def _apply_warp(
    images: Tensor, masks: Tensor, weights: Tensor | None, params: AugmentParams,
    image_mode: str = "bilinear",
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Affine + elastic by one ``grid_sample`` per tensor kind, on the samples that drew one."""
    selected = params.affine_on | params.elastic_on
    if not selected.any():
        return images, masks, weights
    device = images.device
    height, width = images.shape[-2:]
    idx = selected.nonzero().flatten()
    affine = params.affine[idx].to(device)
    displacement = None
    if params.elastic_on[idx].any():
        displacement = upsample_lattice(params.lattice[idx].to(device), height, width)
    grid = sampling_grid(affine, displacement, height, width)  # (M, H, W, 2)
    idx = idx.to(device)

    def warp(x: Tensor, mode: str) -> Tensor:
        return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode="reflection",
                             align_corners=False)

    images = _put(images, idx, warp(images[idx], image_mode))
    mask_float = masks[idx].unsqueeze(1).to(torch.float32)
    masks = _put(masks, idx, warp(mask_float, "nearest").squeeze(1).round().to(masks.dtype))
    if weights is not None:
        weights = _put(weights, idx, warp(weights[idx].unsqueeze(1), "bilinear").squeeze(1))
    return images, masks, weights


def sampling_grid(
    affine: Tensor, displacement: Tensor | None, height: int, width: int
) -> Tensor:
    """Normalised ``grid_sample`` grid (align_corners=False) of affine + displacement maps.

    Args:
        affine: (M, 2, 3) centred-pixel sampling maps (see :class:`AugmentParams`).
        displacement: optional (M, 2, H, W) (dx, dy) in pixels, added to the affine position.
        height: H in pixels.
        width: W in pixels.

    Returns:
        (M, H, W, 2) float32 (x, y) in [-1, 1] for in-image positions, on ``affine``'s device.
    """
    device = affine.device
    u = torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2  # (W,)
    v = torch.arange(height, device=device, dtype=torch.float32) - (height - 1) / 2  # (H,)
    a = affine.to(torch.float32).unsqueeze(-1).unsqueeze(-1)  # (M, 2, 3, 1, 1)
    src = a[:, :, 0] * u + a[:, :, 1] * v.unsqueeze(-1) + a[:, :, 2]  # (M, 2, H, W)
    if displacement is not None:
        src = src + displacement
    scale = torch.tensor([2 / width, 2 / height], device=device).view(1, 2, 1, 1)
    return (src * scale).permute(0, 2, 3, 1)


def _apply_intensity(images: Tensor, params: AugmentParams) -> Tensor:
    return apply_intensity(images, params.intensity_on, params.gamma, params.contrast,
                           params.brightness)


def apply_intensity(images: Tensor, on: Tensor, gamma: Tensor, contrast: Tensor,
                    brightness: Tensor) -> Tensor:
    """Gamma (on the min-max rescaled sample), contrast and brightness, per selected sample.

    ``images`` (N, C, ...) of any number of spatial axes; ``on`` (N,) bool and the three
    (N,) draws as in :class:`AugmentParams`."""
    if not on.any():
        return images
    idx = on.nonzero().flatten()
    view = (-1,) + (1,) * (images.ndim - 1)
    axes = tuple(range(1, images.ndim))
    gamma_t = gamma[idx].to(images.device, images.dtype).view(view)
    contrast_t = contrast[idx].to(images.device, images.dtype).view(view)
    brightness_t = brightness[idx].to(images.device, images.dtype).view(view)
    idx = idx.to(images.device)
    x = images[idx]  # (M, C, ...)
    low = x.amin(dim=axes, keepdim=True)
    span = (x.amax(dim=axes, keepdim=True) - low).clamp_min(_EPS)
    x = low + ((x - low) / span).clamp(0, 1).pow(gamma_t) * span
    mean = x.mean(dim=axes, keepdim=True)
    x = mean + (x - mean) * contrast_t + brightness_t
    return _put(images, idx, x)


def _put(full: Tensor, idx: Tensor, part: Tensor) -> Tensor:
    """``full`` with rows ``idx`` replaced by ``part`` (a new tensor; ``part`` if all rows)."""
    if idx.numel() == full.shape[0]:
        return part
    out = full.clone()
    out[idx] = part
    return out


def _check_config(cfg: AugmentConfig) -> None:
    for name in ("affine_p", "elastic_p", "intensity_p"):
        p = getattr(cfg, name)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"AugmentConfig.{name} must be a probability in [0, 1], got {p}")
    if not 0 < cfg.scale[0] <= cfg.scale[1]:
        raise ValueError(f"AugmentConfig.scale must be (low, high) with 0 < low <= high, "
                         f"got {cfg.scale}")
    if not 0 < cfg.gamma[0] <= cfg.gamma[1]:
        raise ValueError(f"AugmentConfig.gamma must be (low, high) with 0 < low <= high, "
                         f"got {cfg.gamma}")


def _check_inputs(images: Tensor, masks: Tensor, weights: Tensor | None) -> None:
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a floating (N, C, H, W) tensor, got "
                         f"{tuple(images.shape)} {images.dtype}")
    n, _, height, width = images.shape
    if tuple(masks.shape) != (n, height, width) or masks.is_floating_point():
        raise ValueError(f"masks must be integer (N, H, W) = {(n, height, width)} class ids, got "
                         f"{tuple(masks.shape)} {masks.dtype}; squeeze a channel axis first")
    if weights is not None and tuple(weights.shape) != (n, height, width):
        raise ValueError(f"weights must be (N, H, W) = {(n, height, width)}, got "
                         f"{tuple(weights.shape)}")
