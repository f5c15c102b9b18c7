"""The export-friendly forward and the parity check, against the eager UNet (no exporter runs)."""

from __future__ import annotations

import pytest
import torch

from unetseg.config import ModelConfig
from unetseg.export.graph import ExportableUNet, pad_to_multiple_indexed
from unetseg.export.verify import FP32_TOLERANCE, compare, parity_shapes
from unetseg.infer.exported import ExportInfo, Tiling, export_info
from unetseg.model import UNet, is_legal_input_size, legal_input_sizes
from unetseg.model.blocks import pad_to_multiple
from unetseg.modelfile import ModelCard


@pytest.mark.parametrize("height, width", [(1, 1), (1, 9), (3, 17), (7, 5), (16, 16), (33, 63)])
@pytest.mark.parametrize("multiple", [4, 16])
def test_indexed_padding_equals_pad_to_multiple(height: int, width: int, multiple: int) -> None:
    x = torch.randn(2, 3, height, width)
    expected, _ = pad_to_multiple(x, multiple)
    assert torch.equal(pad_to_multiple_indexed(x, multiple), expected)


@pytest.mark.parametrize("norm, up", [("batch", "transpose"), ("instance", "bilinear"),
                                      ("group", "nearest"), ("none", "transpose")])
@pytest.mark.parametrize("height, width", [(5, 1), (33, 63), (21, 30)])
def test_exportable_same_unet_is_the_unet(norm: str, up: str, height: int, width: int) -> None:
    if norm == "instance":  # needs more than one pixel at the bottom level, as in PyTorch
        height, width = height + 4, width + 4
    torch.manual_seed(0)
    net = UNet(2, 3, depth=2, width=4, norm=norm, up=up).eval()  # type: ignore[arg-type]
    x = torch.randn(2, 2, height, width)
    with torch.no_grad():
        assert torch.equal(ExportableUNet(net).eval()(x), net(x))


@pytest.mark.parametrize("depth", [2, 3])
def test_exportable_valid_unet_is_the_unet(depth: int) -> None:
    torch.manual_seed(1)
    net = UNet(1, 2, depth=depth, width=4, padding="valid", norm="none").eval()
    sizes = legal_input_sizes(depth, 140)[:3]
    x = torch.randn(1, 1, sizes[0], sizes[-1])
    with torch.no_grad():
        assert torch.equal(ExportableUNet(net)(x), net(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated upstream
def test_exportable_unet_scripts_and_shares_weights() -> None:
    net = UNet(1, 2, depth=2, width=4).eval()
    scripted = torch.jit.script(ExportableUNet(net).eval())
    x = torch.randn(1, 1, 13, 22)
    with torch.no_grad():
        assert torch.equal(scripted(x), net(x))
        net.head.bias += 1.0  # the export wrapper shares the layers, it does not copy them
        assert torch.equal(ExportableUNet(net)(x), net(x))


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_parity_shapes_are_legal_and_cover_odd_sizes(depth: int) -> None:
    valid = parity_shapes(ModelConfig(padding="valid", depth=depth))
    assert all(is_legal_input_size(s, depth) for shape in valid for s in shape[2:])
    same = parity_shapes(ModelConfig(padding="same", depth=depth, in_channels=3, norm="batch"))
    sides = [s for shape in same for s in shape[2:]]
    assert any(s % 2**depth for s in sides) and min(sides) == 1
    assert {shape[1] for shape in same} == {3} and max(shape[0] for shape in same) == 2
    # instance norm needs more than one pixel per channel at the bottom level
    instance = parity_shapes(ModelConfig(padding="same", depth=depth, norm="instance"))
    assert min(min(shape[2:]) for shape in instance) > 2**depth
    net = UNet(1, 2, depth=depth, width=4).eval()
    for shape in instance:
        net(torch.zeros(shape))


@pytest.mark.parametrize("depth", [2, 4])
def test_export_info_legal_sizes_follow_the_geometry(depth: int) -> None:
    from unetseg.data.classes import ClassTable
    from unetseg.data.normalize import ChannelStats

    card = ModelCard(ModelConfig(padding="valid", depth=depth), ClassTable.from_values((0, 1)),
                     ChannelStats((0.0,), (1.0,)))
    info = export_info(card, exporter="test", tiling=Tiling(tile=300))
    assert [s for s in range(1, 400) if info.is_legal(s)] == [
        s for s in range(1, 400) if is_legal_input_size(s, depth)]
    assert ExportInfo.from_json(info.to_json()) == info


def test_compare_measures_the_difference() -> None:
    net = UNet(1, 2, depth=2, width=4, norm="batch").eval()
    shapes = parity_shapes(net.config)
    same = compare(net, net, shapes)
    assert same.passed and same.max_abs_diff == 0.0 and len(same.diffs) == len(shapes)
    off = compare(net, lambda x: net(x) + 3e-4, shapes)
    assert not off.passed
    assert off.max_abs_diff == pytest.approx(3e-4, rel=1e-2)
    assert off.tolerance == FP32_TOLERANCE and "FAILED" in off.lines()[-1]
