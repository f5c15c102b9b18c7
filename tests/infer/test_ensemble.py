"""Model sets: the ensemble's probabilities are the hand average of its members' softmaxes
(each member normalising its own input), in memory, tiled, streamed, and exported."""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unetseg.config import PredictConfig
from unetseg.data.classes import ClassTable
from unetseg.data.normalize import ChannelStats, normalize
from unetseg.errors import UserError
from unetseg.infer.ensemble import EnsembleNet, load_ensemble_predictor
from unetseg.infer.modelset import ModelSet, read_model_set, resolve_model, write_model_set
from unetseg.infer.postprocess import Step
from unetseg.infer.tta import with_tta
from unetseg.model import UNet
from unetseg.modelfile import ModelCard, save_model

CLASSES = ClassTable.from_values((0, 128, 255))
STATS = [ChannelStats((0.2,), (0.1,)), ChannelStats((0.5,), (0.3,)),
         ChannelStats((0.7,), (0.05,))]


def members(folder: Path, count: int = 3, classes: ClassTable = CLASSES,
            norm: str = "instance") -> list[Path]:
    paths = []
    for i in range(count):
        torch.manual_seed(i)
        net = UNet(1, classes.num_classes, depth=2, width=4, norm=norm).eval()
        path = folder / f"m{i}.safetensors"
        save_model(path, net, ModelCard(net.config, classes, STATS[i % len(STATS)]))
        paths.append(path)
    return paths


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hand_probabilities(paths, image: np.ndarray, tta=None) -> torch.Tensor:
    """Mean over members of softmax(member(normalise(image, its stats))), one window."""
    from unetseg.modelfile import load_model

    total = 0
    for net, card in (load_model(p) if isinstance(p, Path) else p for p in paths):
        x = normalize(torch.from_numpy(image)[None], card.stats)
        with torch.inference_mode():
            logits = with_tta(net, tta)(x)[0]
        total = total + torch.softmax(logits, 0)
    return total / len(paths)


@pytest.mark.parametrize("tta", [None, "flip"])
def test_ensemble_probabilities_are_the_mean_of_the_members_softmax(tmp_path, tta):
    paths = members(tmp_path)
    image = np.random.default_rng(0).random((1, 20, 28)).astype(np.float32)
    predictor, card = load_ensemble_predictor(paths, PredictConfig(device="cpu",
                                                                   precision="fp32", tta=tta))
    got = torch.softmax(predictor.logits(image), 0)
    expected = hand_probabilities(paths, image, tta)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
    assert card.classes == CLASSES and card.stats.mean == (0.0,)
    assert card.info["members"] == [str(p) for p in paths]


def test_a_tiled_ensemble_blends_the_log_of_the_mean_probabilities(tmp_path):
    from unetseg.infer.predict import sliding_window_logits

    paths = members(tmp_path, 2)
    image = np.random.default_rng(1).random((1, 40, 52)).astype(np.float32)
    predictor, _ = load_ensemble_predictor(paths, PredictConfig(device="cpu", precision="fp32",
                                                                tile=24, overlap=0.25))

    from unetseg.modelfile import load_model

    loaded = [load_model(p) for p in paths]

    def by_hand(windows: torch.Tensor) -> torch.Tensor:
        return torch.stack([hand_probabilities(loaded, w.numpy()).log() for w in windows])

    expected = sliding_window_logits(by_hand, torch.from_numpy(image), tile=24, overlap=0.25)
    torch.testing.assert_close(predictor.logits(image), expected, atol=2e-5, rtol=1e-5)


def test_members_of_another_class_table_are_refused(tmp_path):
    paths = members(tmp_path, 1)
    (tmp_path / "other").mkdir()
    paths += members(tmp_path / "other", 1, ClassTable.from_values((0, 1, 2)))
    with pytest.raises(UserError, match="another class table"):
        load_ensemble_predictor(paths, PredictConfig(device="cpu"))


def test_model_sets_are_named_by_folder_file_list_or_commas(tmp_path):
    paths = members(tmp_path, 2)
    assert resolve_model(paths[0]) == paths[0]
    listed = resolve_model(paths)
    assert isinstance(listed, ModelSet) and listed.members == tuple(paths)
    joined = resolve_model(",".join(map(str, paths)))
    assert isinstance(joined, ModelSet) and joined.members == tuple(paths)
    write_model_set(tmp_path, ["m0.safetensors", "m1.safetensors"], CLASSES,
                    [Step("fill_holes", 1)])
    from_folder = resolve_model(tmp_path)
    assert isinstance(from_folder, ModelSet) and from_folder.members == tuple(paths)
    assert from_folder.postprocessing == (Step("fill_holes", 1),)
    assert from_folder.classes == CLASSES
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(paths[0].read_bytes())
    assert resolve_model(run) == run / "best.safetensors"
    paths[1].unlink()
    with pytest.raises(UserError, match="is missing"):
        read_model_set(tmp_path / "modelset.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="without modelset.json or best.safetensors"):
        resolve_model(tmp_path / "empty")


def test_predict_streamed_and_in_memory_give_the_same_ensemble_labels(tmp_path):
    from unetseg.api import predict

    paths = members(tmp_path, 2, norm="batch")
    image = (np.random.default_rng(2).random((70, 90)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "big.tif", image, tile=(32, 32))
    options = dict(device="cpu", precision="fp32", tile=48, overlap=0.25, show_progress=False,
                   overlays=False)
    predict(paths, tmp_path / "in", tmp_path / "mem", stream=False, **options)
    predict(",".join(map(str, paths)), tmp_path / "in", tmp_path / "str", stream=True,
            **options)
    in_memory = np.asarray(Image.open(tmp_path / "mem" / "big.png"))
    streamed = tifffile.imread(tmp_path / "str" / "big.tif")
    assert (in_memory == streamed).mean() > 0.999  # equal but for float ties


def test_evaluate_applies_the_model_sets_post_processing(tmp_path, disc_data):
    from unetseg.api import evaluate

    classes = ClassTable.from_values((0, 255))
    paths = members(tmp_path, 2, classes)
    write_model_set(tmp_path, [p.name for p in paths], classes,
                    [Step("largest_component", 1)])
    plain = evaluate(paths, disc_data, device="cpu", show_progress=False)
    processed = evaluate(tmp_path, disc_data, device="cpu", show_progress=False)
    assert "postprocessing" not in plain.summary
    assert processed.summary["postprocessing"] == [
        {"step": "largest_component", "class_id": 1, "class": "foreground"}]
    for stem, labels in processed.predictions.items():
        from scipy import ndimage

        assert ndimage.label(labels == 1)[1] <= 1, stem
        assert json.dumps(processed.summary)  # JSON-ready


@pytest.mark.slow
def test_an_exported_model_set_is_one_graph_with_the_ensembles_logits(tmp_path):
    pytest.importorskip("onnxruntime")
    from unetseg.export import export_model
    from unetseg.infer.backends import load_onnx_image_predictor

    paths = members(tmp_path, 2)
    result = export_model(paths, tmp_path / "set.onnx", "onnx")
    assert result.report.passed
    onnx_predictor, card = load_onnx_image_predictor(tmp_path / "set.onnx")
    assert card.stats.mean == (0.0,) and "members' mean" in onnx_predictor.info.layout
    image = np.random.default_rng(3).random((1, 30, 33)).astype(np.float32)
    torch_predictor, _ = load_ensemble_predictor(paths, PredictConfig(
        device="cpu", precision="fp32", tile=512, overlap=0.25))
    torch.testing.assert_close(onnx_predictor.logits(image), torch_predictor.logits(image),
                               atol=1e-4, rtol=1e-4)


def test_ensemble_net_refuses_members_of_other_geometry():
    a = UNet(1, 2, depth=2, width=4, padding="valid").eval()
    b = UNet(1, 2, depth=3, width=4, padding="valid").eval()
    with pytest.raises(ValueError, match="one depth"):
        EnsembleNet([a, b], STATS[:2])
    c = UNet(1, 3, depth=2, width=4).eval()
    with pytest.raises(ValueError, match="same channels"):
        EnsembleNet([a, c], STATS[:2])


def test_serve_predicts_with_the_model_set_and_its_post_processing(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    testclient = pytest.importorskip("fastapi.testclient")
    import io

    from scipy import ndimage

    from unetseg.api import predict
    from unetseg.serve.app import create_app

    classes = ClassTable.from_values((0, 255))
    paths = members(tmp_path, 2, classes)
    write_model_set(tmp_path, [p.name for p in paths], classes, [Step("largest_component", 1)])
    image = (np.random.default_rng(4).random((40, 50)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "x.png")
    predict(tmp_path, tmp_path / "in", tmp_path / "out", device="cpu", show_progress=False,
            overlays=False)
    expected = np.asarray(Image.open(tmp_path / "out" / "x.png"))
    assert ndimage.label(expected == 255)[1] <= 1
    with testclient.TestClient(create_app(tmp_path, device="cpu")) as client:
        info = client.get("/model").json()
        assert len(info["members"]) == 2 and info["postprocessing"][0]["step"] == (
            "largest_component")
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        reply = client.post("/predict", files={"file": ("x.png", buf.getvalue(), "image/png")})
        assert reply.status_code == 200
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(reply.content))),
                                      expected)


def _image_members(folder: Path, schemes=("image", "image")) -> list[Path]:
    paths = []
    for i, scheme in enumerate(schemes):
        torch.manual_seed(10 + i)
        net = UNet(1, 3, depth=2, width=4, norm="none").eval()
        path = folder / f"p{i}.safetensors"
        save_model(path, net, ModelCard(net.config, CLASSES,
                                        ChannelStats((0.3 + i / 10,), (0.2,), scheme)))
        paths.append(path)
    return paths


def test_members_normalised_per_image_see_the_whole_images_statistics(tmp_path):
    """The set z-scores the whole image before tiling: the same as tiling the hand-normalised
    image through members that change nothing, not each window z-scored on its own."""
    from unetseg.infer.engine import ImagePredictor
    from unetseg.infer.ensemble import identity_stats
    from unetseg.modelfile import load_model

    paths = _image_members(tmp_path)
    rng = np.random.default_rng(4)
    image = (rng.random((1, 40, 52)) * np.linspace(0.2, 1.0, 52)).astype(np.float32)
    config = PredictConfig(device="cpu", precision="fp32", tile=24, overlap=0.25)
    predictor, card = load_ensemble_predictor(paths, config)
    assert card.stats.scheme == "image"
    z = (image - image.mean()) / image.std()
    nets = [load_model(p)[0] for p in paths]
    plain = ImagePredictor(EnsembleNet(nets, [identity_stats(1)] * 2).eval(), identity_stats(1),
                           tile=24, overlap=0.25)
    torch.testing.assert_close(predictor.logits(image), plain.logits(z), atol=1e-4, rtol=1e-4)
    windowed = ImagePredictor(EnsembleNet(nets, [ChannelStats((0.0,), (1.0,), "image")] * 2
                                          ).eval(), identity_stats(1), tile=24, overlap=0.25)
    assert (predictor.logits(image) - windowed.logits(image)).abs().max() > 1e-3


def test_a_model_set_of_mixed_normalisations_is_refused(tmp_path):
    paths = _image_members(tmp_path, ("image", "dataset"))
    with pytest.raises(UserError, match="one --normalization"):
        load_ensemble_predictor(paths, PredictConfig(device="cpu"))


def test_the_exported_ensemble_clips_members_normalised_by_percentiles():
    from unetseg.export.graph import ExportableEnsemble

    torch.manual_seed(0)
    nets = [UNet(1, 3, depth=2, width=4, norm="none").eval() for _ in range(2)]
    stats = [ChannelStats((0.4,), (0.2,), "percentile", (0.1,), (0.6,)),
             ChannelStats((0.5,), (0.3,))]
    ensemble = EnsembleNet(nets, stats).eval()
    x = torch.from_numpy(np.random.default_rng(5).random((2, 1, 16, 20)).astype(np.float32))
    with torch.inference_mode():
        torch.testing.assert_close(ExportableEnsemble(ensemble)(x), ensemble(x), atol=1e-5,
                                   rtol=1e-5)
