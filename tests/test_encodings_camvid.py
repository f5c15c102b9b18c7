"""CamVid three ways: label ids, colour masks (the README palette) and palette PNGs.

CamVid: G. J. Brostow, J. Fauqueur, R. Cipolla, Pattern Recognition Letters 30(2), 2009, and
G. J. Brostow et al., ECCV 2008; 11-class split of Sturgess et al., BMVC 2009, as packaged by
the SegNet tutorial (Badrinarayanan et al., TPAMI 2017). Ids 0..10 are classes, 11 is void.

The three encodings hold the same class ids, so models trained on them with one seed are the
same model: their predictions must be the same ids, each written back in its own encoding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import SHARED_DATA
from PIL import Image

from unetseg.cli import main

CAMVID = SHARED_DATA / "camvid" / "train"
NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
         "Pedestrian", "Bicyclist", "Void"]
PALETTE = np.array([(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128),
                    (60, 40, 222), (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128),
                    (64, 64, 0), (0, 128, 192), (0, 0, 0)], np.uint8)
TRAIN = ["--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "2", "--width", "4",
         "--depth", "2", "--patch-size", "64", "--val-fraction", "0", "--ignore-value", "11"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def camvid_three_ways(tmp_path_factory) -> Path:
    if not (CAMVID / "masks").is_dir():
        pytest.skip("../shared/data/camvid is not present")
    root = tmp_path_factory.mktemp("camvid")
    stems = sorted(p.stem for p in (CAMVID / "masks").glob("*.png"))[::120][:3]
    for kind in ("label", "colour", "indexed"):
        for sub in ("images", "masks"):
            (root / kind / sub).mkdir(parents=True)
    for stem in stems:  # a 96x128 crop of each: fast, and still 6+ classes
        image = np.array(Image.open(CAMVID / "images" / f"{stem}.png"))[150:246, 160:288]
        ids = np.array(Image.open(CAMVID / "masks" / f"{stem}.png"))[150:246, 160:288]
        for kind in ("label", "colour", "indexed"):
            Image.fromarray(image).save(root / kind / "images" / f"{stem}.png")
        Image.fromarray(ids).save(root / "label" / "masks" / f"{stem}.png")
        Image.fromarray(PALETTE[ids]).save(root / "colour" / "masks" / f"{stem}.png")
        indexed = Image.fromarray(ids)
        indexed.putpalette(PALETTE.ravel().tolist())
        indexed.save(root / "indexed" / "masks" / f"{stem}.png")
    entries = [{"id": i, "name": n, "color": c} for i, (n, c) in
               enumerate(zip(NAMES, PALETTE.tolist()))]
    (root / "camvid.json").write_text(json.dumps(entries))
    palette = ["--palette", str(root / "camvid.json")]
    for kind in ("label", "colour", "indexed"):
        assert main(["-q", "train", str(root / kind), "--out", str(root / f"run_{kind}"),
                     *TRAIN, *palette]) == 0
        assert main(["-q", "predict", str(root / f"run_{kind}" / "best.safetensors"),
                     str(root / kind / "images"), "--out", str(root / f"pred_{kind}"),
                     "--no-overlay"]) == 0
    return root


def test_predictions_come_back_in_the_input_encoding(camvid_three_ways: Path):
    root = camvid_three_ways
    cards = {k: json.loads((root / f"run_{k}" / "config.json").read_text())["classes"]
             for k in ("label", "colour", "indexed")}
    assert [cards[k]["encoding"] for k in cards] == ["label", "rgb", "palette"]
    assert all(cards[k]["names"] == NAMES[:11] for k in cards)
    for path in sorted((root / "pred_label").glob("*[0-9].png")):
        with Image.open(path) as im:
            assert im.mode == "L"
            ids = np.array(im)
        assert ids.max() <= 10
        with Image.open(root / "pred_colour" / path.name) as im:
            assert im.mode == "RGB"
            np.testing.assert_array_equal(np.array(im), PALETTE[ids])
        with Image.open(root / "pred_indexed" / path.name) as im:
            assert im.mode == "P"
            assert im.getpalette()[:36] == PALETTE.ravel().tolist()
            np.testing.assert_array_equal(np.array(im), ids)


def test_colour_evaluation_equals_label_evaluation(camvid_three_ways: Path, capsys):
    root = camvid_three_ways
    scores = {}
    for kind in ("label", "colour"):
        assert main(["-q", "evaluate", str(root / f"run_{kind}" / "best.safetensors"),
                     str(root / kind), "--out", str(root / f"eval_{kind}")]) == 0
        scores[kind] = json.loads((root / f"eval_{kind}" / "metrics.json").read_text())
    assert scores["label"]["confusion_matrix"] == scores["colour"]["confusion_matrix"]
    assert scores["label"]["confusion_matrix"] != [[0] * 11] * 11
