"""3D augmentation: permutations checked against torch's own flips and turns, the 5-D
resampling against a quarter turn done by hand, labels kept by nearest sampling."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from unetseg.config import AugmentConfig
from unetseg.data.augment3d import (
    VolumeAugmentParams,
    apply_volume_params,
    augment_volume_batch,
    elastic_axis_scale,
    rotation_about_z,
    sample_volume_params,
)

OFF = AugmentConfig(flip=False, rot90=False, affine_p=0.0, elastic_p=0.0, intensity_p=0.0)


def _batch(n=3, shape=(4, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((n, 2, *shape), generator=g)
    masks = torch.randint(-1, 3, (n, *shape), generator=g)
    return images, masks


def test_nothing_drawn_changes_nothing():
    images, masks = _batch()
    out = augment_volume_batch(images, masks, OFF, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[0], images) and torch.equal(out[1], masks)


def test_flips_and_turns_are_torchs_permutations():
    cfg = dataclasses.replace(OFF, flip=True, rot90=True)
    images, masks = _batch(n=6)
    params = sample_volume_params(6, cfg, torch.Generator().manual_seed(2), shape=(4, 8, 8))
    got_i, got_m = apply_volume_params(images, masks, params)
    for i in range(6):
        x, m = images[i], masks[i]
        for axis, on in zip((1, 2, 3), params.flips[i].tolist(), strict=True):
            if on:
                x, m = torch.flip(x, (axis,)), torch.flip(m, (axis - 1,))
        k = int(params.quarter_turns[i])
        x, m = torch.rot90(x, k, (2, 3)), torch.rot90(m, k, (1, 2))
        assert torch.equal(got_i[i], x) and torch.equal(got_m[i], m)
    assert params.flips.any() and (params.quarter_turns > 0).any()


def _only_affine(n: int, affine: torch.Tensor) -> VolumeAugmentParams:
    false = torch.zeros(n, dtype=torch.bool)
    return VolumeAugmentParams(
        flips=torch.zeros(n, 3, dtype=torch.bool), quarter_turns=torch.zeros(n, dtype=torch.long),
        affine=affine.expand(n, 3, 4).clone(), affine_on=~false,
        lattice=torch.zeros(n, 3, 3, 3, 3), elastic_on=false, intensity_on=false,
        brightness=torch.zeros(n), contrast=torch.ones(n), gamma=torch.ones(n))


def test_a_rotation_by_90_degrees_resamples_to_a_quarter_turn():
    images, masks = _batch(n=2, shape=(4, 8, 8))
    got_i, got_m = apply_volume_params(images, masks, _only_affine(2, rotation_about_z(90)))
    # the output voxel at (x, y) reads the input at (-y, x): torch's quarter turn of the slices
    assert torch.equal(got_m, torch.rot90(masks, 1, (2, 3)))
    torch.testing.assert_close(got_i, torch.rot90(images, 1, (3, 4)), atol=1e-5, rtol=0)


def test_elastic_warps_keep_every_label_and_move_voxels():
    cfg = dataclasses.replace(OFF, elastic_p=1.0, elastic_sigma=2.0, affine_p=1.0)
    images, masks = _batch(n=2, shape=(6, 10, 12))
    out_i, out_m = augment_volume_batch(images, masks, cfg,
                                        generator=torch.Generator().manual_seed(3))
    assert out_i.shape == images.shape and out_m.dtype == masks.dtype
    assert set(out_m.unique().tolist()) <= set(masks.unique().tolist())
    assert not torch.equal(out_m, masks)


def test_the_same_seed_draws_the_same_augmentation():
    cfg = AugmentConfig()
    images, masks = _batch()
    a = augment_volume_batch(images, masks, cfg, generator=torch.Generator().manual_seed(5))
    b = augment_volume_batch(images, masks, cfg, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_elastic_sd_along_z_follows_the_spacing():
    cfg = AugmentConfig(elastic_p=1.0, elastic_grid=5, elastic_sigma=8.0)
    shape = (6, 32, 32)
    cubes = sample_volume_params(64, cfg, torch.Generator().manual_seed(3), shape=shape)
    thin = sample_volume_params(64, cfg, torch.Generator().manual_seed(3), shape=shape,
                                spacing=(4.0, 1.0, 1.0))
    # the same draws; the z displacements (channel 2: dx, dy, dz) a quarter as large
    assert torch.equal(thin.lattice[:, :2], cubes.lattice[:, :2])
    assert torch.allclose(thin.lattice[:, 2], cubes.lattice[:, 2] / 4)
    assert float(thin.lattice[:, 2].std()) == pytest.approx(8.0 / 4, rel=0.1)
    assert float(thin.lattice[:, 0].std()) == pytest.approx(8.0, rel=0.1)
    # the dense field the resampling uses: slices move a quarter as far as pixels
    field = torch.nn.functional.interpolate(thin.lattice, size=shape, mode="trilinear",
                                            align_corners=True)
    ratio = field[:, 2].abs().mean() / field[:, 0].abs().mean()
    assert float(ratio) == pytest.approx(0.25, rel=0.15)
    assert elastic_axis_scale((1.0, 0.5, 0.5)).tolist() == [1.0, 1.0, 0.5]
