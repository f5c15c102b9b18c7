"""Mask encodings: label maps, colour masks, palette PNGs, palette files, the class table card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from unetseg.config import DataConfig
from unetseg.data.classes import IGNORE_INDEX, ClassTable
from unetseg.data.masks import (
    build_class_table,
    detect_encoding,
    read_mask_file,
    value_counts,
    write_mask,
)
from unetseg.data.palette_file import read_palette_file
from unetseg.errors import UserError

RNG = np.random.default_rng(7)
COLOURS = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (0, 0, 0)]


def _codes(mask_file, encoding):
    return (str(mask_file.path), list(value_counts(mask_file.codes(encoding))))


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("dtype,values", [(np.uint8, [0, 7, 42]), (np.uint16, [3, 1000, 65535])])
def test_label_maps_any_values_and_depth(tmp_path: Path, dtype: type, values: list[int]):
    raw = RNG.choice(values, size=(9, 11)).astype(dtype)
    Image.fromarray(raw).save(tmp_path / "m.png")
    tifffile.imwrite(tmp_path / "m.tif", raw)
    for name in ("m.png", "m.tif"):
        mask = read_mask_file(tmp_path / name)
        assert mask.encoding == "label" and mask.dtype == np.dtype(dtype).name
        np.testing.assert_array_equal(mask.data, raw)
    table = build_class_table([_codes(mask, "label")], "label", DataConfig())
    assert table.values == tuple(sorted(values)) and table.encoding == "label"
    ids = table.encode(mask.data)
    np.testing.assert_array_equal(ids, np.searchsorted(sorted(values), raw))  # rank = id


def test_colour_mask_is_read_as_colours_and_gray_rgb_as_labels(tmp_path: Path):
    idx = RNG.integers(0, 3, (6, 7))
    rgb = np.array(COLOURS[:3], np.uint8)[idx]
    Image.fromarray(rgb).save(tmp_path / "c.png")
    mask = read_mask_file(tmp_path / "c.png")
    assert mask.encoding == "rgb" and mask.data.shape == (6, 7, 3)
    np.testing.assert_array_equal(mask.data, rgb)
    gray = np.repeat(idx.astype(np.uint8)[..., None] * 50, 3, -1)
    Image.fromarray(gray).save(tmp_path / "g.png")
    mask = read_mask_file(tmp_path / "g.png")
    assert mask.encoding == "label"
    np.testing.assert_array_equal(mask.data, idx * 50)
    # in a colour data set, a gray mask is the colours (v, v, v)
    assert set(mask.codes("rgb").ravel().tolist()) <= {v * 0x010101 for v in (0, 50, 100)}


def test_palette_png_keeps_indices_and_palette(tmp_path: Path):
    idx = RNG.choice([0, 2, 5], size=(5, 8)).astype(np.uint8)
    palette = RNG.integers(0, 256, 768).tolist()
    im = Image.fromarray(idx)
    im.putpalette(palette)
    im.save(tmp_path / "p.png")
    mask = read_mask_file(tmp_path / "p.png")
    assert mask.encoding == "palette" and mask.palette == tuple(palette)
    np.testing.assert_array_equal(mask.data, idx)
    table = build_class_table([_codes(mask, "palette")], "palette", DataConfig(),
                              mask.palette)
    assert table.encoding == "palette" and table.values == (0, 2, 5)
    assert table.colors[1] == tuple(palette[6:9])  # colour of index 2
    ids = table.encode(mask.data)
    write_mask(tmp_path / "out.png", ids, table)
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "P" and out.getpalette() == palette
        np.testing.assert_array_equal(np.array(out), idx)


def test_detect_encoding():
    assert detect_encoding(["label", "rgb", "palette"]) == "rgb"
    assert detect_encoding(["palette", "palette"]) == "palette"
    assert detect_encoding(["palette", "label"]) == "label"
    assert detect_encoding([]) == "label"


# --------------------------------------------------------------------------- colour tables


def test_discovered_colours_with_an_ignored_colour(tmp_path: Path):
    idx = RNG.integers(0, 4, (12, 10))
    idx[0, :4] = [0, 1, 2, 3]
    rgb = np.array(COLOURS, np.uint8)[idx]
    Image.fromarray(rgb).save(tmp_path / "c.png")
    mask = read_mask_file(tmp_path / "c.png")
    table = build_class_table([_codes(mask, "rgb")], "rgb", DataConfig(ignore_value=0))
    assert table.encoding == "rgb" and table.ignore_color == (0, 0, 0)
    # values are packed colours, sorted: (128,0,0) < (128,128,128) < (192,192,128)
    assert table.colors == ((128, 0, 0), (128, 128, 128), (192, 192, 128))
    assert table.names == ("#800000", "#808080", "#c0c080")
    ids = table.encode(mask.data)
    expected = np.select([idx == 0, idx == 1, idx == 2], [1, 0, 2], IGNORE_INDEX)
    np.testing.assert_array_equal(ids, expected)
    back = table.decode(ids)  # colours; ignored pixels get the ignore colour
    np.testing.assert_array_equal(back, rgb)
    write_mask(tmp_path / "out.png", ids, table)
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "out.png")), rgb)


def test_unknown_colour_is_named(tmp_path: Path):
    table = ClassTable((0, 1), ("a", "b"), encoding="rgb", colors=((1, 2, 3), (4, 5, 6)))
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., :] = (1, 2, 3)
    rgb[1, 1] = (9, 9, 9)
    with pytest.raises(UserError, match=r"m\.png: mask colours \[\(9, 9, 9\)\].*--palette"):
        table.encode(rgb, "m.png")


def test_label_table_refuses_a_colour_mask():
    table = ClassTable.from_values((0, 255))
    with pytest.raises(UserError, match="colour mask"):
        table.encode(np.zeros((2, 2, 3), np.uint8), "x.png")


# --------------------------------------------------------------------------- palette files


CAMVID_JSON = [{"id": 0, "name": "Sky", "color": [128, 128, 128]},
               {"id": 1, "name": "Building", "color": "#800000"},
               {"id": 2, "name": "Pole", "color": "192,192,128"},
               {"id": 11, "name": "Void", "color": [0, 0, 0], "ignore": True}]


def test_palette_file_json_and_csv_agree(tmp_path: Path):
    (tmp_path / "p.json").write_text(json.dumps(CAMVID_JSON))
    (tmp_path / "p.csv").write_text("id,name,r,g,b,ignore\n0,Sky,128,128,128,\n"
                                    "1,Building,128,0,0,\n2,Pole,192,192,128,\n11,Void,0,0,0,1\n")
    (tmp_path / "p2.csv").write_text("# CamVid\nname, color\nSky, #808080\nBuilding, #800000\n")
    a, b = read_palette_file(tmp_path / "p.json"), read_palette_file(tmp_path / "p.csv")
    assert a == b
    assert [(e.id, e.name, e.color, e.ignore) for e in a][-1] == (11, "Void", (0, 0, 0), True)
    c = read_palette_file(tmp_path / "p2.csv")
    assert [(e.id, e.color) for e in c] == [(0, (128, 128, 128)), (1, (128, 0, 0))]
    table = build_class_table([("m", [])], "rgb", DataConfig(palette=str(tmp_path / "p.json")))
    assert table.values == (0, 1, 2) and table.ignore_value == 11
    assert table.names == ("Sky", "Building", "Pole") and table.ignore_color == (0, 0, 0)


@pytest.mark.parametrize("text,match", [
    ("[{\"name\": \"a\", \"color\": [1, 2]}, {\"name\": \"b\", \"color\": [0, 0, 0]}]",
     "colour"),
    ("[{\"name\": \"a\", \"color\": [1, 2, 3]}, {\"name\": \"b\", \"color\": [1, 2, 3]}]",
     "given twice"),
    ("[{\"name\": \"a\", \"color\": [1, 2, 3]}]", "fewer than 2"),
    ("{not json", "not valid JSON"),
    ("id,label\n0,a\n", "header"),
])
def test_bad_palette_files(tmp_path: Path, text: str, match: str):
    path = tmp_path / ("p.csv" if text.startswith("id,") else "p.json")
    path.write_text(text)
    with pytest.raises(UserError, match=match) as err:
        read_palette_file(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_palette_file_names_label_masks(tmp_path: Path):
    (tmp_path / "p.json").write_text(json.dumps(CAMVID_JSON))
    table = build_class_table([("m", [0, 1, 2, 11])], "label",
                              DataConfig(palette=str(tmp_path / "p.json")))
    assert table.encoding == "label" and table.values == (0, 1, 2)
    assert table.colors[0] == (128, 128, 128) and table.ignore_value == 11
    with pytest.raises(UserError, match="either|drop --classes"):
        build_class_table([("m", [0, 1])], "label",
                          DataConfig(palette=str(tmp_path / "p.json"), class_values=(0, 1)))


# --------------------------------------------------------------------------- the card


def test_class_table_dict_round_trip_and_old_dicts():
    table = ClassTable((0, 1), ("sky", "road"), 11, encoding="rgb",
                       colors=((128, 128, 128), (128, 64, 128)), ignore_color=(0, 0, 0))
    d = json.loads(json.dumps(table.to_dict()))
    assert ClassTable.from_dict(d) == table
    old = {"values": [0, 255], "names": ["background", "foreground"], "ignore_value": None}
    loaded = ClassTable.from_dict(old)
    assert loaded == ClassTable.from_values((0, 255)) and loaded.encoding == "label"
    with pytest.raises(UserError, match="two classes"):
        ClassTable((0, 1), ("a", "b"), encoding="rgb", colors=((1, 1, 1), (1, 1, 1)))
