"""3D sliding windows: blended as a plain whole-volume reference blends them, streamed slab by
slab with bounded reads, and the 2D slice-by-slice baseline."""

from __future__ import annotations

import pytest
import torch

from unetseg.infer.blending import gaussian_weight
from unetseg.infer.volume import (
    gaussian_weight_nd,
    plan_volume_tile,
    slice_by_slice_logits,
    sliding_window_volume_logits,
    stream_volume_logits,
    volume_windows,
)
from unetseg.model import UNet


def _reference(predictor, volume, tile, overlap):
    """Every window one at a time into full-size buffers, weights from the 2D Gaussian's
    separable factors multiplied by a third axis by hand."""
    c, d, h, w = volume.shape
    windows = volume_windows((d, h, w), tile, overlap)
    sides = [s.stop - s.start for s in windows[0]]
    z = torch.arange(sides[0], dtype=torch.float64) - (sides[0] - 1) / 2
    gz = torch.exp(-0.5 * (z / (0.125 * sides[0])) ** 2)
    gz = gz / gz.max()
    yx = gaussian_weight(sides[1], sides[2], min_weight=1e-300, dtype=torch.float64)
    weight = (gz[:, None, None] * yx[None]).clamp_min(1e-3).float()
    total, norm = None, torch.zeros(d, h, w)
    for zs, ys, xs in windows:
        out = predictor(volume[None, :, zs, ys, xs])[0]
        if total is None:
            total = torch.zeros(out.shape[0], d, h, w)
        total[:, zs, ys, xs] += out * weight
        norm[zs, ys, xs] += weight
    return total / norm


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UNet(2, 3, depth=1, width=2, spatial_dims=3).eval()


def test_weight_is_the_2d_gaussian_times_a_third_axis():
    w3 = gaussian_weight_nd((5, 6, 7))
    torch.testing.assert_close(gaussian_weight_nd((6, 7)), gaussian_weight(6, 7))
    assert w3.shape == (5, 6, 7) and w3.max() == 1.0 and w3.min() >= 1e-3
    assert torch.equal(w3, w3.flip(0)) and torch.equal(w3, w3.flip(2))


def test_windows_cover_the_volume_and_shrink_to_it():
    windows = volume_windows((5, 20, 9), (4, 8, 16), 0.5)
    covered = torch.zeros(5, 20, 9, dtype=torch.int32)
    for zs, ys, xs in windows:
        assert (zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start) == (4, 8, 9)
        covered[zs, ys, xs] += 1
    assert covered.min() >= 1
    assert [w[0].start for w in windows] == sorted(w[0].start for w in windows)


@pytest.mark.parametrize("tile", [(4, 8, 8), (8, 16, 16), (3, 5, 12)])
def test_blended_volume_matches_the_plain_reference(net, tile):
    volume = torch.rand(2, 9, 14, 12)
    with torch.no_grad():
        got = sliding_window_volume_logits(net, volume, tile, overlap=0.5, batch_size=3)
        want = _reference(net, volume, tile, 0.5)
    assert got.shape == (3, 9, 14, 12)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_one_window_is_one_forward_pass(net):
    volume = torch.rand(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(sliding_window_volume_logits(net, volume, (8, 8, 8)),
                                   net(volume[None])[0])


def test_streaming_reads_one_window_depth_and_hands_slices_on_early(net):
    volume = torch.rand(2, 20, 8, 8)
    reads, events = [], []

    def read(z0, z1):
        reads.append((z0, z1))
        events.append(("read", z1))
        return volume[:, z0:z1]

    slabs = []
    with torch.no_grad():
        for z0, logits in stream_volume_logits(net, read, (20, 8, 8), (4, 8, 8), overlap=0.5,
                                               batch_size=1):
            events.append(("yield", z0 + logits.shape[1]))
            slabs.append((z0, logits))
        whole = sliding_window_volume_logits(net, volume, (4, 8, 8), overlap=0.5,
                                             batch_size=1)
    assert all(z1 - z0 == 4 for z0, z1 in reads)
    assert [z0 for z0, _ in slabs] == sorted(z0 for z0, _ in slabs)
    assert sum(s.shape[1] for _, s in slabs) == 20
    assert events.index(("yield", 2)) < events.index(("read", 20))  # slice 0-1 out early
    assert torch.equal(torch.cat([s for _, s in slabs], dim=1), whole)


def test_slice_by_slice_runs_a_2d_model_on_every_slice():
    torch.manual_seed(1)
    flat = UNet(1, 2, depth=1, width=2).eval()
    volume = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        got = slice_by_slice_logits(lambda s: flat(s[None])[0], volume)
        assert torch.equal(got[:, 1], flat(volume[None, :, 1])[0])
    assert got.shape == (2, 3, 8, 8)


def test_planned_tile_fits_the_budget_and_the_network():
    assert plan_volume_tile((20, 64, 64), (1, 8, 8)) == (20, 64, 64)
    tile = plan_volume_tile((200, 512, 512), (2, 16, 16), max_voxels=64**3)
    assert all(t % m == 0 for t, m in zip(tile, (2, 16, 16), strict=True))
    assert tile[0] * tile[1] * tile[2] <= 64**3
