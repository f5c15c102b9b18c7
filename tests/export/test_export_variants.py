"""Every built-in variant exports to TorchScript and ONNX with the parity check, without the
auxiliary heads of deep supervision, and is served like the U-Net."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unetseg.export.graph import exportable
from unetseg.export.pipeline import export_model
from unetseg.modelfile import load_model

RUN = ("unet", "residual", "attention", "nested", "resnet18")
"""resnet34 is resnet18's code with more blocks; resnet50's bottleneck blocks are exported in
the TorchScript test alone."""

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


class Models(dict):
    """Tiny model files by variant, with deep supervision (heads the export drops), each
    written when first asked for."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def __missing__(self, arch: str) -> Path:
        from shipping import tiny_model

        self[arch] = tiny_model(self.folder / f"{arch}.safetensors", arch=arch,
                                deep_supervision=True)
        return self[arch]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models(tmp_path_factory.mktemp("variants"))


@pytest.mark.parametrize("arch", RUN)
def test_exportable_module_is_the_model_without_auxiliary_heads(arch: str, models):
    net, _ = load_model(models[arch])
    assert any(k.startswith("aux_heads.") for k in net.state_dict())
    module = exportable(net)
    assert not any("aux_heads" in k for k in module.state_dict())
    x = torch.randn(2, 1, 37, 45)
    with torch.no_grad():
        assert torch.equal(module(x), net(x))


@pytest.mark.parametrize("arch", [*RUN, "resnet50"])
def test_torchscript_export_passes_the_parity_check(arch: str, models, tmp_path: Path):
    result = export_model(models[arch], tmp_path / f"{arch}.pt", "torchscript")
    assert result.exporter == "script" and result.report.passed
    assert len(result.report.diffs) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("arch", RUN[1:])  # the U-Net's export has tests of its own
def test_onnx_export_passes_the_parity_check(arch: str, models, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    result = export_model(models[arch], tmp_path / f"{arch}.onnx", "onnx")
    assert result.report.passed and result.report.max_abs_diff <= 1e-4
    names = {init.name for init in onnx.load(str(result.path)).graph.initializer}
    assert not any("aux_heads" in name for name in names)


@pytest.mark.parametrize("arch", ["attention", "resnet18"])
def test_a_variant_is_served_like_the_command_line_predicts(arch: str, models,
                                                           tmp_path: Path):
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    testclient = pytest.importorskip("fastapi.testclient")
    from shipping import sample_images

    from unetseg.api import predict
    from unetseg.serve.app import create_app

    image = sample_images()[1]
    with testclient.TestClient(create_app(models[arch], tile=256)) as client:
        assert client.get("/model").json()["config"]["arch"] == arch
        response = client.post("/predict", files={"file": (image.name, image.read_bytes(),
                                                           "image/png")})
    assert response.status_code == 200, response.text
    served = np.array(Image.open(io.BytesIO(response.content)))
    predict(models[arch], [image], tmp_path, tile=256, overlays=False, device="cpu",
            show_progress=False)
    assert np.array_equal(served, np.array(Image.open(tmp_path / image.name)))
    assert 0 < np.mean(served == 255) < 1
