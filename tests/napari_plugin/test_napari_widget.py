"""The dock widget: an image layer predicted in a worker thread into a Labels layer whose values,
colours and names are those of ``unetseg predict``; RGB and channel-first layers; a channel-count
mismatch; cancelling; the widget docked from the manifest in a viewer with its canvas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("napari")
pytest.importorskip("magicgui")
pytest.importorskip("qtpy")

from unetseg import api  # noqa: E402
from unetseg.data.classes import ClassTable  # noqa: E402
from unetseg.data.io import read_mask  # noqa: E402
from unetseg.data.masks import class_colours  # noqa: E402
from unetseg.data.normalize import ChannelStats  # noqa: E402
from unetseg.infer.load import load_predictor  # noqa: E402
from unetseg.model import UNet  # noqa: E402
from unetseg.modelfile import ModelCard, save_model  # noqa: E402

WAIT_MS = 120_000


@pytest.fixture(scope="module")
def gray_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shipping import tiny_model

    return tiny_model(tmp_path_factory.mktemp("napari") / "tiny.safetensors")


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-channel, 3-class model whose classes are 0, 7 and 42 (values, not ids)."""
    torch.manual_seed(3)
    net = UNet(3, 3, depth=2, width=4, padding="same").eval()
    with torch.no_grad():  # each class centred, so that all three win somewhere
        net.head.bias -= net(torch.randn(1, 3, 64, 64))[0].mean((1, 2))
    classes = ClassTable.from_values((0, 7, 42), ("sky", "road", "car"))
    path = tmp_path_factory.mktemp("napari") / "rgb.safetensors"
    save_model(path, net, ModelCard(net.config, classes, ChannelStats((0.5,) * 3, (0.25,) * 3)))
    return path


@pytest.fixture(scope="module")
def gray_png() -> Path:
    from shipping import sample_images

    return sample_images()[0]


def _run(widget, qtbot, layer, model: Path):
    widget.model_file.value = model
    widget.image_layer.value = layer
    worker = widget.predict()
    assert worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def _labels(viewer):
    from napari.layers import Labels

    found = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert len(found) == 1, [layer.name for layer in viewer.layers]
    return found[0]


def test_widget_predicts_a_layer_as_unetseg_predict_does(viewer, qtbot, gray_model: Path,
                                                        gray_png: Path, tmp_path: Path) -> None:
    from unetseg.napari.widget import PredictWidget

    pixels = np.asarray(Image.open(gray_png))  # as napari's own reader opens it: (Y, X) uint8
    image = viewer.add_image(pixels, name="slice", scale=(2.0, 0.5))
    widget = PredictWidget(viewer)
    assert [name for name, _ in widget._image_choices()] == ["slice"]
    _run(widget, qtbot, image, gray_model)

    labels = _labels(viewer)
    assert labels.name == "tiny: membrane, cell"
    assert labels.data.shape == pixels.shape and labels.data.dtype == np.uint8
    assert tuple(labels.scale) == (2.0, 0.5)
    written = api.predict(gray_model, gray_png, tmp_path / "out", overlays=False,
                          show_progress=False)
    truth = read_mask(written[0])  # the masks' own values, 0 (membrane) and 255 (cell)
    assert set(np.unique(truth)) == {0, 255}
    np.testing.assert_array_equal(labels.data, truth)
    # each class value in its overlay colour, the class names on hover
    rgba = labels.colormap.map(np.array([0, 255], np.uint8))
    np.testing.assert_allclose(rgba[:, :3], class_colours(ClassTable.from_values((0, 255))) / 255)
    assert list(labels.features["class"]) == ["membrane", "cell"]
    assert widget.progress.value == widget.progress.max >= 1
    assert "1 image predicted" in widget.status.value and "tiny.safetensors" in widget.status.value


def test_rgb_and_channel_first_layers_give_the_same_labels(viewer, qtbot, rgb_model: Path
                                                           ) -> None:
    from unetseg.napari.widget import PredictWidget

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    predictor, card = load_predictor(rgb_model, device="cpu")
    ids = predictor.logits(np.moveaxis(rgb, -1, 0).astype(np.float32) / 255).argmax(0).numpy()
    expected = np.array([0, 7, 42], np.uint8)[ids]
    assert len(np.unique(expected)) == 3
    widget = PredictWidget(viewer)
    for data in (rgb, np.moveaxis(rgb, -1, 0)):  # (Y, X, 3) shown as RGB; (C, Y, X)
        layer = viewer.add_image(data, rgb=data.shape[-1] == 3)
        _run(widget, qtbot, layer, rgb_model)
        labels = _labels(viewer)
        assert labels.name == "rgb: sky, road, car"
        np.testing.assert_array_equal(labels.data, expected)
        viewer.layers.remove(labels)
        viewer.layers.remove(layer)


def test_channel_mismatch_is_one_clear_message(viewer, qtbot, gray_model: Path) -> None:
    from unetseg.napari.widget import PredictWidget

    layer = viewer.add_image(np.zeros((32, 32, 3), np.uint8), rgb=True, name="photo")
    widget = PredictWidget(viewer)
    _run(widget, qtbot, layer, gray_model)
    assert widget.status.value.startswith("layer 'photo': the model takes 1-channel (gray)"
                                          " images but this layer is RGB (32, 32, 3)")
    assert "Split RGB" in widget.status.value
    assert len(viewer.layers) == 1 and widget.predict_button.enabled


def test_cancel_stops_without_a_layer(viewer, qtbot, gray_model: Path) -> None:
    from unetseg.napari.widget import PredictWidget

    layer = viewer.add_image(np.zeros((4, 64, 64), np.uint8), name="stack")
    widget = PredictWidget(viewer)
    widget.model_file.value = gray_model
    widget.image_layer.value = layer
    assert widget.predict() is not None and widget.cancel_button.enabled
    widget.cancel()  # while the model loads: stops before the first image
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.status.value == "Cancelled." and len(viewer.layers) == 1
    assert widget.predict_button.enabled and not widget.cancel_button.enabled


def test_the_widget_docks_from_the_manifest(gl_viewer, qtbot, gray_model: Path) -> None:
    """In a real viewer (with its canvas): the widget opened as napari opens a plugin's."""
    from unetseg.napari.widget import PredictWidget

    layer = gl_viewer.add_image(np.asarray(Image.open(
        api.demo_data_root() / "images" / "00.png"))[:96, :128], name="em")
    _dock, widget = gl_viewer.window.add_plugin_dock_widget("unetseg", "Predict (U-Net)")
    assert isinstance(widget, PredictWidget)
    _run(widget, qtbot, layer, gray_model)
    labels = _labels(gl_viewer)
    assert labels.data.shape == (96, 128) and labels.name == "tiny: membrane, cell"
