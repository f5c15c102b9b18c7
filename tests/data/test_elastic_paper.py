"""The paper's elastic deformation: one field for image (bilinear or bicubic), mask (nearest)
and weight map; seeded; batched equals one sample at a time."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from unetseg.config import AugmentConfig
from unetseg.data.augment import (
    apply_params,
    augment_batch,
    sample_params,
    sampling_grid,
    upsample_lattice,
)
from unetseg.presets import paper_preset

ELASTIC = AugmentConfig(flip=False, rot90=False, affine_p=0.0, elastic_p=1.0, intensity_p=0.0)


def _ramps(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images whose value is the column index, masks = column index, weights = column index."""
    cols = torch.arange(size, dtype=torch.float32).expand(n, size, size)
    return cols.unsqueeze(1).clone(), cols.long().clone(), cols.clone()


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_image_mask_and_weights_share_one_field(mode: str):
    cfg = dataclasses.replace(ELASTIC, image_interpolation=mode)
    images, masks, weights = _ramps(4, 48)
    params = sample_params(4, cfg, torch.Generator().manual_seed(3), height=48, width=48)
    out_i, out_m, out_w = apply_params(images, masks, params, weights=weights, image_mode=mode)
    displacement = upsample_lattice(params.lattice, 48, 48)
    grid = sampling_grid(params.affine, displacement, 48, 48)

    def sample(x: torch.Tensor, how: str) -> torch.Tensor:
        return F.grid_sample(x, grid, mode=how, padding_mode="reflection", align_corners=False)

    assert torch.allclose(out_i, sample(images, mode), atol=1e-5)
    assert torch.equal(out_m, sample(masks[:, None].float(), "nearest")[:, 0].round().long())
    assert torch.allclose(out_w, sample(weights[:, None], "bilinear")[:, 0], atol=1e-5)
    # every tensor reads the same source column: the weights (bilinear) give it exactly,
    # the mask its nearest column, a bicubic image nearly the same (Keys' cubic with
    # a = -0.75 is not exact on ramps) away from the border
    assert (out_m.float() - out_w).abs().max() <= 0.5 + 1e-4
    inner = (slice(None), slice(6, -6), slice(6, -6))
    assert (out_i[:, 0] - out_w)[inner].abs().max() < (1e-4 if mode == "bilinear" else 0.25)
    moved = (out_w - weights).abs().amax(dim=(1, 2))
    assert bool((moved > 1.0).all())  # the paper's 10-pixel field really moves every sample


def test_elastic_draws_are_seeded_and_batched_equals_one_by_one():
    cfg = paper_preset().augment
    images, masks, weights = _ramps(3, 40)
    images = images + torch.rand(3, 1, 40, 40, generator=torch.Generator().manual_seed(1))
    first = augment_batch(images, masks, cfg, generator=torch.Generator().manual_seed(5),
                          weights=weights)
    again = augment_batch(images, masks, cfg, generator=torch.Generator().manual_seed(5),
                          weights=weights)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    params = sample_params(3, cfg, torch.Generator().manual_seed(5), height=40, width=40)
    for i in range(3):
        one = apply_params(images[i : i + 1], masks[i : i + 1], params.rows(slice(i, i + 1)),
                           weights=weights[i : i + 1])
        for batched, single in zip(first, one):
            assert torch.allclose(batched[i : i + 1], single, atol=1e-5)
    assert params.elastic_on.all() and params.lattice.shape == (3, 2, 3, 3)


def test_bad_image_mode_is_refused():
    images, masks, _ = _ramps(1, 8)
    params = sample_params(1, ELASTIC, torch.Generator(), height=8, width=8)
    with pytest.raises(ValueError, match="bilinear or bicubic"):
        apply_params(images, masks, params, image_mode="nearest")
