"""``unetseg export --format bioimageio``: a BioImage Model Zoo package that bioimage.io's own
model test passes, whose normalisation and tiling reproduce unetseg's, and that ``unetseg
predict`` runs again.

bioimageio.core is a peer implementation of the spec: its ``test_model`` runs the test input
through each weight format with the package's pre- and postprocessing and compares with the
test output (made by the eager PyTorch model), and its tiled ``predict`` is compared with
unetseg's own prediction.
"""

from __future__ import annotations

import contextlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from unetseg.cli import main
from unetseg.errors import UserError
from unetseg.export import export_model
from unetseg.export.bioimageio import MODEL_FILE, geometry, is_package
from unetseg.model.geometry import valid_margin
from unetseg.modelfile import read_card

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("bioimageio.spec")
core = pytest.importorskip("bioimageio.core")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A U-Net trained for a few steps on disc images: (model file, data folder)."""
    from helpers import write_dataset

    from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from unetseg.train.fit import fit

    root = tmp_path_factory.mktemp("bioimageio")
    data = write_dataset(root / "data", 6, size=(96, 96))
    cfg = RunConfig(model=ModelConfig(depth=2, width=4, norm="batch"),
                    data=DataConfig(patch_size=32, val_fraction=0.34,
                                    class_names=("background", "disc")),
                    train=TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2, device="cpu"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = fit(data, root / "run", cfg, show_progress=False)
    finally:
        torch.set_num_threads(before)
    return result.best_model, data


@pytest.fixture(scope="module")
def package(trained: tuple[Path, Path]) -> tuple[Path, str]:
    """The package written by the command line: (zip, stdout)."""
    model, data = trained
    out = model.parent / "model.zip"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["-q", "export", str(model), "--format", "bioimageio", "--out", str(out),
                     "--sample", str(data / "images" / "img00.png"), "--author", "Ada Lovelace"])
    assert code == 0
    return out, buffer.getvalue()


@pytest.mark.slow
def test_bioimageio_core_model_test_passes_for_every_weight_format(package) -> None:
    path, stdout = package
    assert "onnx exporter: dynamo" in stdout and "torchscript exporter: script" in stdout
    assert f"wrote {path}" in stdout
    summary = core.test_model(path)
    assert summary.status == "passed", summary.display() if hasattr(summary, "display") else ""
    passed = {d.name for d in summary.details if d.status == "passed"}
    for fmt in ("onnx", "torchscript"):
        assert f"Reproduce test outputs from test inputs ({fmt})" in passed
        assert any(name.startswith(f"Run {fmt} inference") for name in passed)


@pytest.mark.slow
def test_description_states_unetseg_normalisation_classes_and_sizes(trained, package) -> None:
    from bioimageio.spec import load_model_description

    model, data = trained
    card = read_card(model)
    descr = load_model_description(package[0], perform_io_checks=False)
    (inp,), (out,) = descr.inputs, descr.outputs
    assert [str(a.id) for a in inp.axes] == ["batch", "channel", "y", "x"]
    geo = geometry("same", 2)
    assert geo.halo % 4 == 0 and geo.halo >= valid_margin(2)
    y_in, y_out = inp.axes[2], out.axes[2]
    assert (y_in.size.min, y_in.size.step) == (geo.min_size, 4)
    assert y_out.halo == geo.halo and y_out.size.offset == 0
    assert list(out.axes[1].channel_names) == ["background", "disc"]
    assert [p.id for p in out.postprocessing][0] == "softmax"
    # the preprocessing, applied by hand to 8-bit samples, is unetseg's normalisation
    scale = next(p for p in inp.preprocessing if p.id == "scale_linear").kwargs
    raw = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    by_spec = raw.astype(np.float64) * scale.gain + scale.offset
    by_unetseg = (raw / 255.0 - card.stats.mean[0]) / card.stats.std[0]
    np.testing.assert_allclose(by_spec, by_unetseg, rtol=0, atol=1e-12)
    assert inp.data.type == "uint8"
    assert str(descr.license) == "MIT" and descr.authors[0].name == "Ada Lovelace"
    assert str(descr.cite[0].doi) == "10.1007/978-3-319-24574-4_28"
    assert {w for w, entry in descr.weights if entry is not None} == {"onnx", "torchscript"}
    table = descr.config.model_extra["unetseg"]["classes"]
    assert [(c["name"], c["value"]) for c in table] == [("background", 0), ("disc", 255)]
    names = set(zipfile.ZipFile(package[0]).namelist())
    assert {MODEL_FILE, "cover.png", "README.md", "test_input.npy", "test_output.npy"} <= names
    readme = zipfile.ZipFile(package[0]).read("README.md").decode()
    assert "## Validation" in readme and "| 1 | disc | 255 |" in readme


@pytest.mark.slow
def test_cover_is_the_test_input_beside_its_prediction(package) -> None:
    from PIL import Image

    archive = zipfile.ZipFile(package[0])
    cover = np.asarray(Image.open(io.BytesIO(archive.read("cover.png"))))
    x = np.load(io.BytesIO(archive.read("test_input.npy")))
    probabilities = np.load(io.BytesIO(archive.read("test_output.npy")))
    assert cover.shape == (x.shape[2], 2 * x.shape[3], 3)
    left, right = cover[:, : x.shape[3]], cover[:, x.shape[3]:]
    disc = probabilities[0].argmax(0) == 1
    assert disc.any() and (~disc).any()
    # the right half is the left half with class colours blended in where they were predicted
    assert not np.array_equal(left, right)
    assert np.abs(right.astype(int) - left.astype(int)).sum(axis=2).min() > 0


@pytest.mark.slow
def test_core_tiled_prediction_equals_unetseg_away_from_the_borders(trained, package) -> None:
    from unetseg.data.io import read_image, read_image_samples
    from unetseg.infer.load import load_predictor

    model, data = trained
    raw = read_image_samples(data / "images" / "img01.png")  # (1, 96, 96) uint8
    descr = core.load_model_description(package[0], perform_io_checks=False)
    tiled = core.predict(model=descr, inputs={"image": raw[None]}, blocksize_parameter=8)
    got = tiled.members["probabilities"].data.to_numpy()[0]
    predictor, _ = load_predictor(model, device="cpu", precision="fp32")
    want = torch.softmax(predictor.logits(read_image(data / "images" / "img01.png")), 0).numpy()
    assert got.shape == want.shape
    # windows of 76 px overlap by twice the 20-px halo; only the image's own border, where
    # bioimageio.core pads differently from unetseg, may differ
    keep = geometry("same", 2).halo
    inner = np.abs(got - want)[:, keep:-keep, keep:-keep]
    assert inner.max() < 1e-4


@pytest.mark.slow
def test_predict_runs_the_package_as_the_model_file(trained, package, tmp_path: Path) -> None:
    from unetseg.api import predict

    model, data = trained
    images = data / "images"
    by_file = predict(model, images, tmp_path / "file", probabilities=True, show_progress=False)
    by_zip = predict(package[0], images, tmp_path / "zip", probabilities=True,
                     show_progress=False)
    folder = tmp_path / "unzipped"
    zipfile.ZipFile(package[0]).extractall(folder)
    assert is_package(folder) and is_package(package[0]) and not is_package(model)
    by_folder = predict(folder, images, tmp_path / "folder", probabilities=True,
                        show_progress=False)
    for a, b, c in zip(by_file, by_zip, by_folder):
        assert a.read_bytes() == b.read_bytes() == c.read_bytes()
        probs = [p.with_name(p.stem + "_probs.tif").read_bytes() for p in (a, b, c)]
        assert probs[0] == probs[1] == probs[2]


def test_a_package_without_the_unetseg_model_file_is_refused(tmp_path: Path) -> None:
    from unetseg.api import predict

    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\n")
        archive.writestr("weights.onnx", b"")
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "image.png")
    with pytest.raises(UserError, match="without unetseg.safetensors"):
        predict(foreign, tmp_path / "image.png", tmp_path / "out", show_progress=False)


@pytest.mark.slow
def test_valid_padding_package_states_the_cropped_border(tmp_path: Path) -> None:
    from bioimageio.spec import load_model_description
    from shipping import sample_images, tiny_model

    model = tiny_model(tmp_path / "valid.safetensors", padding="valid", depth=2)
    out = tmp_path / "valid.zip"
    export_model(model, out, "bioimageio", sample=sample_images()[0])
    descr = load_model_description(out, perform_io_checks=False)
    margin = valid_margin(2)
    assert descr.inputs[0].axes[2].size.min == 44 and descr.inputs[0].axes[2].size.step == 4
    assert descr.outputs[0].axes[2].size.offset == -2 * margin
    assert not hasattr(descr.outputs[0].axes[2], "halo")
    summary = core.test_model(out, weight_format="onnx")  # TorchScript: the same graph
    assert summary.status == "passed"
    x = np.load(io.BytesIO(zipfile.ZipFile(out).read("test_input.npy")))
    y = np.load(io.BytesIO(zipfile.ZipFile(out).read("test_output.npy")))
    assert y.shape[2:] == (x.shape[2] - 2 * margin, x.shape[3] - 2 * margin)


# ----------------------------------------------------------------------------- user mistakes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shipping import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.safetensors")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "needs --sample IMAGE"),
    ({"sample": "rgb", "out": "model.zip"}, "has 3 channel"),
    ({"sample": "small", "out": "model.zip"}, "needs at least 52 x 52"),
    ({"sample": "gray", "out": "model.onnx"}, r"\.zip"),
    ({"sample": "gray", "exporter": "legacy"}, "holds both formats"),
    ({"sample": "gray", "name": "ab"}, "5 to 64"),
])
def test_mistakes_are_one_line_user_errors(tiny: Path, tmp_path: Path, kwargs: dict,
                                           message: str) -> None:
    from PIL import Image

    images = {"gray": np.full((64, 64), 100, np.uint8), "small": np.zeros((30, 60), np.uint8),
              "rgb": np.zeros((64, 64, 3), np.uint8)}
    kwargs = dict(kwargs)
    if "sample" in kwargs:
        Image.fromarray(images[kwargs["sample"]]).save(tmp_path / "sample.png")
        kwargs["sample"] = tmp_path / "sample.png"
    out = tmp_path / kwargs.pop("out", "model.zip")
    fmt = "bioimageio"
    with pytest.raises(UserError, match=message):
        export_model(tiny, out, fmt, **kwargs)
    assert not out.exists()


def test_package_options_need_the_bioimageio_format(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--format bioimageio"):
        export_model(tiny, tmp_path / "m.onnx", "onnx", author="someone")


def test_a_missing_extra_is_named(tiny: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)
    with pytest.raises(UserError, match=r"pip install 'unetseg\[bioimageio\]'"):
        export_model(tiny, tmp_path / "m.zip", "bioimageio", sample=tmp_path / "x.png")



def _apply_spec_steps(steps: list[dict], raw: np.ndarray) -> np.ndarray:
    """The spec's preprocessing steps applied by hand to (C, H, W) samples."""
    x = raw.astype(np.float64)
    for step in steps:
        kwargs = step["kwargs"]
        if step["id"] == "scale_linear":
            gain = np.reshape(kwargs["gain"], (-1, 1, 1))
            offset = np.reshape(kwargs["offset"], (-1, 1, 1))
            x = x * gain + offset
        elif step["id"] == "clip":
            x = np.clip(x, kwargs["min"], kwargs["max"])
        elif step["id"] == "zero_mean_unit_variance":
            assert kwargs["axes"] == ["y", "x"]
            mean = x.mean(axis=(1, 2), keepdims=True)
            x = (x - mean) / (x.std(axis=(1, 2), keepdims=True) + kwargs["eps"])
        else:
            assert step["id"] == "ensure_dtype"
    return x


@pytest.mark.parametrize("stats", [
    ((0.4, 0.5), (0.2, 0.1), "dataset", None, None),
    ((0.4, 0.5), (0.2, 0.1), "image", None, None),
    ((0.4, 0.5), (0.2, 0.1), "percentile", (0.1, 0.3), (0.7, 0.3)),  # one constant channel
])
def test_preprocessing_of_every_normalisation_scheme_is_unetsegs(stats) -> None:
    from unetseg.config import ModelConfig
    from unetseg.data.classes import ClassTable
    from unetseg.data.normalize import ChannelStats, normalize
    from unetseg.export.bioimageio import _preprocessing
    from unetseg.modelfile import ModelCard

    card = ModelCard(ModelConfig(in_channels=2), ClassTable.from_values((0, 1)),
                     ChannelStats(*stats))
    raw = np.random.default_rng(0).integers(0, 256, (2, 12, 9)).astype(np.uint8)
    by_spec = _apply_spec_steps(_preprocessing(card, 255.0), raw)
    by_unetseg = normalize(raw / np.float32(255), card.stats)
    np.testing.assert_allclose(by_spec, by_unetseg, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["image", "percentile"])
def test_packages_of_other_normalisations_pass_the_model_test(scheme: str, tmp_path: Path
                                                             ) -> None:
    """bioimage.io's own model test runs the package's preprocessing on the test input and
    compares with unetseg's eager output for it: they agree for every scheme."""
    from PIL import Image

    from unetseg.data.classes import ClassTable
    from unetseg.data.normalize import ChannelStats
    from unetseg.model import UNet
    from unetseg.modelfile import ModelCard, save_model

    torch.manual_seed(0)
    net = UNet(1, 2, depth=2, width=4, norm="batch").eval()
    bounds = ((0.2,), (0.6,)) if scheme == "percentile" else (None, None)
    card = ModelCard(net.config, ClassTable.from_values((0, 255)),
                     ChannelStats((0.4,), (0.15,), scheme, *bounds))  # type: ignore[arg-type]
    save_model(tmp_path / "m.safetensors", net, card)
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((80, 90)) * 255).astype(np.uint8)).save(tmp_path / "s.png")
    assert main(["-q", "export", str(tmp_path / "m.safetensors"), "--format", "bioimageio",
                 "--out", str(tmp_path / "m.zip"), "--sample", str(tmp_path / "s.png"),
                 "--author", "Ada Lovelace"]) == 0
    summary = core.test_model(tmp_path / "m.zip")
    assert summary.status == "passed", summary.display() if hasattr(summary, "display") else ""
