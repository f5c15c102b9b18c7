"""The 3D U-Net: parameter counts and output sizes by hand, and anisotropic plans checked
against the 2D network run slice by slice."""

from __future__ import annotations

import pytest
import torch

from unetseg.config import ModelConfig, from_dict, to_dict
from unetseg.errors import UserError
from unetseg.model import UNet
from unetseg.model.geometry import anisotropic_plan, valid_output_size


def _double_conv(cin: int, cout: int, taps: int) -> int:
    return cin * cout * taps + cout + cout * cout * taps + cout  # norm "none": biases


def test_parameter_count_of_a_small_3d_unet_by_hand():
    net = UNet(1, 3, depth=2, width=4, norm="none", spatial_dims=3)
    w = [4, 8, 16]
    expected = _double_conv(1, 4, 27) + _double_conv(4, 8, 27) + _double_conv(8, 16, 27)
    expected += (16 * 8 * 8 + 8) + _double_conv(16, 8, 27)  # up: 2x2x2 transpose, skip 8 + 8
    expected += (8 * 4 * 8 + 4) + _double_conv(8, 4, 27)
    expected += w[0] * 3 + 3  # 1x1x1 head
    assert sum(p.numel() for p in net.parameters()) == expected


def test_anisotropic_kernels_count_their_taps():
    kernels, pools = ((1, 3, 3), (3, 3, 3)), ((1, 2, 2),)
    net = UNet(1, 2, depth=1, width=2, norm="none", spatial_dims=3, kernel_sizes=kernels,
               pool_sizes=pools)
    expected = (_double_conv(1, 2, 9) + _double_conv(2, 4, 27) + (4 * 2 * 4 + 2)
                + _double_conv(4, 2, 9) + 2 * 2 + 2)
    assert sum(p.numel() for p in net.parameters()) == expected


@pytest.mark.parametrize("shape", [(5, 17, 19), (8, 8, 8), (1, 9, 4)])
def test_same_padding_keeps_any_volume_size(shape):
    net = UNet(1, 2, depth=2, width=2, spatial_dims=3).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, *shape)).shape == (1, 2, *shape)


def test_valid_padding_matches_the_2d_sizes_on_every_axis():
    net = UNet(1, 2, depth=1, width=2, padding="valid", norm="none", spatial_dims=3).eval()
    size = (20, 24, 28)  # each legal for a depth-1 valid U-Net
    expected = tuple(valid_output_size(s, 1) for s in size)
    with torch.no_grad():
        assert net(torch.rand(1, 1, *size)).shape[2:] == expected == net.output_size(*size)
    with pytest.raises(UserError, match="not legal"):
        net.output_size(21, 24, 28)


def test_valid_padding_with_an_anisotropic_plan_by_hand():
    # z: kernel 1 then 3, pool 1: 6 -> 6 -> 6 - 4 = 2 -> 2.  y, x: 20 - 4 = 16 -> 8 -> 4 -> 8 - 4
    net = UNet(1, 2, depth=1, width=2, padding="valid", norm="none", spatial_dims=3,
               kernel_sizes=((1, 3, 3), (3, 3, 3)), pool_sizes=((1, 2, 2),)).eval()
    assert net.output_size(6, 20, 20) == (2, 4, 4)
    with torch.no_grad():
        assert net(torch.rand(1, 1, 6, 20, 20)).shape[2:] == (2, 4, 4)


def test_slice_plan_equals_the_2d_network_on_each_slice():
    """Kernels (1, 3, 3) and poolings (1, 2, 2) never mix slices: with the 2D network's
    weights the 3D network must give the 2D network's logits slice by slice."""
    torch.manual_seed(0)
    flat = UNet(2, 3, depth=2, width=4, norm="none", up="transpose").eval()
    deep = UNet(2, 3, depth=2, width=4, norm="none", spatial_dims=3,
                kernel_sizes=((1, 3, 3),) * 3, pool_sizes=((1, 2, 2),) * 2).eval()
    state = {k: v.unsqueeze(2) if v.ndim == 4 else v for k, v in flat.state_dict().items()}
    deep.load_state_dict(state)
    volume = torch.rand(1, 2, 3, 20, 12)
    with torch.no_grad():
        got = deep(volume)
        want = torch.stack([flat(volume[:, :, z]) for z in range(volume.shape[2])], dim=2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_anisotropic_plan_follows_the_spacing():
    assert anisotropic_plan((1, 1, 1), 2) == (((3, 3, 3),) * 3, ((2, 2, 2),) * 2)
    kernels, pools = anisotropic_plan((4.0, 1.0, 1.0), 3)
    assert kernels == ((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
    assert pools == ((1, 2, 2), (2, 2, 2), (2, 2, 2))
    kernels, pools = anisotropic_plan((10.0, 1.0, 1.0), 3)  # within 2x of z after 3 poolings
    assert kernels[:3] == ((1, 3, 3), (1, 3, 3), (1, 3, 3)) and kernels[3] == (3, 3, 3)
    assert pools == ((1, 2, 2), (1, 2, 2), (1, 2, 2))
    net = UNet(1, 2, depth=3, width=2, spatial_dims=3, kernel_sizes=kernels, pool_sizes=pools)
    assert net.size_multiple == (1, 8, 8)
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 1, 3, 9, 10)).shape == (1, 2, 3, 9, 10)


def test_deep_supervision_in_3d_returns_maps_of_the_output_size():
    net = UNet(1, 2, depth=3, width=2, spatial_dims=3, deep_supervision=True,
               kernel_sizes=((1, 3, 3),) + ((3, 3, 3),) * 3,
               pool_sizes=((1, 2, 2), (2, 2, 2), (2, 2, 2))).train()
    maps = net(torch.rand(2, 1, 4, 16, 16))
    assert len(maps) == 3 and all(m.shape == (2, 2, 4, 16, 16) for m in maps)


def test_config_round_trips_through_json_and_rebuilds_the_network():
    kernels, pools = anisotropic_plan((3.0, 1.0, 1.0), 2)
    net = UNet(1, 2, depth=2, width=2, spatial_dims=3, kernel_sizes=kernels, pool_sizes=pools)
    cfg = from_dict(ModelConfig, to_dict(net.config))
    assert cfg == net.config and cfg.kernel_sizes == kernels
    again = UNet.from_config(cfg)
    assert [p.shape for p in again.parameters()] == [p.shape for p in net.parameters()]


def test_bad_plans_and_inputs_are_refused():
    with pytest.raises(ValueError, match="give 3 entries of 3"):
        UNet(1, 2, depth=2, spatial_dims=3, kernel_sizes=((3, 3, 3),) * 2)
    with pytest.raises(ValueError, match="odd kernels"):
        UNet(1, 2, depth=1, spatial_dims=3, kernel_sizes=((2, 3, 3), (3, 3, 3)))
    with pytest.raises(ValueError, match="spatial_dims 4"):
        UNet(1, 2, spatial_dims=4)
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        UNet(1, 2, depth=1, width=2, spatial_dims=3)(torch.rand(1, 1, 8, 8))
