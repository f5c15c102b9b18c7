"""Volumes end to end through the command line: train a 3D U-Net on NIfTI volumes, predict a
scan (the labels keep its affine), evaluate (Dice, HD95 and surface Dice equal to the metrics of
the written predictions), and ``unetseg info`` names the network's spacing and plan."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_ball_volumes

from unetseg.cli import main
from unetseg.data.volumes import read_volume, read_volume_mask
from unetseg.metrics import confusion_matrix, dice
from unetseg.metrics_boundary import hd95, surface_dice

nib = pytest.importorskip("nibabel")


def test_train_predict_evaluate_and_info_of_a_volume_run(tmp_path: Path, capsys,
                                                         one_torch_thread):
    data = write_ball_volumes(tmp_path / "data", count=3, shape=(4, 16, 16))
    run, preds, scores = tmp_path / "run", tmp_path / "pred", tmp_path / "eval"
    assert main(["-q", "train", str(data), "--volume", "--out", str(run), "--epochs", "2",
                 "--steps-per-epoch", "2", "--batch-size", "2", "--width", "4", "--depth", "1",
                 "--val-fraction", "0.34"]) == 0, capsys.readouterr().err
    assert {"report.html", "curves.png", "metrics.csv", "resume.safetensors"} <= {
        p.name for p in run.iterdir()}
    with open(run / "metrics.csv", newline="") as fh:
        assert [row["epoch"] for row in csv.DictReader(fh)] == ["1", "2"]

    scans = sorted((data / "images").iterdir())
    assert main(["-q", "predict", str(run), *map(str, scans), "--out", str(preds)]) == 0, \
        capsys.readouterr().err
    scan = nib.load(str(scans[0]))
    written = nib.load(str(preds / scans[0].name))
    assert np.array_equal(written.affine, scan.affine)
    assert written.shape == scan.shape

    assert main(["-q", "evaluate", str(run), str(data), "--out", str(scores)]) == 0, \
        capsys.readouterr().err
    rows = json.loads((scores / "metrics.json").read_text())["per_volume"]
    assert [r["volume"] for r in rows] == ["case0", "case1", "case2"]
    for row in rows:
        pred = read_volume_mask(preds / f"{row['volume']}.nii.gz").array
        truth = read_volume_mask(data / "masks" / f"{row['volume']}.nii.gz").array
        spacing = read_volume(scans[0]).spacing
        assert spacing == (4.0, 1.0, 1.0)
        cm = confusion_matrix(torch.as_tensor(pred.astype(np.int64)),
                              torch.as_tensor(truth.astype(np.int64)), 2)
        expected = {"dice": dice(cm).tolist(), "hd95": hd95(pred, truth, 2, spacing=spacing),
                    "nsd": surface_dice(pred, truth, 2, 1.0, spacing=spacing)}
        for metric, values in expected.items():
            for k, name in enumerate(("background", "foreground")):
                got = row[f"{metric}/{name}"]
                if np.isnan(values[k]):
                    assert got is None
                else:
                    assert got == pytest.approx(float(values[k]), abs=1e-6), (metric, name)

    capsys.readouterr()
    assert main(["info", str(run)]) == 0
    text = capsys.readouterr().out
    assert "network: unet, 3D, depth 1, width 4" in text
    assert "spacing (z, y, x): 4,1,1" in text
    assert "kernels per level: 1x3x3 3x3x3" in text and "poolings per level: 1x2x2" in text
    assert "training patch (d, h, w): 4x16x16" in text
