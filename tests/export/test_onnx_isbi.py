"""``unetseg predict --backend onnxruntime``: labels identical to the PyTorch backend's on the
ISBI 2012 test images, through the same tiling and blending code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unetseg.cli import main

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def isbi_images() -> Path:
    from shipping import ISBI_TEST

    if not ISBI_TEST.is_dir():
        pytest.skip(f"{ISBI_TEST} is not present (shared ISBI 2012 test images)")
    return ISBI_TEST


def test_onnxruntime_labels_equal_pytorch_labels_on_isbi(isbi_images: Path,
                                                         tmp_path: Path) -> None:
    """Every 10th ISBI test image (3 of 30, to keep the test short; benchmarks/backends.py
    compares all 30), tiled into 9 blended windows: both backends' probabilities agree to
    float rounding, and their label PNGs are identical at every pixel that is not an exact
    tie (both classes within 1e-5 of 0.5, where rounding alone decides)."""
    import tifffile
    from shipping import tiny_model

    model = tiny_model(tmp_path / "same.safetensors")
    exported = tmp_path / "same.onnx"
    assert main(["-q", "export", str(model), "--out", str(exported)]) == 0
    images = sorted(isbi_images.glob("*.png"))[::10]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for image in images:
        (inputs / image.name).symlink_to(image)
    common = [str(inputs), "--no-overlay", "--tile", "256", "--batch-size", "4",
              "--probabilities"]
    assert main(["-q", "predict", str(model), *common, "--out", str(tmp_path / "pt")]) == 0
    assert main(["-q", "predict", str(exported), *common, "--out", str(tmp_path / "ort"),
                 "--backend", "onnxruntime"]) == 0
    fractions, ties = [], 0
    for image in images:
        a = np.array(Image.open(tmp_path / "pt" / image.name))
        b = np.array(Image.open(tmp_path / "ort" / image.name))
        pa = tifffile.imread(tmp_path / "pt" / f"{image.stem}_probs.tif")
        pb = tifffile.imread(tmp_path / "ort" / f"{image.stem}_probs.tif")
        assert a.shape == (512, 512) and set(np.unique(a)) <= {0, 255}
        assert np.abs(pa - pb).max() < 1e-5
        decided = np.abs(pa[1] - 0.5) > 1e-5
        assert np.array_equal(a[decided], b[decided]), f"{image.name}: decided pixels differ"
        ties += int((~decided).sum())
        fractions.append(np.mean(a == 255))
    assert ties < 20  # a handful of exact ties at most, out of 786,432 pixels
    assert 0.05 < np.mean(fractions) < 0.95  # both classes occur: the comparison is not trivial


def test_onnxruntime_backend_user_errors(tmp_path: Path, capsys) -> None:
    from shipping import sample_images, tiny_model

    model = tiny_model(tmp_path / "m.safetensors")
    image = str(sample_images()[0])
    assert main(["-q", "predict", str(model), image, "--out", str(tmp_path / "o"),
                 "--backend", "onnxruntime", "--tta", "flip"]) == 2
    err = capsys.readouterr().err
    assert "--tta flip" in err and "--backend torch" in err and len(err.splitlines()) == 1
    assert main(["-q", "predict", str(model), image, "--out", str(tmp_path / "o"),
                 "--backend", "onnxruntime", "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert "--precision bf16" in err and len(err.splitlines()) == 1


def test_a_forced_onnxruntime_backend_runs_a_model_file_through_its_cached_export(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shipping import sample_images, tiny_model

    monkeypatch.setenv("UNETSEG_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model(tmp_path / "m.safetensors")
    image = str(sample_images()[0])
    assert main(["-q", "predict", str(model), image, "--out", str(tmp_path / "o"),
                 "--backend", "onnxruntime"]) == 0
    assert list((tmp_path / "cache" / "onnx").glob("*.onnx"))
