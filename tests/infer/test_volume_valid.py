"""The valid-padding 3D U-Net on volumes: the paper's overlap-tile strategy with mirrored
borders, per-axis sizes from the network's kernel and pooling plan, equal to one forward pass
over the whole mirrored volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unetseg.api import predict_volumes
from unetseg.data.classes import ClassTable
from unetseg.data.normalize import ChannelStats
from unetseg.errors import UserError
from unetseg.infer.tiling import reflect_indices
from unetseg.infer.volume import (
    normalize_volume,
    plan_valid_volume,
    predict_volume_logits,
    stream_valid_volume_logits,
)
from unetseg.model import UNet
from unetseg.model.geometry import (
    valid_input_size_axis,
    valid_margin,
    valid_margin_axis,
    valid_output_size_axis,
)
from unetseg.modelfile import ModelCard, save_model

ANISOTROPIC = {"kernel_sizes": ((1, 3, 3), (3, 3, 3)), "pool_sizes": ((1, 2, 2),)}


def _net(**plan) -> UNet:
    torch.manual_seed(0)
    return UNet(1, 2, depth=1, width=2, padding="valid", norm="none", spatial_dims=3,
                **plan).eval()


def _one_pass(net: UNet, volume: torch.Tensor, padded: tuple[int, int, int]) -> torch.Tensor:
    """The reference: mirror the whole volume (C, D, H, W) by each axis's margin (by hand,
    numpy's reflect padding) to ``padded`` and run the network once, cropped to the volume."""
    c, *shape = volume.shape
    margins = [(net.output_size(*padded)[a] - padded[a]) // -2 for a in range(3)]
    pads = [(0, 0)] + [(m, p - m - n) for m, p, n in zip(margins, padded, shape, strict=True)]
    mirrored = torch.from_numpy(np.pad(volume.numpy(), pads, mode="reflect"))
    with torch.no_grad():
        out = net(mirrored[None])[0]
    return out[:, :shape[0], :shape[1], :shape[2]]


def _output_or_zero(size, kernels, pools) -> int:
    try:
        return valid_output_size_axis(size, kernels, pools)
    except UserError:
        return 0


@pytest.mark.parametrize("kernels, pools", [([3, 3], [2]), ([3] * 4, [2] * 3),
                                            ([1, 3, 3], [1, 2]), ([1, 1, 3], [1, 1])])
def test_per_axis_input_sizes_are_the_smallest_legal_ones(kernels, pools):
    for out in (1, 5, 16, 33):
        size = valid_input_size_axis(out, kernels, pools)
        assert _output_or_zero(size, kernels, pools) >= out
        assert all(_output_or_zero(s, kernels, pools) < out for s in range(1, size))  # brute force
        assert size - _output_or_zero(size, kernels, pools) == 2 * valid_margin_axis(kernels,
                                                                                     pools)


def test_margins_are_the_2d_ones_for_the_papers_plan():
    for depth in (1, 2, 3, 4):
        assert valid_margin_axis([3] * (depth + 1), [2] * depth) == valid_margin(depth)
    assert valid_margin_axis([1, 3], [1]) == 2  # a z axis neither convolved nor pooled at first


def test_plan_fits_the_budget_on_the_pooling_grid():
    net = _net(**ANISOTROPIC)
    plan = plan_valid_volume(net.kernels, net.pools, (40, 100, 90), (12, 30, 30))
    assert plan.margin == (2, 8, 8)
    assert plan.out_tile[1] % 2 == 0 and plan.out_tile[2] % 2 == 0
    assert all(i <= t for i, t in zip(plan.in_tile, (12, 30, 30), strict=True))
    assert net.output_size(*plan.in_tile) == plan.net_out
    assert all(n >= o for n, o in zip(plan.net_out, plan.out_tile, strict=True))
    whole = plan_valid_volume(net.kernels, net.pools, (5, 9, 7))
    assert whole.out_tile == (5, 10, 8)  # a small volume is one window


@pytest.mark.parametrize("plan", [{}, ANISOTROPIC], ids=["isotropic", "anisotropic"])
@pytest.mark.parametrize("tile", [(20, 20, 20), (12, 22, 20)])
def test_tiles_equal_one_pass_over_the_mirrored_volume(plan, tile):
    net = _net(**plan)
    volume = torch.rand(1, 9, 11, 7)
    windows = plan_valid_volume(net.kernels, net.pools, (9, 11, 7), tile)
    assert windows.out_tile != (9, 11, 7)  # several windows along some axis
    reads: list[tuple[int, int]] = []

    def read(z0, z1):
        reads.append((z0, z1))
        return volume[:, z0:z1]

    with torch.no_grad():
        slabs = list(stream_valid_volume_logits(net, read, (9, 11, 7), windows, batch_size=3))
    got = torch.cat([s for _, s in slabs], dim=1)
    torch.testing.assert_close(got, _one_pass(net, volume, windows.padded((9, 11, 7))),
                               rtol=1e-5, atol=1e-5)
    assert [z0 for z0, _ in slabs] == list(range(0, 9, windows.out_tile[0]))
    assert max(z1 - z0 for z0, z1 in reads) <= windows.in_tile[0]


def test_mirror_indices_match_numpys_reflect():
    for size, before, after in ((5, 8, 9), (1, 2, 3), (9, 2, 0)):
        want = np.pad(np.arange(size), (before, after), mode="reflect" if size > 1 else "edge")
        assert np.array_equal(reflect_indices(size, before, after).numpy(), want)


def test_predict_runs_a_valid_model_file(tmp_path: Path):
    net = _net(**ANISOTROPIC)
    stats = ChannelStats((0.5,), (0.25,))
    save_model(tmp_path / "valid.safetensors", net,
               ModelCard(net.config, ClassTable.from_values((0, 1)), stats))
    volume = np.random.default_rng(0).random((1, 10, 13, 12)).astype(np.float32)
    np.save(tmp_path / "v.npy", volume)
    predict_volumes(tmp_path / "valid.safetensors", tmp_path / "v.npy", tmp_path / "out",
                    tile=24, overlays=False, show_progress=False)
    labels = np.load(tmp_path / "out" / "v.npy")
    windows = plan_valid_volume(net.kernels, net.pools, (10, 13, 12), (24, 24, 24))
    want = _one_pass(net, normalize_volume(torch.from_numpy(volume), stats),
                     windows.padded((10, 13, 12)))
    assert np.array_equal(labels, want.argmax(0).numpy())
    logits = predict_volume_logits(net, stats, volume, tile=(24, 24, 24))
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
