"""``unetseg export``: files that describe themselves, parity printed, exit statuses 0, 1 and 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from unetseg.cli import main
from unetseg.modelfile import FORMAT, load_model, read_card

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shipping import tiny_model

    return tiny_model(tmp_path_factory.mktemp("export") / "tiny.safetensors")


@pytest.fixture(scope="module")
def exported(model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The default export (exporter chosen automatically): (file, stdout)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["-q", "export", str(model), "--out", str(out)]) == 0
    return out, buffer.getvalue()


def _parity_lines(stdout: str) -> list[float]:
    return [float(v) for v in re.findall(r"max \|diff\| ([0-9.e+-]+)", stdout)]


@pytest.mark.slow
def test_onnx_export_prints_parity_and_stores_the_card(model: Path, exported) -> None:
    path, stdout = exported
    assert stdout.startswith("exporter: dynamo (")
    diffs = _parity_lines(stdout)
    assert len(diffs) >= 3 and max(diffs) <= 1e-4
    assert "OK" in stdout and f"wrote {path}" in stdout
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props[FORMAT]) == json.loads(read_card(model).to_json())
    info = json.loads(props["unetseg.export"])
    assert info["tiling"]["tile"] == 512 and info["padding"] == "same"
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]


@pytest.mark.slow
def test_onnx_runtime_matches_eager_pytorch_on_an_odd_batch(model: Path, exported) -> None:
    from unetseg.infer.backends import load_onnx

    predictor, card, _ = load_onnx(exported[0])
    net, _ = load_model(model)
    x = torch.randn(3, 1, 45, 71, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = net(x)
    got = predictor(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert card == read_card(model)


@pytest.mark.slow
def test_torchscript_export_round_trip(model: Path, tmp_path: Path, capsys) -> None:
    from unetseg.export.torchscript import load_torchscript

    out = tmp_path / "tiny.pt"
    assert main(["-q", "export", str(model), "--format", "torchscript", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("exporter: script (") and max(_parity_lines(stdout)) <= 1e-4
    module, card, info = load_torchscript(out)
    assert card == read_card(model) and info.exporter == "torch.jit.script"
    net, _ = load_model(model)
    x = torch.randn(2, 1, 19, 40)
    with torch.no_grad():
        torch.testing.assert_close(module(x), net(x), atol=1e-6, rtol=0)


def test_parity_failure_exits_1_and_writes_nothing(model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "strict.onnx"
    code = main(["-q", "export", str(model), "--out", str(out), "--exporter", "legacy",
                 "--tolerance", "1e-12"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "parity failed" in err and "FAILED" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_falls_back_to_the_legacy_exporter_and_says_why(model: Path, tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    from unetseg.export import onnx as onnx_export

    def broken(*args, **kwargs):
        raise RuntimeError("dynamo cannot handle this graph")

    monkeypatch.setattr(onnx_export, "_dynamo", broken)
    out = tmp_path / "fallback.onnx"
    assert main(["-q", "export", str(model), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("exporter: legacy (dynamo exporter failed (RuntimeError: dynamo"
                             " cannot handle this graph))")
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["unetseg.export"])["exporter"] == "torch.onnx.export(dynamo=False)"


@pytest.mark.parametrize("argv, fragment", [
    (["--out", "{tmp}/model.pt"], "onnx files end with .onnx"),
    (["--out", "{tmp}/model.onnx", "--exporter", "trace"], "does not write onnx"),
    (["--out", "{tmp}/missing/model.onnx"], "output folder does not exist"),
])
def test_user_mistakes_exit_2_with_one_line(model: Path, tmp_path: Path, capsys, argv,
                                            fragment: str) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["-q", "export", str(model), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("unetseg: error: ") and fragment in err


def test_missing_model_file_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["-q", "export", str(tmp_path / "nope.safetensors"), "--out",
                 str(tmp_path / "m.onnx")]) == 2
    assert "nope.safetensors" in capsys.readouterr().err


def test_labels_of_an_exported_model_are_not_trivial(model: Path) -> None:
    """The fixture model gives both classes on real images (so label equality means something)."""
    from shipping import sample_images

    from unetseg.data.io import read_image
    from unetseg.infer.load import load_predictor

    predictor, _ = load_predictor(model, device="cpu")
    ids = predictor.logits(read_image(sample_images()[-1])).argmax(0).numpy()
    assert 0.1 < np.mean(ids) < 0.9
