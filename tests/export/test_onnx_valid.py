"""The ONNX Runtime backend on a valid-padding model: the graph's legal sizes, refusal of
illegal ones, and the overlap-tile prediction against PyTorch's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unetseg.modelfile import load_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def valid_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from shipping import tiny_model

    from unetseg.export import export_model

    root = tmp_path_factory.mktemp("valid")
    model = tiny_model(root / "valid.safetensors", padding="valid", norm="none", seed=3)
    result = export_model(model, root / "valid.onnx", "onnx")
    assert result.exporter == "dynamo" and result.report.passed
    return model, result.path


def test_valid_graph_declares_its_legal_sizes(valid_export) -> None:
    _, path = valid_export
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "4*height_steps + 44", "4*width_steps + 44"]  # depth 2: 44 + 4k


def test_valid_predictor_refuses_illegal_sizes_and_matches_eager(valid_export) -> None:
    from unetseg.infer.backends import load_onnx

    model, path = valid_export
    predictor, _, info = load_onnx(path)
    assert (info.min_size, info.size_step) == (44, 4)
    with pytest.raises(ValueError, match=r"input side 45 is not legal .* 44 \+ 4\*k"):
        predictor(torch.zeros(1, 1, 45, 48))  # ONNX Runtime itself would run this size
    net, _ = load_model(model)
    x = torch.randn(2, 1, 52, 64)
    with torch.no_grad():
        torch.testing.assert_close(predictor(x), net(x), atol=1e-4, rtol=0)


def test_valid_tiled_prediction_matches_pytorch(valid_export) -> None:
    from shipping import sample_images

    from unetseg.data.io import read_image
    from unetseg.infer.backends import load_onnx_image_predictor
    from unetseg.infer.load import load_predictor

    model, path = valid_export
    image = read_image(sample_images()[3])[:, :150, :170]
    torch_logits = load_predictor(model, tile=96, device="cpu")[0].logits(image)
    onnx_logits = load_onnx_image_predictor(path, tile=96)[0].logits(image)
    torch.testing.assert_close(onnx_logits, torch_logits, atol=1e-4, rtol=0)
    assert torch.equal(onnx_logits.argmax(0), torch_logits.argmax(0))
