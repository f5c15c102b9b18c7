"""Prediction of layer data without Qt: every layout of a layer as model inputs, a stack
predicted image by image with progress and cancelling, and which model file a folder means."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unetseg.errors import UserError
from unetseg.infer.load import load_predictor
from unetseg.napari.planes import model_planes
from unetseg.napari.predict import Cancelled, predict_planes, resolve_model_file


@pytest.fixture(scope="module")
def gray_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shipping import tiny_model

    return tiny_model(tmp_path_factory.mktemp("napari") / "tiny.safetensors")


def test_planes_of_every_layout() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    planes = model_planes(gray, rgb=False, in_channels=1)
    assert (planes.layout, planes.labels_shape, planes.count) == ("gray", (3, 4), 1)
    np.testing.assert_allclose(planes.image(()), gray[None] / 255)
    stack = np.zeros((2, 5, 3, 4), np.uint16)
    planes = model_planes(stack, rgb=False, in_channels=1)
    assert (planes.layout, planes.labels_shape, list(planes.indices())[-1]) == (
        "stack", (2, 5, 3, 4), (1, 4))
    rgba = np.zeros((3, 4, 4), np.float32)
    planes = model_planes(rgba, rgb=True, in_channels=3)
    assert planes.layout == "rgb" and planes.image(()).shape == (3, 3, 4)  # alpha dropped
    first = model_planes(np.zeros((2, 3, 5, 6), bool), rgb=False, in_channels=3)
    assert (first.layout, first.labels_shape, first.image((1,)).shape) == (
        "channels-first", (2, 5, 6), (3, 5, 6))
    with pytest.raises(UserError, match=r"layer 'g': the model takes 3-channel \(RGB\) images"
                                        r" but this layer has shape \(3, 4\)"):
        model_planes(gray, rgb=False, in_channels=3, name="g")
    with pytest.raises(UserError, match="no axis of 2 channels"):
        model_planes(np.zeros((3, 5, 6)), rgb=False, in_channels=2)
    with pytest.raises(UserError, match="samples of type int32"):
        model_planes(gray.astype(np.int32), rgb=False, in_channels=1).image(())


def test_a_stack_is_predicted_plane_by_plane_with_progress_and_can_be_cancelled(
        gray_model: Path, one_torch_thread: None) -> None:
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 256, (3, 48, 80), dtype=np.uint8)
    predictor, card = load_predictor(gray_model, device="cpu", tile=32, overlap=0.25,
                                     batch_size=2)
    seen: list[tuple[int, int]] = []
    values = predict_planes(predictor, card.classes, model_planes(stack, rgb=False,
                                                                  in_channels=1),
                            on_progress=lambda d, t: seen.append((d, t)))
    for z in range(3):
        ids = predictor.logits(stack[z][None].astype(np.float32) / 255).argmax(0).numpy()
        np.testing.assert_array_equal(values[z], np.array([0, 255], np.uint8)[ids])
    total = seen[-1][1]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] == total
    assert {t for _, t in seen} == {total} and total % 3 == 0 and len(seen) >= 6

    asked = iter([False, False, True])
    with pytest.raises(Cancelled):
        predict_planes(predictor, card.classes, model_planes(stack, rgb=False, in_channels=1),
                       should_stop=lambda: next(asked, True))


def test_model_folders(tmp_path: Path, gray_model: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.safetensors", "last.safetensors"):
        (run / name).write_bytes(gray_model.read_bytes())
    assert resolve_model_file(run) == (run / "best.safetensors",
                                       " (the run folder's best.safetensors)")
    (run / "best.safetensors").unlink()
    assert resolve_model_file(run)[0] == run / "last.safetensors"
    (run / "other.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="holds 2 model files; predicting with several models"
                                        " averaged is not supported yet"):
        resolve_model_file(run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .safetensors model file"):
        resolve_model_file(tmp_path / "empty")
    assert resolve_model_file(gray_model) == (gray_model, "")
    with pytest.raises(UserError, match="choose a model file"):
        resolve_model_file("")


def test_an_instance_model_gives_object_ids(tmp_path: Path, one_torch_thread: None) -> None:
    from shipping import sample_images, tiny_instance_model

    from unetseg.data.io import read_image
    from unetseg.infer.instances import instances_from_logits

    model = tiny_instance_model(tmp_path / "objects.safetensors")
    predictor, card = load_predictor(model, device="cpu", tile=128)
    assert card.instance is not None
    image = read_image(sample_images()[0])[0, :96, :128]
    planes = model_planes(np.round(image * 255).astype(np.uint8), rgb=False, in_channels=1)
    ids = predict_planes(predictor, card.classes, planes, instance=card.instance)
    expected = instances_from_logits(predictor.logits(planes.image(())), card.instance)
    assert ids.dtype == np.int32 and ids.max() > 3
    np.testing.assert_array_equal(ids, expected)
