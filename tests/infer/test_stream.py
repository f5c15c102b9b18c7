"""Streaming prediction of large TIFFs equals whole-image prediction, band by band."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unetseg.data.normalize import ChannelStats, normalize
from unetseg.infer.predict import predict_logits
from unetseg.infer.stream import TiffBandReader, label_tiles, plan_windows, stream_labels
from unetseg.model import UNet

STATS = ChannelStats((0.5,), (0.25,))


@pytest.fixture
def tiffs(tmp_path: Path) -> tuple[np.ndarray, dict[str, Path]]:
    rng = np.random.default_rng(0)
    image = (rng.random((157, 233)) * 255).astype(np.uint8)
    paths = {"tiled": tmp_path / "tiled.tif", "strips": tmp_path / "strips.tif",
             "plain": tmp_path / "plain.tif"}
    tifffile.imwrite(paths["tiled"], image, tile=(32, 48), compression="zlib")
    tifffile.imwrite(paths["strips"], image, rowsperstrip=7, compression="zlib")
    tifffile.imwrite(paths["plain"], image)
    return image, paths


@pytest.mark.parametrize("kind", ["tiled", "strips", "plain"])
def test_band_reader_matches_a_full_read(tiffs, kind):
    image, paths = tiffs
    with TiffBandReader(paths[kind]) as reader:
        assert (reader.channels, reader.height, reader.width) == (1, 157, 233)
        for top, bottom in [(0, 1), (5, 40), (31, 33), (100, 157), (0, 157)]:
            np.testing.assert_array_equal(reader.rows(top, bottom)[0],
                                          image[top:bottom] / np.float32(255))
        mirrored = reader.mirrored_rows(-9, 20)[0]
        reference = np.pad(image, ((9, 0), (0, 0)), mode="reflect")[:29] / np.float32(255)
        np.testing.assert_array_equal(mirrored, reference)
        bottom = reader.mirrored_rows(150, 170)[0]
        reference = np.pad(image, ((0, 13), (0, 0)), mode="reflect")[150:170] / np.float32(255)
        np.testing.assert_array_equal(bottom, reference)


def test_rgb_tiff_bands_are_channels_first(tmp_path: Path):
    rgb = np.random.default_rng(1).integers(0, 65535, (40, 50, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, tile=(16, 16))
    with TiffBandReader(tmp_path / "rgb.tif") as reader:
        band = reader.rows(3, 30)
    np.testing.assert_allclose(band, rgb[3:30].transpose(2, 0, 1) / 65535, rtol=1e-6)


@pytest.mark.parametrize("padding,depth,tile", [("same", 3, 64), ("same", 2, 100),
                                                ("valid", 2, 96), ("valid", 3, 160)])
@pytest.mark.parametrize("kind", ["tiled", "strips"])
def test_streamed_labels_equal_whole_image_prediction(tiffs, padding, depth, tile, kind):
    image, paths = tiffs
    torch.manual_seed(0)
    model = UNet(1, 3, depth=depth, width=4, padding=padding, norm="batch").eval()
    x = normalize(torch.from_numpy(image[None] / np.float32(255)), STATS)
    reference = predict_logits(model, x, tile=tile, batch_size=2).argmax(0).numpy()
    plan = plan_windows(padding, depth, *image.shape, tile=tile)
    assert len(plan.ys) > 1 and len(plan.xs) > 1, "the test must cross band and tile borders"
    with TiffBandReader(paths[kind]) as reader:
        bands = list(stream_labels(reader, model, plan, STATS, batch_size=3))
    tops = [top for top, _, _ in bands]
    assert tops == sorted(tops) and tops[0] == 0
    labels = np.concatenate([ids for _, ids, _ in bands])
    np.testing.assert_array_equal(labels, reference)
    rows = np.concatenate([raw for _, _, raw in bands], axis=1)[0]
    np.testing.assert_array_equal(rows, image / np.float32(255))


def test_label_tiles_reassemble_the_image():
    labels = np.arange(50 * 70).reshape(50, 70) % 251
    bands = [(0, labels[:13]), (13, labels[13:14]), (14, labels[14:50])]
    tiles = list(label_tiles(iter(bands), 50, 70, 16, np.dtype(np.uint8)))
    assert len(tiles) == 4 * 5 and all(t.shape == (16, 16) for t in tiles)
    grid = np.block([[tiles[r * 5 + c] for c in range(5)] for r in range(4)])
    np.testing.assert_array_equal(grid[:50, :70], labels)
    assert not grid[50:].any() and not grid[:, 70:].any()


def test_predict_streams_tiffs_into_a_tiled_bigtiff(tmp_path: Path):
    from PIL import Image

    from unetseg.api import predict
    from unetseg.data.classes import ClassTable
    from unetseg.modelfile import ModelCard, save_model

    torch.manual_seed(0)
    model = UNet(1, 2, depth=2, width=4).eval()
    card = ModelCard(model.config, ClassTable.from_values((0, 255)), STATS)
    save_model(tmp_path / "m.safetensors", model, card)
    image = (np.random.default_rng(2).random((90, 130)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", image, tile=(32, 32))
    predict(tmp_path / "m.safetensors", [tmp_path / "big.tif"], tmp_path / "a", tile=64,
            stream=True, show_progress=False)
    predict(tmp_path / "m.safetensors", [tmp_path / "big.tif"], tmp_path / "b", tile=64,
            stream=False, show_progress=False)
    streamed = tifffile.imread(tmp_path / "a" / "big.tif")
    with tifffile.TiffFile(tmp_path / "a" / "big.tif") as tf:
        assert tf.is_bigtiff and tf.pages.first.is_tiled
    whole = np.array(Image.open(tmp_path / "b" / "big.png"))
    np.testing.assert_array_equal(streamed, whole)
    assert set(np.unique(streamed)) <= {0, 255}
    assert (tmp_path / "a" / "big_overlay.png").is_file()


def test_colour_rows_become_rgb_tiles():
    rgb = np.random.default_rng(3).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    tiles = list(label_tiles(iter([(0, rgb[:9]), (9, rgb[9:])]), 20, 30, 16,
                             np.dtype(np.uint8)))
    assert len(tiles) == 4 and tiles[0].shape == (16, 16, 3)
    grid = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)])
    np.testing.assert_array_equal(grid[:20, :30], rgb)
    assert not grid[20:].any() and not grid[:, 30:].any()


def _save(path: Path, model: UNet, classes) -> Path:
    from unetseg.modelfile import ModelCard, save_model

    save_model(path, model, ModelCard(model.config, classes, STATS))
    return path


def _both_ways(tmp_path: Path, model_path: Path, image: Path) -> tuple[Path, Path]:
    """Predict ``image`` streamed and in memory with the default (planned) tiling."""
    from unetseg.api import predict

    (streamed,) = predict(model_path, [image], tmp_path / "streamed", stream=True,
                          overlays=False, show_progress=False)
    (whole,) = predict(model_path, [image], tmp_path / "whole", stream=False, overlays=False,
                       show_progress=False)
    return streamed, whole


def test_streamed_labels_equal_in_memory_labels_with_instance_norm(tmp_path: Path,
                                                                    monkeypatch):
    from PIL import Image

    import unetseg.api
    from unetseg.data.classes import ClassTable

    torch.manual_seed(0)
    model = UNet(1, 3, depth=2, width=4, norm="instance").eval()
    classes = ClassTable.from_values((0, 7, 42))
    image = (np.random.default_rng(5).random((1200, 700)) * 255).astype(np.uint8)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, image, tile=(64, 64), compression="zlib")
    monkeypatch.setattr(unetseg.api, "STREAM_PIXELS", 1200 * 700 - 1)  # just above: streamed
    from unetseg.api import predict

    (streamed,) = predict(_save(tmp_path / "m.safetensors", model, classes), [path],
                          tmp_path / "streamed", overlays=False, show_progress=False)
    assert streamed.suffix == ".tif"
    monkeypatch.setattr(unetseg.api, "STREAM_PIXELS", 1200 * 700)  # not above: in memory
    (whole,) = predict(tmp_path / "m.safetensors", [path], tmp_path / "whole", overlays=False,
                       show_progress=False)
    assert whole.suffix == ".png"
    labels = tifffile.imread(streamed)
    np.testing.assert_array_equal(labels, np.array(Image.open(whole)))
    assert set(np.unique(labels)) == {0, 7, 42}, "the test needs every class to appear"


def test_a_palette_model_streams_a_palette_tiff(tmp_path: Path):
    from PIL import Image

    from unetseg.data.classes import ClassTable

    torch.manual_seed(1)
    model = UNet(1, 3, depth=2, width=4).eval()
    palette = (0, 0, 0, 200, 30, 40, 10, 220, 90, 5, 6, 250)  # indices 0..3; class values 1, 2, 3
    classes = ClassTable((1, 2, 3), ("a", "b", "c"), encoding="palette", palette=palette)
    image = (np.random.default_rng(6).random((150, 170)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", image, tile=(32, 32))
    streamed, whole = _both_ways(tmp_path, _save(tmp_path / "m.safetensors", model, classes),
                                 tmp_path / "img.tif")
    png = Image.open(whole)
    assert png.mode == "P"
    with tifffile.TiffFile(streamed) as tif:
        page = tif.pages.first
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        values = page.asarray()
        colormap = np.asarray(page.colormap)  # (3, 256) uint16
    np.testing.assert_array_equal(values, np.array(png))
    assert set(np.unique(values)) == {1, 2, 3}
    png_palette = np.array(png.getpalette()[: len(palette)]).reshape(-1, 3)
    np.testing.assert_array_equal(png_palette, np.reshape(palette, (-1, 3)))
    np.testing.assert_array_equal(colormap[:, : len(png_palette)].T // 257, png_palette)


def test_a_colour_model_streams_an_rgb_tiff_in_its_colours(tmp_path: Path):
    from PIL import Image

    from unetseg.data.classes import ClassTable

    torch.manual_seed(2)
    model = UNet(1, 2, depth=2, width=4).eval()
    colours = ((0, 0, 255), (255, 0, 0))
    classes = ClassTable((0x0000FF, 0xFF0000), ("blue", "red"), encoding="rgb", colors=colours)
    image = (np.random.default_rng(7).random((120, 90)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", image)
    streamed, whole = _both_ways(tmp_path, _save(tmp_path / "m.safetensors", model, classes),
                                 tmp_path / "img.tif")
    rgb = tifffile.imread(streamed)
    np.testing.assert_array_equal(rgb, np.array(Image.open(whole)))
    assert {tuple(c) for c in rgb.reshape(-1, 3)} == set(colours)


def test_per_image_normalisation_streams_like_the_whole_image(tmp_path: Path):
    from PIL import Image

    from unetseg.api import predict
    from unetseg.config import DEFAULT_OVERLAP
    from unetseg.data.classes import ClassTable
    from unetseg.modelfile import ModelCard, save_model

    stats = ChannelStats((0.5,), (0.25,), "image")
    torch.manual_seed(1)
    model = UNet(1, 2, depth=2, width=4, norm="none").eval()  # its input's scale matters
    card = ModelCard(model.config, ClassTable.from_values((0, 255)), stats)
    save_model(tmp_path / "m.safetensors", model, card)
    rng = np.random.default_rng(5)
    image = (rng.random((90, 130)) * 60 + 20 + np.linspace(0, 80, 130)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", image, tile=(32, 32))
    predict(tmp_path / "m.safetensors", [tmp_path / "big.tif"], tmp_path / "a", tile=64,
            stream=True, show_progress=False)
    predict(tmp_path / "m.safetensors", [tmp_path / "big.tif"], tmp_path / "b", tile=64,
            stream=False, show_progress=False)
    x = image.astype(np.float64) / 255
    by_hand = torch.from_numpy(((x - x.mean()) / x.std())[None].astype(np.float32))
    with torch.inference_mode():
        labels = predict_logits(model, by_hand, tile=64, overlap=DEFAULT_OVERLAP).argmax(0)
    expected = labels.numpy().astype(np.uint8) * 255
    assert 0.05 < (expected > 0).mean() < 0.95, "the test needs both classes predicted"
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "b" / "big.png")), expected)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a" / "big.tif"), expected)


def test_precision_sample_is_normalised_with_the_whole_image():
    from unetseg.infer.engine import ImagePredictor

    torch.manual_seed(0)
    predictor = ImagePredictor(UNet(1, 2, depth=2, width=4).eval(),
                               ChannelStats((0.5,), (0.25,), "image"))
    image = torch.from_numpy(np.random.default_rng(6).random((1, 600, 500)).astype(np.float32))
    image[:, :50] += 3.0  # the border, outside the sample, changes the image's statistics
    whole = normalize(image, predictor.stats)
    from unetseg.infer.precision import sample_window

    np.testing.assert_allclose(predictor._normalized_window(image).numpy(),
                               sample_window(whole).numpy(), rtol=1e-4, atol=1e-4)
