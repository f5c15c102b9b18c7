"""Tests of unetseg.data.augment against references computed another way."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unetseg.config import AugmentConfig
from unetseg.data.augment import (
    apply_params,
    augment_batch,
    elastic_displacement,
    elastic_lattice,
    normalized_affine,
    sample_params,
    upsample_lattice,
)

OFF = AugmentConfig(flip=False, rot90=False, affine_p=0.0, elastic_p=0.0, intensity_p=0.0)
GEOMETRY = AugmentConfig(affine_p=1.0, elastic_p=1.0, intensity_p=0.0)
FULL = AugmentConfig(affine_p=1.0, elastic_p=1.0, intensity_p=1.0)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(n: int, height: int, width: int, channels: int = 2, seed: int = 0):
    g = _gen(seed + 100)
    images = torch.rand((n, channels, height, width), generator=g)
    masks = torch.randint(-1, 4, (n, height, width), generator=g)
    weights = torch.rand((n, height, width), generator=g)
    return images, masks, weights


def _blocks(n: int, height: int, width: int, block: int, seed: int = 0) -> torch.Tensor:
    """(N, H, W) int64 ids in {-1, 0, 1, 2, 3}, constant on ``block`` x ``block`` squares."""
    g = _gen(seed + 200)
    coarse = torch.randint(-1, 4, (n, 1, -(-height // block), -(-width // block)), generator=g)
    return F.interpolate(coarse.float(), scale_factor=block)[:, 0, :height, :width].long()


def test_all_off_is_exact_identity():
    images, masks, weights = _batch(4, 23, 31)
    out = augment_batch(images, masks, OFF, generator=_gen(), weights=weights)
    assert len(out) == 3
    assert torch.equal(out[0], images) and torch.equal(out[1], masks)
    assert torch.equal(out[2], weights)
    assert len(augment_batch(images, masks, OFF, generator=_gen())) == 2


@pytest.mark.parametrize("size", [(37, 37), (64, 96)])
def test_flip_only_is_exact_and_joint(size):
    images, masks, weights = _batch(32, *size)
    cfg = dataclasses.replace(OFF, flip=True)
    out_i, out_m, out_w = augment_batch(images, masks, cfg, generator=_gen(), weights=weights)
    seen = set()
    for i in range(len(images)):
        matches = [dims for dims in ((), (-1,), (-2,), (-2, -1))
                   if torch.equal(out_i[i], images[i].flip(dims))]
        assert len(matches) == 1, f"sample {i} is not an exact flip of its input"
        dims = matches[0]
        assert torch.equal(out_m[i], masks[i].flip(dims))
        assert torch.equal(out_w[i], weights[i].flip(dims))
        seen.add(dims)
    assert len(seen) == 4  # each axis flipped on about half the samples


def test_rot90_only_matches_torch_rot90_exactly():
    images, masks, weights = _batch(32, 30, 30)
    cfg = dataclasses.replace(OFF, rot90=True)
    out_i, out_m, out_w = augment_batch(images, masks, cfg, generator=_gen(), weights=weights)
    seen = set()
    for i in range(len(images)):
        ks = [k for k in range(4) if torch.equal(out_i[i], torch.rot90(images[i], k, (-2, -1)))]
        assert len(ks) == 1
        assert torch.equal(out_m[i], torch.rot90(masks[i], ks[0], (-2, -1)))
        assert torch.equal(out_w[i], torch.rot90(weights[i], ks[0], (-2, -1)))
        seen.add(ks[0])
    assert seen == {0, 1, 2, 3}


def test_non_square_dihedral_keeps_shape_and_is_exact():
    images, masks, _ = _batch(24, 64, 96)
    cfg = dataclasses.replace(OFF, flip=True, rot90=True)
    out_i, out_m = augment_batch(images, masks, cfg, generator=_gen(3))
    assert out_i.shape == images.shape and out_m.shape == masks.shape
    for i in range(len(images)):
        assert any(torch.equal(out_i[i], images[i].flip(dims)) and
                   torch.equal(out_m[i], masks[i].flip(dims))
                   for dims in ((), (-1,), (-2,), (-2, -1)))


@pytest.mark.parametrize("size", [(40, 40), (64, 96)])
def test_geometry_matches_affine_grid_reference(size):
    """Flips, turns and affine (no elastic) equal grid_sample over F.affine_grid's grid."""
    n, (height, width) = 8, size
    images, masks, weights = _batch(n, height, width)
    cfg = AugmentConfig(affine_p=1.0, elastic_p=0.0, intensity_p=0.0)
    params = sample_params(n, cfg, _gen(5), height=height, width=width)
    out_i, out_m, out_w = apply_params(images, masks, params, weights=weights)
    grid = F.affine_grid(normalized_affine(params, height, width), [n, 1, height, width],
                         align_corners=False)
    kw = dict(padding_mode="reflection", align_corners=False)
    ref_i = F.grid_sample(images, grid, mode="bilinear", **kw)
    ref_w = F.grid_sample(weights[:, None], grid, mode="bilinear", **kw)[:, 0]
    ref_m = F.grid_sample(masks[:, None].float(), grid, mode="nearest", **kw)[:, 0].long()
    torch.testing.assert_close(out_i, ref_i, atol=1e-4, rtol=0)
    torch.testing.assert_close(out_w, ref_w, atol=1e-4, rtol=0)
    assert (out_m == ref_m).float().mean() > 0.995  # nearest may differ on exact ties only


def test_affine_rotation_is_rigid_in_pixels_on_non_square():
    """A 90-degree affine turn moves a blob's centroid by a pixel-space rotation."""
    height, width = 64, 96
    yy, xx = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)),
                            indexing="ij")
    cy, cx = (height - 1) / 2, (width - 1) / 2
    blob = torch.exp(-((xx - cx - 20) ** 2 + (yy - cy - 8) ** 2) / 8.0)[None, None]
    params = sample_params(1, OFF, _gen(), height=height, width=width)
    turn = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])  # source = R(90) @ output
    params = dataclasses.replace(params, affine=turn, affine_on=torch.tensor([True]))
    out, _ = apply_params(blob, torch.zeros((1, height, width), dtype=torch.long), params)
    mass = out[0, 0] / out[0, 0].sum()
    centroid = ((mass * xx).sum() - cx, (mass * yy).sum() - cy)
    # the output point p reading source (20, 8) solves (-p_y, p_x) = (20, 8): p = (8, -20)
    assert abs(centroid[0] - 8) < 0.1 and abs(centroid[1] + 20) < 0.1


def test_mask_values_stay_in_input_set_under_full_augmentation():
    images, masks, weights = _batch(8, 48, 48)
    masks = torch.tensor([-1, 0, 3, 7])[masks.clamp_min(0) % 4]
    out_i, out_m, out_w = augment_batch(images, masks, FULL, generator=_gen(1), weights=weights)
    assert out_m.dtype == torch.int64 and out_w.dtype == weights.dtype
    assert set(out_m.unique().tolist()) <= set(masks.unique().tolist())
    assert (out_m == -1).any()
    assert not torch.equal(out_m, masks)


@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_image_and_mask_share_the_deformation(size):
    masks = _blocks(6, *size, block=16)
    images = masks[:, None].float()
    out_i, out_m = augment_batch(images, masks, GEOMETRY, generator=_gen(2))
    assert not torch.equal(out_m, masks)
    ids = out_m[:, None].float()
    uniform = F.max_pool2d(ids, 5, 1, 2) == -F.max_pool2d(-ids, 5, 1, 2)  # 5x5 constant
    agree = out_i.round().long()[:, 0] == out_m
    assert uniform.sum() > 0.3 * out_m.numel()
    assert agree[uniform[:, 0]].float().mean() >= 0.95


def test_weights_are_warped_with_the_image_field():
    images, masks, _ = _batch(6, 40, 56, channels=1)
    weights = images[:, 0].clone()
    out_i, _, out_w = augment_batch(images, masks, GEOMETRY, generator=_gen(4), weights=weights)
    torch.testing.assert_close(out_w, out_i[:, 0], atol=1e-6, rtol=0)
    assert not torch.allclose(out_w, weights)


def test_same_seed_same_output_other_seed_differs():
    images, masks, weights = _batch(4, 32, 32)
    a = augment_batch(images, masks, FULL, generator=_gen(7), weights=weights)
    b = augment_batch(images, masks, FULL, generator=_gen(7), weights=weights)
    c = augment_batch(images, masks, FULL, generator=_gen(8), weights=weights)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_elastic_field_at_lattice_points_has_std_sigma():
    sigma, size = 10.0, 65  # lattice points on pixels 0, 32, 64
    field = elastic_displacement(800, size, size, grid=3, sigma=sigma, generator=_gen())
    assert field.shape == (800, 2, size, size)
    at_points = field[:, :, ::32, ::32]
    assert abs(at_points.std().item() - sigma) < 0.05 * sigma
    assert abs(at_points.mean().item()) < 0.1 * sigma / 3


def test_elastic_field_interpolates_its_lattice():
    size = 49  # lattice (grid 4) points on pixels 0, 16, 32, 48
    lattice = elastic_lattice(3, 4, 5.0, _gen(9))
    field = elastic_displacement(3, size, size, grid=4, sigma=5.0, generator=_gen(9))
    torch.testing.assert_close(field, upsample_lattice(lattice, size, size))
    torch.testing.assert_close(field[:, :, ::16, ::16], lattice, atol=1e-5, rtol=0)


def _keys_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """(n_out, n_in) cubic-convolution interpolation, end points aligned, borders clamped."""
    def kernel(t: float) -> float:
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0

    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        s = o * (n_in - 1) / (n_out - 1)
        i0 = math.floor(s)
        for k in range(-1, 3):
            m[o, min(max(i0 + k, 0), n_in - 1)] += kernel(s - (i0 + k))
    return m


def test_elastic_upsampling_matches_independent_bicubic():
    lattice = elastic_lattice(2, 3, 10.0, _gen(11))
    height, width = 40, 57
    field = upsample_lattice(lattice, height, width).numpy()
    my, mx = _keys_matrix(3, height), _keys_matrix(3, width)
    ref = np.einsum("hi,ncij,wj->nchw", my, lattice.numpy().astype(np.float64), mx)
    np.testing.assert_allclose(field, ref, atol=1e-4)


def test_intensity_only_touches_images():
    images, masks, weights = _batch(16, 24, 24)
    cfg = AugmentConfig(flip=False, rot90=False, affine_p=0.0, elastic_p=0.0, intensity_p=1.0,
                        brightness=0.1, contrast=0.0, gamma=(1.0, 1.0))
    out_i, out_m, out_w = augment_batch(images, masks, cfg, generator=_gen(), weights=weights)
    assert torch.equal(out_m, masks) and torch.equal(out_w, weights)
    offset = (out_i - images).flatten(1)
    assert torch.allclose(offset, offset[:, :1], atol=1e-5)
    assert offset.abs().max() <= 0.1 + 1e-6 and offset[:, 0].std() > 0.01


def test_gamma_and_contrast_keep_their_anchors():
    images, masks, _ = _batch(16, 24, 24)
    gamma_only = dataclasses.replace(OFF, intensity_p=1.0, brightness=0.0, contrast=0.0)
    out, _ = augment_batch(images, masks, gamma_only, generator=_gen())
    for stat in (torch.amin, torch.amax):
        torch.testing.assert_close(stat(out, dim=(1, 2, 3)), stat(images, dim=(1, 2, 3)))
    assert not torch.allclose(out, images)
    contrast_only = dataclasses.replace(gamma_only, contrast=0.3, gamma=(1.0, 1.0))
    out, _ = augment_batch(images, masks, contrast_only, generator=_gen())
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)))
    ratio = out.std(dim=(1, 2, 3)) / images.std(dim=(1, 2, 3))
    assert ((ratio > 0.7 - 1e-4) & (ratio < 1.3 + 1e-4)).all() and ratio.std() > 0.01


def test_invalid_inputs_raise_helpful_errors():
    images, masks, _ = _batch(2, 16, 16)
    with pytest.raises(ValueError, match="masks"):
        augment_batch(images, masks[:, None], OFF, generator=_gen())
    with pytest.raises(ValueError, match="probability"):
        augment_batch(images, masks, AugmentConfig(affine_p=1.5), generator=_gen())
    with pytest.raises(ValueError, match="images"):
        augment_batch(images[0], masks, OFF, generator=_gen())
