"""The command line: outputs in the data's own values, and one-line errors with exit status 2."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from unetseg.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model trained for a few steps on disc data: (model file, data folder)."""
    from helpers import write_dataset

    root = tmp_path_factory.mktemp("cli")
    data = write_dataset(root / "data", 4, size=(48, 56))
    code = main(["-q", "train", str(data), "--out", str(root / "run"), "--epochs", "1",
                 "--steps-per-epoch", "3", "--batch-size", "2", "--width", "4", "--depth", "2",
                 "--top-width", "6", "--patch-size", "32"])
    assert code == 0
    return root / "run" / "best.safetensors", data


def test_train_flags_reach_the_model_file(trained):
    from unetseg.modelfile import read_card

    model = read_card(trained[0]).model
    assert (model.width, model.top_width, model.depth) == (4, 6, 2)


def run_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("unetseg: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_help_does_not_import_torch():
    code = ("import sys; from unetseg.cli import build_parser; build_parser().format_help();"
            " assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_predict_writes_labels_in_the_masks_values(trained, tmp_path: Path, capsys):
    model, data = trained
    out = tmp_path / "pred"
    assert main(["-q", "predict", str(model), str(data / "images"), "--out", str(out),
                 "--probabilities"]) == 0
    labels = np.array(Image.open(out / "img00.png"))
    assert labels.shape == (48, 56) and set(np.unique(labels)) <= {0, 255}
    assert np.array(Image.open(out / "img00_overlay.png")).shape == (48, 56, 3)
    probs = tifffile.imread(out / "img00_probs.tif")
    assert probs.shape == (2, 48, 56)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert np.array_equal(labels == 255, probs[1] > probs[0])


def test_evaluate_matches_a_count_from_the_written_predictions(trained, tmp_path: Path):
    model, data = trained
    pred, ev = tmp_path / "pred", tmp_path / "ev"
    assert main(["-q", "predict", str(model), str(data / "images"), "--out", str(pred)]) == 0
    assert main(["-q", "evaluate", str(model), str(data), "--out", str(ev)]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    inter = union = correct = total = 0
    for mask_path in sorted((data / "masks").glob("*.png")):
        truth = np.array(Image.open(mask_path)) == 255
        guess = np.array(Image.open(pred / mask_path.name)) == 255
        inter += np.sum(truth & guess)
        union += np.sum(truth | guess)
        correct += np.sum(truth == guess)
        total += truth.size
    fg = metrics["per_class"]["foreground"]["iou"]
    assert fg == pytest.approx(inter / union if union else None)
    assert metrics["pixel_accuracy"] == pytest.approx(correct / total)
    rows = (ev / "per_image.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("image,pixel_accuracy,mean_iou,mean_hd95")
    assert "Evaluation report" in (ev / "report.html").read_text()


def test_missing_data_folder(capsys, tmp_path: Path):
    line = run_error(capsys, ["-q", "train", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert "nope" in line
    assert not (tmp_path / "r").exists()


def test_unreadable_image_is_named(capsys, disc_data: Path, tmp_path: Path):
    (disc_data / "images" / "img03.png").write_text("not an image")
    line = run_error(capsys, ["-q", "train", str(disc_data), "--out", str(tmp_path / "r")])
    assert "img03.png" in line
    assert not (tmp_path / "r").exists()


def test_mask_of_the_wrong_size(capsys, disc_data: Path, tmp_path: Path):
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(disc_data / "masks" / "img02.png")
    line = run_error(capsys, ["-q", "train", str(disc_data), "--out", str(tmp_path / "r")])
    assert "img02.png" in line and "size" in line


def test_mask_value_outside_the_class_table(capsys, disc_data: Path, tmp_path: Path):
    mask = np.zeros((64, 64), np.uint8)
    mask[:5, :5] = 128
    Image.fromarray(mask).save(disc_data / "masks" / "img01.png")
    line = run_error(capsys, ["-q", "train", str(disc_data), "--out", str(tmp_path / "r"),
                              "--classes", "0,255"])
    assert "img01.png" in line and "128" in line


def test_wrong_channel_count_for_the_model(capsys, trained, tmp_path: Path):
    model, _ = trained
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(rgb)
    line = run_error(capsys, ["-q", "predict", str(model), str(rgb), "--out", str(tmp_path / "o")])
    assert "rgb.png" in line and "gray" in line
    assert not list((tmp_path / "o").glob("*.png"))


def test_output_folder_that_is_a_file(capsys, trained, tmp_path: Path):
    model, data = trained
    blocker = tmp_path / "out"
    blocker.write_text("")
    line = run_error(capsys, ["-q", "predict", str(model), str(data / "images"),
                              "--out", str(blocker)])
    assert "out" in line


def test_model_file_that_is_not_ours(capsys, trained, tmp_path: Path):
    _, data = trained
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\x00" * 64)
    line = run_error(capsys, ["-q", "predict", str(fake), str(data / "images"), "--out",
                              str(tmp_path / "o")])
    assert "model.safetensors" in line
