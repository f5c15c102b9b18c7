"""The 3D residual, attention and nested U-Nets: parameter counts by hand, any volume size,
slice plans checked against the 2D networks run slice by slice, and the refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unetseg.config import ModelConfig, Norm
from unetseg.errors import UserError
from unetseg.model import build_model, register_architecture
from unetseg.model.blocks import StridedPointwiseConv, StridedPointwiseConv3d

SLICE_KERNELS = ((1, 3, 3), (3, 3, 3))
SLICE_POOLS = ((1, 2, 2),)


def _conv(cin: int, cout: int, taps: int, bias: bool = True) -> int:
    return cin * cout * taps + (cout if bias else 0)


def _double_conv(cin: int, cout: int, taps: int) -> int:
    return _conv(cin, cout, taps) + _conv(cout, cout, taps)  # norm "none": biases


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _volume_config(arch: str, *, depth: int = 1, width: int = 2, norm: Norm = "none",
                   kernels=SLICE_KERNELS, pools=SLICE_POOLS, **kw) -> ModelConfig:
    return ModelConfig(1, 2, depth=depth, width=width, norm=norm, arch=arch, spatial_dims=3,
                       kernel_sizes=kernels, pool_sizes=pools, **kw)


def test_residual_3d_parameters_by_hand():
    net = build_model(_volume_config("residual", encoder_blocks=1))
    expected = (_conv(1, 2, 9) + _conv(2, 2, 9) + _conv(1, 2, 1)  # stage 0, (1, 3, 3), 1x1x1
                + _conv(2, 4, 27) + _conv(4, 4, 27) + _conv(2, 4, 1)  # stage 1, strided
                + _conv(4, 2, 1 * 2 * 2) + _double_conv(4, 2, 9)  # up (1, 2, 2), level 0 convs
                + _conv(2, 2, 1))  # head
    assert _count(net) == expected
    assert isinstance(net.body.stages[1][0].shortcut[0], StridedPointwiseConv3d)
    assert net.body.stages[1][0].shortcut[0].subsample == (1, 2, 2)


def test_attention_3d_parameters_by_hand():
    net = build_model(_volume_config("attention", width=4))
    expected = (_double_conv(1, 4, 9) + _double_conv(4, 8, 27)
                + _conv(4, 2, 1 * 2 * 2, bias=False) + _conv(8, 2, 1) + _conv(2, 1, 1)  # gate
                + _conv(8, 4, 1 * 2 * 2) + _double_conv(8, 4, 9) + _conv(4, 2, 1))
    assert _count(net) == expected


def test_nested_3d_parameters_by_hand():
    net = build_model(_volume_config("nested", width=2))
    # X00 (1, 3, 3); X10 (3, 3, 3); X01: up (1, 2, 2) to 2 channels, cat X00 -> 4 channels
    expected = (_double_conv(1, 2, 9) + _double_conv(2, 4, 27) + _conv(4, 2, 4)
                + _double_conv(4, 2, 9) + _conv(2, 2, 1))
    assert _count(net) == expected


@pytest.mark.parametrize("arch", ["residual", "attention", "nested"])
def test_any_volume_size_comes_back_with_deep_supervision_too(arch):
    cfg = _volume_config(arch, depth=2, width=4, norm="instance",
                         kernels=((1, 3, 3), (3, 3, 3), (3, 3, 3)),
                         pools=((1, 2, 2), (2, 2, 2)), deep_supervision=True)
    net = build_model(cfg)
    assert net.size_multiple == (2, 4, 4)
    volume = torch.rand(1, 1, 5, 17, 10)
    maps = net.train()(volume)
    assert len(maps) == 2 and all(m.shape == (1, 2, 5, 17, 10) for m in maps)
    with torch.no_grad():
        assert net.eval()(volume).shape == (1, 2, 5, 17, 10)
        assert net(torch.rand(1, 1, 3, 7, 9)).shape == (1, 2, 3, 7, 9)


@pytest.mark.parametrize("arch", ["residual", "attention", "nested"])
def test_slice_plan_equals_the_2d_network_on_each_slice(arch):
    """Kernels (1, 3, 3) and poolings (1, 2, 2) never mix slices: with the 2D network's
    weights the 3D network must give the 2D network's logits slice by slice."""
    torch.manual_seed(0)
    flat = build_model(ModelConfig(2, 3, depth=2, width=4, norm="none", arch=arch)).eval()
    deep = build_model(ModelConfig(2, 3, depth=2, width=4, norm="none", arch=arch,
                                   spatial_dims=3, kernel_sizes=((1, 3, 3),) * 3,
                                   pool_sizes=((1, 2, 2),) * 2)).eval()
    state = {k: v.unsqueeze(2) if v.ndim == 4 else v for k, v in flat.state_dict().items()}
    deep.load_state_dict(state)
    volume = torch.rand(1, 2, 3, 20, 12)
    with torch.no_grad():
        got = deep(volume)
        want = torch.stack([flat(volume[:, :, z]) for z in range(volume.shape[2])], dim=2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_strided_pointwise_convs_equal_strided_torch_convs():
    torch.manual_seed(0)
    ours = StridedPointwiseConv3d(3, 5, stride=(1, 2, 3))
    torch_conv = nn.Conv3d(3, 5, 1, stride=(1, 2, 3))
    torch_conv.load_state_dict(ours.state_dict())
    x = torch.rand(2, 3, 3, 7, 8)
    torch.testing.assert_close(ours(x), torch_conv(x))
    assert ours(x).shape == (2, 5, 3, 4, 3)
    flat = StridedPointwiseConv(3, 5, stride=2)
    flat_torch = nn.Conv2d(3, 5, 1, stride=2)
    flat_torch.load_state_dict(flat.state_dict())
    image = torch.rand(1, 3, 7, 6)
    torch.testing.assert_close(flat(image), flat_torch(image))


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_resnets_refuse_volumes_in_one_line(arch):
    with pytest.raises(UserError, match=f"--arch {arch} has no 3D form") as err:
        build_model(ModelConfig(1, 2, arch=arch, spatial_dims=3))
    assert "\n" not in str(err.value) and "residual" in str(err.value)


def test_registered_networks_refuse_volumes(monkeypatch):
    monkeypatch.setattr("unetseg.model.registry._ARCHITECTURES", {})
    register_architecture("flat-net", lambda cfg: nn.Conv2d(cfg.in_channels, 2, 1),
                          downsamplings=0)
    assert build_model(ModelConfig(1, 2, arch="flat-net")) is not None
    with pytest.raises(UserError, match="flat-net: registered networks take images"):
        build_model(ModelConfig(1, 2, arch="flat-net", spatial_dims=3))


@pytest.mark.parametrize("arch", ["residual", "attention", "nested"])
def test_exportable_3d_variant_equals_the_network_and_scripts(arch):
    from unetseg.export.graph import exportable_network

    net = build_model(_volume_config(arch, depth=2, width=2, norm="instance",
                                     kernels=((1, 3, 3), (3, 3, 3), (3, 3, 3)),
                                     pools=((1, 2, 2), (2, 2, 2)))).eval()
    graph = exportable_network(net)
    volume = torch.rand(1, 1, 3, 9, 6)
    with torch.no_grad():
        want = net(volume)
        torch.testing.assert_close(graph(volume), want)
        traced = torch.jit.trace(graph, torch.rand(1, 1, 4, 8, 8))
        torch.testing.assert_close(traced(volume), want)
        torch.testing.assert_close(torch.jit.script(graph)(volume), want)
