"""OME-Zarr images are predicted band by band into an NGFF label image beside them, with the
labels of whole-image prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unetseg.data.classes import ClassTable
from unetseg.data.normalize import ChannelStats
from unetseg.errors import UserError
from unetseg.model import UNet
from unetseg.modelfile import ModelCard, save_model

zarr = pytest.importorskip("zarr")
pytest.importorskip("ome_zarr")

from ome_zarr.format import FormatV04  # noqa: E402
from ome_zarr.writer import write_image  # noqa: E402

from unetseg.infer.omezarr import (  # noqa: E402
    LabelPyramid,
    OmeZarrBandReader,
    label_levels,
    open_omezarr,
)

STATS = ChannelStats((0.5,), (0.25,))
CLASSES = ClassTable.from_values((0, 7, 42))


def _model_file(path: Path, classes: ClassTable = CLASSES, channels: int = 1,
                seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = UNet(channels, classes.num_classes, depth=2, width=4).eval()
    stats = ChannelStats((0.5,) * channels, (0.25,) * channels)
    save_model(path, model, ModelCard(model.config, classes, stats))
    return path


def _pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smooth blobs plus noise, uint8: every class of a random net shows up."""
    rng = np.random.default_rng(seed)
    h, w = shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    blobs = np.sin(yy / 9.0 + rng.random() * 6) * np.cos(xx / 13.0 + rng.random() * 6)
    noise = rng.random(shape)
    return np.clip(127 + 90 * blobs + 40 * (noise - 0.5), 0, 255).astype(np.uint8)


def _write(path: Path, pixels: np.ndarray, axes: str, *, v04: bool = False,
           chunks: tuple[int, ...] | None = None, levels: int = 3) -> Path:
    group = zarr.open_group(str(path), mode="w", zarr_format=2 if v04 else 3)
    chunks = chunks or tuple(1 if a in "tcz" else 32 for a in axes)
    write_image(pixels, group, axes=axes, scale_factors=tuple(2**k for k in range(1, levels)),
                fmt=FormatV04() if v04 else None, storage_options={"chunks": chunks})
    return path


def _level(path: Path, level: int) -> np.ndarray:
    group = zarr.open_group(str(path), mode="r")
    ome = group.attrs.asdict()
    ome = ome.get("ome", ome)
    return np.asarray(group[ome["multiscales"][0]["datasets"][level]["path"]][:])


def _in_memory(model: Path, plane: np.ndarray, tmp: Path, **options) -> np.ndarray:
    """The labels ``unetseg predict`` writes for ``plane`` (H, W) or (C, H, W) as a PNG."""
    from unetseg.api import predict

    tmp.mkdir(parents=True, exist_ok=True)
    png = tmp / "plane.png"
    Image.fromarray(plane if plane.ndim == 2 else np.moveaxis(plane, 0, -1)).save(png)
    (written,) = predict(model, [png], tmp / "out", stream=False, overlays=False,
                         show_progress=False, **options)
    return np.array(Image.open(written))


def _labels(path: Path, name: str = "unetseg") -> tuple[dict, list[np.ndarray]]:
    group = zarr.open_group(str(path / "labels" / name), mode="r")
    attrs = group.attrs.asdict()
    ome = attrs.get("ome", attrs)
    arrays = [np.asarray(group[d["path"]][:]) for d in ome["multiscales"][0]["datasets"]]
    return ome, arrays


def _one_line(info: pytest.ExceptionInfo, *names: object) -> str:
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert str(name) in message
    return message


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("v04", [False, True])
def test_band_reader_reads_rows_of_one_plane(tmp_path: Path, v04: bool):
    pixels = _pixels((1, 2, 3, 70, 90))  # t, c, z, y, x
    path = _write(tmp_path / "img.ome.zarr", pixels, "tczyx", v04=v04,
                  chunks=(1, 2, 1, 16, 32))
    image = open_omezarr(path)
    assert (image.channels, image.height, image.width) == (2, 70, 90)
    assert image.planes() == [(0, 0), (0, 1), (0, 2)]
    reader = OmeZarrBandReader(image, (0, 2))
    for top, bottom in [(0, 1), (5, 40), (15, 17), (60, 70), (0, 70)]:
        np.testing.assert_array_equal(reader.rows(top, bottom),
                                      pixels[0, :, 2, top:bottom] / np.float32(255))
    mirrored = reader.mirrored_rows(-9, 20)
    reference = np.pad(pixels[0, :, 2], ((0, 0), (9, 0), (0, 0)), mode="reflect")[:, :29]
    np.testing.assert_array_equal(mirrored, reference / np.float32(255))


def test_label_pyramid_keeps_every_2k_th_pixel(tmp_path: Path):
    labels = (np.arange(2 * 45 * 37).reshape(2, 45, 37) % 251).astype(np.uint8)
    group = zarr.open_group(str(tmp_path / "p"), mode="w")
    pyramid = LabelPyramid(group, labels.shape, labels.dtype, 3, ["z", "y", "x"])
    for z in range(2):
        pyramid.start((z,))
        for top, bottom in [(0, 13), (13, 14), (14, 40), (40, 45)]:
            pyramid.add(top, labels[z, top:bottom])
        pyramid.finish()
    for k, array in enumerate(pyramid.arrays):
        np.testing.assert_array_equal(array[:], labels[:, :: 2**k, :: 2**k])
    assert label_levels(20000, 20000) == 8 and label_levels(64, 48) == 3
    assert label_levels(3, 2) == 2 and label_levels(1, 1) == 1


# --------------------------------------------------------------------------- predicting


def test_labels_equal_in_memory_prediction_and_are_valid_ngff(tmp_path: Path):
    from ome_zarr_models.v05 import Image as NgffImage

    from unetseg.api import predict

    model = _model_file(tmp_path / "m.safetensors")
    pixels = _pixels((1, 150, 170))
    path = _write(tmp_path / "cells.ome.zarr", pixels, "cyx")
    (written,) = predict(model, [path], tmp_path / "out", show_progress=False)
    assert written == path / "labels" / "unetseg"
    assert (tmp_path / "out" / "cells_overlay.png").is_file()
    ome, arrays = _labels(path)
    reference = _in_memory(model, pixels[0], tmp_path / "ref")
    np.testing.assert_array_equal(arrays[0], reference)
    assert set(np.unique(arrays[0])) == {0, 7, 42}, "the test needs every class to appear"
    assert len(arrays) >= 3
    for k, array in enumerate(arrays):
        np.testing.assert_array_equal(array, arrays[0][:: 2**k, :: 2**k])
    # NGFF 0.5, checked by the pydantic models of ome-zarr-models
    group = zarr.open_group(str(path), mode="r")
    labels = NgffImage.from_zarr(group).labels
    assert labels is not None and labels.label_paths == ["unetseg"]
    label = labels.get_image_labels_group("unetseg").attributes.ome
    assert [(c.label_value, c.rgba[3]) for c in label.image_label.colors] == [
        (0, 255), (7, 255), (42, 255)]
    assert label.image_label.source.image == "../../"
    assert [a.name for a in label.multiscales[0].axes] == ["y", "x"]
    scales = [d.coordinateTransformations[0].scale for d in label.multiscales[0].datasets]
    assert scales == [[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]]
    assert [p["class"] for p in ome["image-label"]["properties"]] == list(CLASSES.names)


def test_ome_zarr_reader_finds_the_labels_with_their_colours(tmp_path: Path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from unetseg.api import predict
    from unetseg.data.masks import class_colours

    model = _model_file(tmp_path / "m.safetensors")
    path = _write(tmp_path / "img.zarr", _pixels((60, 80)), "yx", v04=True)
    predict(model, path, tmp_path / "out", label_name="cells", overlays=False,
            show_progress=False)
    nodes = {n.zarr.basename(): n for n in Reader(parse_url(str(path)))()}
    label = nodes["cells"]
    assert [type(s).__name__ for s in label.specs] == ["Label", "Multiscales"]
    colours = class_colours(CLASSES) / 255
    assert label.metadata["color"] == {v: [*c, 1.0] for v, c in zip(CLASSES.values,
                                                                    colours.tolist())}
    assert [tuple(d.shape) for d in label.data] == [(60, 80), (30, 40), (15, 20)]
    attrs = json.loads((path / "labels" / ".zattrs").read_text())
    assert attrs == {"labels": ["cells"]}  # NGFF 0.4 on Zarr v2, like the image
    assert json.loads((path / "labels" / "cells" / ".zattrs").read_text())[
        "image-label"]["version"] == "0.4"


def test_small_bands_give_the_same_labels_as_one_window(tmp_path: Path):
    from unetseg.api import predict
    from unetseg.infer.stream import plan_windows

    model = _model_file(tmp_path / "m.safetensors", seed=1)
    pixels = _pixels((1, 1, 1, 157, 233), seed=3)
    path = _write(tmp_path / "img.ome.zarr", pixels, "tczyx", chunks=(1, 1, 1, 32, 48))
    plan = plan_windows("same", 2, 157, 233, tile=64)
    assert len(plan.ys) > 2 and len(plan.xs) > 2, "the test must cross band and tile borders"
    predict(model, [path], tmp_path / "out", tile=64, batch_size=3, overlays=False,
            show_progress=False)
    _, arrays = _labels(path)
    assert arrays[0].shape == (1, 1, 157, 233)  # t, z, y, x: the channel axis dropped
    reference = _in_memory(model, pixels[0, 0, 0], tmp_path / "ref", tile=64, batch_size=3)
    np.testing.assert_array_equal(arrays[0][0, 0], reference)


def test_level_1_predicts_the_downsampled_level(tmp_path: Path):
    from unetseg.api import predict

    model = _model_file(tmp_path / "m.safetensors")
    path = _write(tmp_path / "img.ome.zarr", _pixels((1, 130, 150)), "cyx")
    predict(model, [path], tmp_path / "out", level=1, label_name="half", overlays=False,
            show_progress=False)
    ome, arrays = _labels(path, "half")
    level1 = _level(path, 1)
    assert arrays[0].shape == level1.shape[1:]
    np.testing.assert_array_equal(arrays[0], _in_memory(model, level1[0], tmp_path / "ref"))
    image_scale = zarr.open_group(str(path), mode="r").attrs["ome"]["multiscales"][0][
        "datasets"][1]["coordinateTransformations"][0]["scale"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in ome["multiscales"][0][
        "datasets"]]
    assert scales[0] == image_scale[1:] and scales[1] == [2 * s for s in image_scale[1:]]


def test_every_z_plane_is_predicted(tmp_path: Path):
    from unetseg.api import predict

    model = _model_file(tmp_path / "m.safetensors")
    pixels = _pixels((2, 50, 60), seed=4)
    path = _write(tmp_path / "stack.ome.zarr", pixels, "zyx")
    predict(model, [path], tmp_path / "out", overlays=False, show_progress=False)
    _, arrays = _labels(path)
    assert arrays[0].shape == (2, 50, 60) and arrays[1].shape == (2, 25, 30)
    for z in range(2):
        np.testing.assert_array_equal(arrays[0][z], _in_memory(model, pixels[z],
                                                               tmp_path / f"ref{z}"))


def test_colour_classes_are_stored_as_their_codes(tmp_path: Path):
    from unetseg.api import predict

    colours = ((0, 0, 255), (255, 0, 0))
    classes = ClassTable((0x0000FF, 0xFF0000), ("blue", "red"), encoding="rgb",
                         colors=colours)
    model = _model_file(tmp_path / "m.safetensors", classes, seed=2)
    path = _write(tmp_path / "img.ome.zarr", _pixels((40, 50)), "yx")
    predict(model, [path], tmp_path / "out", overlays=False, show_progress=False)
    ome, arrays = _labels(path)
    assert arrays[0].dtype == np.uint32 and set(np.unique(arrays[0])) <= {0x0000FF, 0xFF0000}
    assert [c["rgba"] for c in ome["image-label"]["colors"]] == [[0, 0, 255, 255],
                                                                 [255, 0, 0, 255]]


# --------------------------------------------------------------------------- refusing


def test_existing_labels_are_kept_unless_overwrite(tmp_path: Path):
    from unetseg.api import predict

    model = _model_file(tmp_path / "m.safetensors")
    path = _write(tmp_path / "img.ome.zarr", _pixels((40, 50)), "yx")
    predict(model, [path], tmp_path / "out", overlays=False, show_progress=False)
    before = _labels(path)[1][0]
    other = _model_file(tmp_path / "other.safetensors", seed=5)
    with pytest.raises(UserError) as info:
        predict(other, [path], tmp_path / "out", overlays=False, show_progress=False)
    assert "--overwrite-labels" in _one_line(info, path / "labels" / "unetseg")
    np.testing.assert_array_equal(_labels(path)[1][0], before)
    predict(other, [path], tmp_path / "out", overlays=False, overwrite_labels=True,
            show_progress=False)
    after = _labels(path)[1][0]
    assert not np.array_equal(after, before)
    assert zarr.open_group(str(path / "labels"), mode="r").attrs["ome"]["labels"] == [
        "unetseg"]
    assert sorted(p.name for p in (path / "labels").iterdir()) == ["unetseg", "zarr.json"]


def test_bad_images_end_with_one_line_naming_the_file(tmp_path: Path):
    from unetseg.api import predict

    model = _model_file(tmp_path / "m.safetensors")
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w").create_array("0", shape=(8, 8), dtype="uint8")
    with pytest.raises(UserError) as info:
        predict(model, [plain], tmp_path / "out", show_progress=False)
    assert "not an OME-Zarr image" in _one_line(info, plain)
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    with pytest.raises(UserError) as info:
        predict(model, [empty], tmp_path / "out", show_progress=False)
    _one_line(info, empty)
    rgb = _write(tmp_path / "rgb.ome.zarr", _pixels((3, 30, 40)), "cyx")
    with pytest.raises(UserError) as info:
        predict(model, [rgb], tmp_path / "out", show_progress=False)
    assert "1-channel" in _one_line(info, rgb)
    with pytest.raises(UserError) as info:
        predict(model, [rgb], tmp_path / "out", level=3, show_progress=False)
    assert "levels 0 to 2" in _one_line(info, rgb, "--level 3")
    with pytest.raises(UserError) as info:
        predict(model, [rgb], tmp_path / "out", label_name="../x", show_progress=False)
    _one_line(info, "--label-name")
    assert not (rgb / "labels").exists() and not (tmp_path / "out").exists()


def test_missing_zarr_names_the_extra(tmp_path: Path, monkeypatch):
    import sys

    path = _write(tmp_path / "img.ome.zarr", _pixels((20, 20)), "yx")
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr raises ImportError
    with pytest.raises(UserError) as info:
        open_omezarr(path)
    assert "unetseg[zarr]" in _one_line(info, path)


def test_cli_predicts_beside_the_image_and_refuses_in_one_line(tmp_path: Path, capsys):
    import inspect

    from unetseg.api import predict
    from unetseg.cli import build_parser, main

    model = _model_file(tmp_path / "m.safetensors")
    path = _write(tmp_path / "img.ome.zarr", _pixels((1, 64, 64)), "cyx")
    assert main(["-q", "predict", str(model), str(path), "--out", str(tmp_path / "out"),
                 "--level", "1", "--label-name", "seg"]) == 0
    assert f"wrote labels {path / 'labels' / 'seg'}" in capsys.readouterr().out
    assert _labels(path, "seg")[1][0].shape == (32, 32)
    assert main(["-q", "predict", str(model), str(path), "--out", str(tmp_path / "out"),
                 "--level", "1", "--label-name", "seg"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unetseg: error:") and "\n" not in err and "--overwrite-labels" in err
    args = build_parser().parse_args(["predict", str(model), str(path), "--out", "o"])
    defaults = inspect.signature(predict).parameters
    assert (args.level, args.label_name, args.overwrite_labels) == (
        defaults["level"].default, defaults["label_name"].default,
        defaults["overwrite_labels"].default)


def _stream_through(tmp: Path, h: int, w: int) -> tuple[int, np.ndarray, list[np.ndarray]]:
    """Stream an ``h`` x ``w`` OME-Zarr image of random pixels through the band reader, the
    window machinery (a stand-in network: class 1 where the pixel is above the mean) and a
    label pyramid of :func:`label_levels` levels; returns the numpy memory peak during the
    streaming (tracemalloc), the pixels and the pyramid."""
    import tracemalloc

    from unetseg.infer.stream import plan_windows, stream_labels

    group = zarr.open_group(str(tmp / "img.ome.zarr"), mode="w")
    pixels = group.create_array("0", shape=(h, w), chunks=(128, 512), dtype="uint8")
    rng = np.random.default_rng(0)
    for top in range(0, h, 128):
        pixels[top : top + 128] = rng.integers(0, 256, (128, w), dtype=np.uint8)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": [
        {"name": "y", "type": "space"}, {"name": "x", "type": "space"}], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1]}]}]}]}
    image = open_omezarr(tmp / "img.ome.zarr")
    out = zarr.open_group(str(tmp / "labels"), mode="w")

    def above_mean(batch: torch.Tensor) -> torch.Tensor:
        return torch.cat([-batch, batch], dim=1)

    plan = plan_windows("same", 2, h, w, tile=128)
    pyramid = LabelPyramid(out, (h, w), np.dtype(np.uint8), label_levels(h, w), ["y", "x"])
    tracemalloc.start()
    pyramid.start(())
    for top, ids, _ in stream_labels(OmeZarrBandReader(image), above_mean, plan, STATS,
                                     batch_size=4):
        pyramid.add(top, ids.astype(np.uint8))
    pyramid.finish()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, np.asarray(pixels[:]), [np.asarray(a[:]) for a in pyramid.arrays]


@pytest.mark.slow
def test_reading_and_writing_memory_does_not_grow_with_the_image(tmp_path: Path):
    """Bands of 128 rows: a 4x taller image streams in the same numpy memory, far below the
    image as float32 (16 MiB), and the deepest label level still holds the right pixels."""
    small, _, _ = _stream_through(tmp_path / "small", 1024, 1024)
    peak, pixels, levels = _stream_through(tmp_path / "tall", 4096, 1024)
    assert len(levels) == 5
    assert peak < 1.3 * small and peak < pixels.size * 4 / 2, (
        f"peak {peak / 2**20:.1f} MiB, {small / 2**20:.1f} MiB for a quarter of the rows")
    expected = (pixels / np.float32(255) > 0.5).astype(np.uint8)
    for k, level in enumerate(levels):
        np.testing.assert_array_equal(level, expected[:: 2**k, :: 2**k])
