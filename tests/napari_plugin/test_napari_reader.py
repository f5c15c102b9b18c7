"""The reader: label images of ``unetseg predict`` (PNG and streamed TIFF, in every mask
encoding) open as Labels layers with their class values, names and colours; palette images
with their palette; other images are left to napari. And the plugin's manifest and packaging."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import tomllib
from PIL import Image

from unetseg import api
from unetseg.data.classes import ClassTable
from unetseg.data.io import read_mask
from unetseg.data.masks import class_colours, label_metadata, read_label_metadata, write_mask
from unetseg.napari.reader import get_reader

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "src" / "unetseg" / "napari" / "napari.yaml"


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model, image, the label PNG ``unetseg predict`` wrote for it)."""
    from shipping import sample_images, tiny_model

    folder = tmp_path_factory.mktemp("reader")
    model = tiny_model(folder / "tiny.safetensors")
    image = sample_images()[1]
    written = api.predict(model, image, folder / "out", overlays=False, show_progress=False)
    return model, image, written[0]


def _rgba(kwargs: dict, values) -> np.ndarray:
    """The colours a layer made with these keywords draws ``values`` in, as napari maps them."""
    pytest.importorskip("napari")
    from napari.utils.colormaps.colormap import DirectLabelColormap

    colormap = DirectLabelColormap(color_dict=kwargs["colormap"])
    return colormap.map(np.asarray(values, np.int64))


def test_a_predicted_png_opens_with_its_classes(predicted) -> None:
    _model, image, label_png = predicted
    read = get_reader(str(label_png))
    assert read is not None
    [(data, kwargs, kind)] = read(str(label_png))
    assert kind == "labels" and kwargs["name"] == label_png.stem
    np.testing.assert_array_equal(data, read_mask(label_png))
    assert set(np.unique(data)) == {0, 255}
    assert kwargs["features"] == {"index": [0, 255], "class": ["membrane", "cell"]}
    colours = class_colours(ClassTable.from_values((0, 255)))
    np.testing.assert_allclose(_rgba(kwargs, [0, 255])[:, :3], colours / 255)
    assert _rgba(kwargs, [7])[0, 3] == 0  # a value of no class is transparent
    assert get_reader(str(image)) is None  # the input image is napari's to open
    assert get_reader([str(label_png), str(label_png)]) is None
    assert get_reader(str(label_png.with_suffix(".npy"))) is None


def test_every_encoding_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 3, (20, 30))
    tables = {
        "label": ClassTable.from_values((0, 100, 300), ("a", "b", "c")),
        "palette": ClassTable((0, 1, 2), ("a", "b", "c"), encoding="palette",
                              palette=(0, 0, 0, 10, 200, 30, 250, 0, 5)),
        "rgb": ClassTable((0x000000, 0x00FF00, 0xFF0000), ("a", "b", "c"), encoding="rgb",
                          colors=((0, 0, 0), (0, 255, 0), (255, 0, 0))),
    }
    for encoding, table in tables.items():
        path = tmp_path / f"{encoding}.png"
        write_mask(path, ids, table)
        read = get_reader(str(path))
        assert read is not None, encoding
        [(data, kwargs, _)] = read(str(path))
        values = (0, 1, 2) if encoding == "rgb" else table.values  # colours: the class ids
        np.testing.assert_array_equal(data, np.asarray(values)[ids], err_msg=encoding)
        assert kwargs["features"]["index"] == list(values)
        np.testing.assert_allclose(_rgba(kwargs, values)[:, :3] * 255, class_colours(table),
                                   atol=1e-4)
        assert kwargs["metadata"]["unetseg_classes"] == table.to_dict()


def test_palette_images_without_a_class_table_open_with_their_palette(tmp_path: Path) -> None:
    indices = np.array([[0, 1], [3, 3]], np.uint8)
    im = Image.fromarray(indices, mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    im.save(tmp_path / "p.png")
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, 3] = (257 * 10, 257 * 20, 257 * 30)
    tifffile.imwrite(tmp_path / "p.tif", indices, photometric="palette", colormap=colormap)
    Image.fromarray(indices).save(tmp_path / "gray.png")
    for name, blue in (("p.png", (0, 0, 255)), ("p.tif", (10, 20, 30))):
        read = get_reader(str(tmp_path / name))
        assert read is not None, name
        [(data, kwargs, _)] = read(str(tmp_path / name))
        np.testing.assert_array_equal(data, indices)
        assert "features" not in kwargs  # no class names
        np.testing.assert_allclose(kwargs["colormap"][3][:3], np.array(blue) / 255)
        assert kwargs["colormap"][3][3] == 1
    assert get_reader(str(tmp_path / "gray.png")) is None  # a gray image without classes


def test_a_streamed_tiff_prediction_opens_with_its_classes(predicted, tmp_path: Path) -> None:
    model, image, label_png = predicted
    tif = tmp_path / f"{image.stem}.tif"
    tifffile.imwrite(tif, np.asarray(Image.open(image)))
    [written] = api.predict(model, tif, tmp_path / "out", stream=True, overlays=False,
                            show_progress=False)
    assert written.suffix == ".tif"
    with tifffile.TiffFile(written) as f:
        table, colours = read_label_metadata(f.pages.first.description)
    assert table.names == ("membrane", "cell")
    read = get_reader(str(written))
    assert read is not None
    [(data, kwargs, _)] = read(str(written))
    np.testing.assert_array_equal(data, read_mask(label_png))  # the PNG's labels
    assert kwargs["features"]["class"] == ["membrane", "cell"]


def test_the_reader_opens_files_in_a_viewer(predicted, unetseg_plugin) -> None:
    pytest.importorskip("napari")
    from napari.components import ViewerModel
    from napari.layers import Labels

    _model, _image, label_png = predicted
    viewer = ViewerModel()
    [layer] = viewer.open(label_png, plugin="unetseg")
    assert isinstance(layer, Labels) and layer.name == label_png.stem
    np.testing.assert_array_equal(layer.data, read_mask(label_png))
    assert list(layer.features["class"]) == ["membrane", "cell"]


def test_the_manifest_validates_and_is_packaged() -> None:
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(MANIFEST)  # validates the schema
    manifest.validate_imports()  # every python_name imports
    assert manifest.name == "unetseg"
    assert {c.command for c in manifest.contributions.widgets} == {"unetseg.predict_widget"}
    [reader] = manifest.contributions.readers
    assert set(reader.filename_patterns) == {"*.png", "*.tif", "*.tiff"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["napari.manifest"] == {
        "unetseg": "unetseg.napari:napari.yaml"}
    assert "napari/napari.yaml" in project["tool"]["setuptools"]["package-data"]["unetseg"]
    assert project["project"]["optional-dependencies"]["napari"] == [
        "napari>=0.5", "npe2", "magicgui", "qtpy"]


def test_label_metadata_other_text_is_no_class_table() -> None:
    table = ClassTable.from_values((0, 255), ("membrane", "cell"))
    meta = read_label_metadata(label_metadata(table))
    assert meta is not None and meta[0] == table
    np.testing.assert_array_equal(meta[1], class_colours(table))
    for text in (None, "", "plain words", "{}", '{"shape": [4, 4]}', "[1, 2]",
                 '{"format": "unetseg-labels", "classes": {"values": [1]}}'):
        assert read_label_metadata(text) is None, text
