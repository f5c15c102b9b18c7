"""Export of 3D U-Nets: the in-graph padding per axis, parity on volumes off the size multiple,
the metadata a volume graph carries, and one-line refusals of what is not exported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from unetseg.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shipping import tiny_volume_model

    return tiny_volume_model(tmp_path_factory.mktemp("export-volumes") / "tiny3d.safetensors")


def _reference_pad(x: torch.Tensor, multiples: tuple[int, ...]) -> torch.Tensor:
    """F.pad with the same rule written out: reflect when every pad is shorter than its axis."""
    sizes = x.shape[2:]
    pads = [(m - s % m) % m for s, m in zip(sizes, multiples, strict=True)]
    mode = "reflect" if all(p < s for p, s in zip(pads, sizes, strict=True)) else "replicate"
    flat = [v for p in reversed(pads) for v in (0, p)]
    return F.pad(x, flat, mode=mode)


@pytest.mark.parametrize("shape", [(1, 2, 5, 11, 9), (2, 1, 3, 2, 7), (1, 1, 1, 4, 13)])
def test_per_axis_padding_matches_f_pad(shape: tuple[int, ...]) -> None:
    from unetseg.export.graph import pad_to_multiples_indexed

    x = torch.randn(shape)
    multiples = (2, 4, 8)
    padded = pad_to_multiples_indexed(x, list(multiples))
    assert all(s % m == 0 for s, m in zip(padded.shape[2:], multiples, strict=True))
    assert torch.equal(padded, _reference_pad(x, multiples))


def test_exportable_3d_unet_equals_the_network_and_scripts() -> None:
    from unetseg.export.graph import ExportableUNet
    from unetseg.model import UNet

    torch.manual_seed(0)
    net = UNet(1, 3, depth=2, width=4, spatial_dims=3, norm="batch",
               kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)),
               pool_sizes=((1, 2, 2), (2, 2, 2))).eval()
    graph = torch.jit.script(ExportableUNet(net).eval())
    with torch.no_grad():
        for shape in [(1, 1, 5, 11, 9), (2, 1, 2, 4, 4), (1, 1, 1, 1, 1)]:
            x = torch.randn(shape)
            assert torch.equal(graph(x), net(x)), shape


@pytest.mark.slow
def test_onnx_export_of_a_volume_model_passes_parity_and_carries_its_metadata(
        model: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx
    import onnxruntime as ort

    from unetseg.export import export_model
    from unetseg.export.onnx import read_onnx_props
    from unetseg.infer.exported import from_props
    from unetseg.modelfile import load_model

    result = export_model(model, tmp_path / "tiny3d.onnx", "onnx")
    assert result.exporter == "dynamo"
    shapes = [shape for shape, _ in result.report.diffs]
    assert all(len(s) == 5 for s in shapes)
    assert any(s[2] % 2 and s[3] % 4 and s[4] % 4 for s in shapes)  # off the multiple on each
    assert 0 <= result.report.max_abs_diff <= 1e-4

    card, info = from_props(read_onnx_props(result.path), str(result.path))
    assert info.spatial_dims == 3 and card.model.spatial_dims == 3
    assert info.size_multiple == (2, 4, 4)
    assert info.spacing == (3.0, 1.0, 1.0)
    assert info.layout.startswith("NCDHW")
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, "depth", "height",
                                                          "width"]

    # the graph on a volume none of whose sides is a multiple, against the eager network
    net, _ = load_model(model)
    x = torch.randn(1, 1, 7, 13, 10, generator=torch.Generator().manual_seed(3))
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = net(x).numpy()
    assert got.shape == expected.shape == (1, 2, 7, 13, 10)
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("fmt, exporter, suffix", [("onnx", "legacy", ".onnx"),
                                                   ("torchscript", "trace", ".pt")])
def test_legacy_onnx_and_torchscript_exports_of_a_volume_model(
        model: Path, tmp_path: Path, fmt: str, exporter: str, suffix: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    from unetseg.export import export_model
    from unetseg.export.verify import exported_predictor
    from unetseg.modelfile import load_model

    result = export_model(model, tmp_path / f"tiny3d{suffix}", fmt, exporter=exporter)
    assert result.report.passed and len(result.report.diffs[0][0]) == 5
    run = exported_predictor(result.path, fmt)
    net, _ = load_model(model)
    x = torch.randn(2, 1, 3, 9, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (run(x) - net(x)).abs().max() < 1e-4


def test_the_cli_prints_the_volume_parity(model: Path, tmp_path: Path, capsys) -> None:
    from unetseg.cli import main
    from unetseg.export.torchscript import load_torchscript

    out = tmp_path / "tiny3d.pt"
    assert main(["export", str(model), "--format", "torchscript", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exporter: script" in printed
    assert "1x1x5x11x11" in printed and "OK" in printed
    _, card, info = load_torchscript(out)
    assert (info.spatial_dims, info.size_multiple, info.spacing) == (3, (2, 4, 4),
                                                                     (3.0, 1.0, 1.0))


def test_bioimageio_package_of_a_3d_model_is_refused(model: Path, tmp_path: Path) -> None:
    from unetseg.export import export_model

    with pytest.raises(UserError, match="3D network; bioimage.io packages") as caught:
        export_model(model, tmp_path / "pkg.zip", "bioimageio", sample=model)
    assert str(model) in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "pkg.zip").exists()


def test_a_model_set_of_3d_networks_is_refused(model: Path, tmp_path: Path) -> None:
    from shipping import tiny_volume_model

    from unetseg.export import export_model

    other = tiny_volume_model(tmp_path / "other.safetensors", seed=1)
    with pytest.raises(UserError, match="model set of 3D networks") as caught:
        export_model([model, other], tmp_path / "set.pt", "torchscript")
    assert "export one member" in str(caught.value)


def test_a_valid_padding_3d_network_is_refused(tmp_path: Path) -> None:
    from shipping import tiny_volume_model

    from unetseg.export import export_model

    valid = tiny_volume_model(tmp_path / "valid3d.safetensors", padding="valid")
    with pytest.raises(UserError, match="3D valid-padding network.*padding same"):
        export_model(valid, tmp_path / "valid3d.pt", "torchscript")
    assert not (tmp_path / "valid3d.pt").exists()


def test_a_3d_model_loads_for_prediction_and_auto_picks_torch(model: Path,
                                                              monkeypatch) -> None:
    import unetseg.export.fastest as fastest
    from unetseg.config import PredictConfig
    from unetseg.model.layout import fastest_memory_format

    monkeypatch.setattr(fastest, "onnxruntime_installed", lambda: True)
    loaded = fastest.load_fastest(model, PredictConfig(), folder=Path("/nonexistent"))
    assert loaded.backend == "torch" and "3D model" in loaded.reason
    net = loaded.predictor.model
    assert fastest_memory_format(net) == torch.contiguous_format
    assert all(p.is_contiguous() for p in net.parameters())
    with pytest.raises(UserError, match="a 3D model; --backend onnxruntime"):
        fastest.load_fastest(model, PredictConfig(backend="onnxruntime"),
                             folder=Path("/nonexistent"))
