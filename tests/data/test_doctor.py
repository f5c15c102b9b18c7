"""The dataset doctor (``unetseg check``): all problems at once, class counts, weights."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import SHARED_DATA
from PIL import Image

from unetseg.cli import main
from unetseg.config import DataConfig
from unetseg.data.doctor import check_data, median_frequency_weights
from unetseg.data.report import format_report

CAMVID = SHARED_DATA / "camvid"


def _save(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


@pytest.fixture
def messy(disc_data: Path) -> Path:
    """disc_data (img00..img05, 64x64 gray, 0/255 masks) with one problem of every kind."""
    images, masks = disc_data / "images", disc_data / "masks"
    _save(images / "img00.tif", np.zeros((64, 64), np.uint8))  # duplicate stem: error
    (images / "img01.png").write_text("not a png")  # unreadable image: error
    _save(masks / "img02.png", np.zeros((10, 12), np.uint8))  # wrong size: error
    bad = np.array(Image.open(masks / "img03.png"))
    bad[:3, :3] = 128
    _save(masks / "img03.png", bad)  # value outside --classes 0,255: error
    _save(images / "img04.png", np.zeros((64, 64, 3), np.uint8))  # RGB among gray: error
    _save(images / "img05.png", np.full((64, 64), 300, np.uint16))  # 16-bit: warning
    _save(masks / "img05.png", np.zeros((64, 64), np.uint8))  # single class: warning
    _save(images / "lonely.png", np.zeros((64, 64), np.uint8))  # unpaired image: warning
    _save(masks / "orphan.png", np.zeros((64, 64), np.uint8))  # unpaired mask: warning
    return disc_data


EXPECTED = {
    ("error", "duplicate", "img00.png"), ("error", "unreadable", "img01.png"),
    ("error", "size", "img02.png"), ("error", "values", "img03.png"),
    ("error", "channels", "img04.png"), ("warning", "bit_depth", "img05.png"),
    ("warning", "empty_mask", "img05.png"), ("warning", "unpaired", "lonely.png"),
    ("warning", "unpaired", "orphan.png"),
}


def test_every_problem_is_collected(messy: Path):
    report = check_data(messy, DataConfig(class_values=(0, 255)))
    found = {(p.severity, p.kind, Path(p.path).name) for p in report.problems}
    assert found == EXPECTED
    assert len(report.errors) == 5 and len(report.warnings) == 4 and not report.clean
    for p in report.problems:
        assert "\n" not in p.message and Path(p.path).name in p.message and "; " in p.message
    text = format_report(report)
    assert "5 error(s), 4 warning(s)" in text


def test_check_command_exit_codes_and_json(messy: Path, disc_data: Path, capsys):
    assert main(["-q", "check", str(messy), "--classes", "0,255", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert {(p["severity"], p["kind"], Path(p["file"]).name)
            for p in report["problems"]} == EXPECTED
    assert report["errors"] == 5 and report["clean"] is False


def test_clean_data_exits_0_with_counts_from_the_masks(disc_data: Path, capsys):
    assert main(["-q", "check", str(disc_data)]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "--class-weights" in out
    report = check_data(disc_data)
    masks = [np.array(Image.open(p)) for p in sorted((disc_data / "masks").glob("*.png"))]
    fg = [int((m == 255).sum()) for m in masks]
    bg = [m.size - f for m, f in zip(masks, fg)]
    assert [c.pixels for c in report.counts] == [sum(bg), sum(fg)]
    # median frequency balancing, by hand: f[c] = pixels of c / pixels of masks holding c
    f_bg = sum(bg) / sum(m.size for m, b in zip(masks, bg) if b)
    f_fg = sum(fg) / sum(m.size for m, f in zip(masks, fg) if f)
    median = (f_bg + f_fg) / 2
    assert report.counts[0].weight == pytest.approx(median / f_bg)
    assert report.counts[1].weight == pytest.approx(median / f_fg)


def test_median_frequency_weights_by_hand():
    # three classes: freqs 0.5, 0.1, 0.25 -> median 0.25; an absent class gets None
    weights = median_frequency_weights([50, 10, 25, 0], [100, 100, 100, 100])
    assert weights[:3] == pytest.approx([0.5, 2.5, 1.0]) and weights[3] is None
    # the denominator is per class: labelled pixels of the masks that hold it
    weights = median_frequency_weights([10, 10], [20, 100])
    median = statistics.median([10 / 20, 10 / 100])
    assert weights == pytest.approx([median / 0.5, median / 0.1])


def test_train_stops_with_one_line_pointing_to_check(messy: Path, tmp_path: Path, capsys):
    code = main(["-q", "train", str(messy), "--out", str(tmp_path / "run"), "--classes", "0,255",
                 "--epochs", "1", "--width", "4", "--depth", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    line = err[-1]
    assert line.startswith("unetseg: error: ") and "img00" in line
    assert "4 more problem(s)" in line and f"unetseg check {messy}" in line
    assert not (tmp_path / "run").exists()


def test_inconsistent_mask_encodings_and_16bit_colour(tmp_path: Path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(3):
        _save(root / "images" / f"{i}.png", np.zeros((8, 8), np.uint8))
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[:4] = (200, 10, 10)
    _save(root / "masks" / "0.png", colour)
    _save(root / "masks" / "1.png", np.full((8, 8), 7, np.uint8))  # gray: (7, 7, 7)
    tifffile.imwrite(root / "masks" / "2.tif", np.full((8, 8), 4000, np.uint16))
    report = check_data(root)
    assert report.encoding == "rgb"
    assert [(p.kind, Path(p.path).name) for p in report.errors] == [("encoding", "2.tif")]
    assert {c.color for c in report.counts} == {(0, 0, 0), (200, 10, 10), (7, 7, 7)}


def test_masks_damaged_by_how_they_were_saved(tmp_path: Path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        _save(root / "images" / f"{i}.png", np.zeros((16, 16), np.uint8))
    idx = (np.arange(256).reshape(16, 16) % 3).astype(np.uint8)
    for i, palette in enumerate(([0, 0, 0, 255, 0, 0, 0, 255, 0], [0, 0, 0, 9, 9, 9, 0, 255, 0])):
        im = Image.fromarray(idx)
        im.putpalette(palette)
        im.save(root / "masks" / f"{i}.png")
    Image.fromarray(idx * 100).save(root / "masks" / "2.jpg")
    report = check_data(root)
    assert {(p.kind, Path(p.path).name) for p in report.warnings} == {
        ("palette", "1.png"), ("lossy_mask", "2.jpg")}
    # a smoothed colour mask: every shade is a colour, so a class
    smooth = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    for i in range(2):
        _save(root / "masks" / f"{i}.png", smooth)
    (root / "masks" / "2.jpg").unlink()
    (root / "images" / "2.png").unlink()
    report = check_data(root)
    assert [p.kind for p in report.warnings] == ["colours"]


def test_missing_folder_is_a_usage_error(tmp_path: Path, capsys):
    assert main(["-q", "check", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.fixture
def camvid_train() -> Path:
    root = CAMVID / "train"
    if not (root / "masks").is_dir():
        pytest.skip("../shared/data/camvid is not present")
    return root


def test_camvid_subset_is_clean(camvid_train: Path, tmp_path: Path):
    """CamVid (Brostow et al. 2008/2009; SegNet tutorial packaging): 4 pairs, void = 11."""
    root = tmp_path / "cv"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    stems = sorted(p.stem for p in (camvid_train / "masks").glob("*.png"))[:4]
    for stem in stems:
        for sub in ("images", "masks"):
            (root / sub / f"{stem}.png").write_bytes((camvid_train / sub / f"{stem}.png")
                                                     .read_bytes())
    report = check_data(root, DataConfig(ignore_value=11))
    assert report.clean, format_report(report)
    ids = np.concatenate([np.array(Image.open(root / "masks" / f"{s}.png")).ravel()
                          for s in stems])
    assert report.ignored_pixels == int((ids == 11).sum())
    reference = {v: n for v, n in enumerate(np.bincount(ids).tolist()) if n and v != 11}
    assert {c.value: c.pixels for c in report.counts} == reference


@pytest.mark.slow
def test_camvid_class_shares_match_its_readme(camvid_train: Path):
    """The README lists each class's share of all train pixels (void included)."""
    readme = [16.85, 23.26, 0.98, 31.66, 4.49, 9.72, 1.17, 1.13, 5.87, 0.64, 0.29]
    report = check_data(camvid_train, DataConfig(ignore_value=11))
    assert report.clean
    total = sum(c.pixels for c in report.counts) + report.ignored_pixels
    assert 100 * report.ignored_pixels / total == pytest.approx(3.95, abs=0.006)
    for c, share in zip(report.counts, readme):
        assert 100 * c.pixels / total == pytest.approx(share, abs=0.006), c.name
