"""The receptive radius of same-padding U-Nets, which sets the halo that tiling tools crop from
the windows of a BioImage Model Zoo package (:mod:`unetseg.export.bioimageio`)."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("up", ["transpose", "bilinear", "nearest"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_receptive_radius_is_the_farthest_input_an_output_pixel_reads(depth: int, up: str
                                                                      ) -> None:
    """Brute force: the gradient of each output pixel of one pooling phase reaches exactly
    that far in a wide, randomly initialised network with batch norm (no dead paths)."""
    from unetseg.model import UNet
    from unetseg.model.geometry import receptive_radius

    torch.manual_seed(0)
    net = UNet(1, 2, depth=depth, width=8, padding="same", norm="batch", up=up).eval()
    step, radius = 2**depth, receptive_radius(depth, up)
    side = 2 * radius + 4 * step
    x = torch.randn(step, 1, side, side, requires_grad=True)  # one batch item per phase
    out = net(x)
    centre = [2 * step + radius // step * step + phase for phase in range(step)]
    picked = sum(out[b, :, p, p].sum() for b, p in enumerate(centre))
    (grad,) = torch.autograd.grad(picked, x)
    reach = 0
    for b, p in enumerate(centre):
        cols = torch.nonzero(grad[b, 0].abs().sum(0)).flatten()
        reach = max(reach, p - int(cols.min()), int(cols.max()) - p)
    assert reach == radius
