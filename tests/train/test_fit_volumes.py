"""Training a 3D U-Net on volumes: patches, the plan from the spacing, a run that learns and a
model that predicts through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_ball_volumes

from unetseg.cli import main
from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig, replace
from unetseg.errors import UserError
from unetseg.modelfile import load_model
from unetseg.train.volumes import TrainingVolume, fit_volumes, plan_patch, sample_patches

pytest.importorskip("nibabel")


def test_patch_covers_one_physical_length_and_fits_the_network():
    assert plan_patch((40, 200, 200), (4.0, 1.0, 1.0), (2, 16, 16)) == (16, 64, 64)
    assert plan_patch((6, 30, 30), (1.0, 1.0, 1.0), (4, 4, 4)) == (4, 28, 28)
    assert plan_patch((3, 30, 30), None, (4, 4, 4)) == (3, 28, 28)


def test_foreground_patches_hold_foreground():
    ids = torch.zeros(10, 20, 20, dtype=torch.long)
    ids[7, 15, 3] = 1
    volume = TrainingVolume("v", torch.rand(1, 10, 20, 20), ids)
    g = torch.Generator().manual_seed(0)
    x, y = sample_patches([volume], (4, 8, 8), 5, g, foreground_fraction=1.0)
    assert x.shape == (5, 1, 4, 8, 8) and y.shape == (5, 4, 8, 8)
    assert all((patch == 1).any() for patch in y)


@pytest.mark.slow
def test_a_3d_run_learns_and_its_model_predicts(tmp_path: Path, capsys):
    data = write_ball_volumes(tmp_path / "balls")
    cfg = RunConfig(model=ModelConfig(depth=2, width=4),
                    data=DataConfig(val_fraction=0.25),
                    train=TrainConfig(epochs=6, steps_per_epoch=6, batch_size=2, lr=3e-3))
    result = fit_volumes(data, tmp_path / "run", cfg, show_progress=False)
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {
        "best.safetensors", "last.safetensors", "config.json", "metrics.csv", "curves.png"}
    model, card = load_model(result.best_model)
    assert card.model.spatial_dims == 3
    assert card.model.kernel_sizes[0] == (1, 3, 3)  # 4 mm slices, 1 mm pixels
    scores = [h["val_mean_iou"] for h in result.history]
    assert max(scores) > 0.7 and scores[-1] > scores[0], scores  # all background: ~0.45
    assert json.loads((tmp_path / "run" / "config.json").read_text())["spacing"] == [4, 1, 1]
    code = main(["-q", "predict", str(result.best_model), str(data / "images" / "case0.nii.gz"),
                 "--out", str(tmp_path / "pred")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "pred" / "case0.nii.gz").is_file()


def test_cli_trains_volumes_and_refuses_what_is_not_built(tmp_path: Path, capsys):
    data = write_ball_volumes(tmp_path / "balls", count=2)
    assert main(["-q", "train", str(data), "--out", str(tmp_path / "r"), "--folds", "2"]) == 2
    assert "--folds is not available for volumes yet" in capsys.readouterr().err
    assert main(["-q", "train", str(data), "--out", str(tmp_path / "r"), "--nproc", "2",
                 "--batch-size", "3"]) == 2
    assert "does not split over 2 processes" in capsys.readouterr().err
    assert main(["-q", "train", str(data), "--out", str(tmp_path / "r"), "--padding",
                 "valid"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "unetseg: error: --padding valid: 3D training takes same padding (its validation and"
        " prediction tile the volume with same-padding windows); drop --padding valid"]
    assert not (tmp_path / "r").exists()
    code = main(["-q", "train", str(data), "--out", str(tmp_path / "r"), "--epochs", "1",
                 "--steps-per-epoch", "1", "--batch-size", "1", "--width", "2", "--depth", "1"])
    assert code == 0, capsys.readouterr().err
    assert "trained 1 epoch(s)" in capsys.readouterr().out


def test_the_named_volumes_are_held_out_for_validation(tmp_path: Path):
    data = write_ball_volumes(tmp_path / "balls", count=3)
    cfg = RunConfig(model=ModelConfig(depth=1, width=2),
                    data=DataConfig(val_stems=("case1",)),
                    train=TrainConfig(epochs=1, steps_per_epoch=1, batch_size=1))
    fit_volumes(data, tmp_path / "run", cfg, show_progress=False)
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (written["train_stems"], written["val_stems"]) == (["case0", "case2"], ["case1"])
    with pytest.raises(UserError, match="case9: held out for validation"):
        fit_volumes(data, tmp_path / "r2", replace(cfg, **{"data.val_stems": ("case9",)}),
                    show_progress=False)


def test_a_3d_residual_run_saves_reloads_and_predicts(tmp_path: Path):
    from unetseg.api import predict_volumes

    data = write_ball_volumes(tmp_path / "balls", count=2, shape=(8, 16, 16))
    cfg = RunConfig(model=ModelConfig(depth=2, width=4, arch="residual", encoder_blocks=1),
                    data=DataConfig(val_fraction=0.5),
                    train=TrainConfig(epochs=1, steps_per_epoch=1, batch_size=1))
    result = fit_volumes(data, tmp_path / "run", cfg, show_progress=False)
    model, card = load_model(result.best_model)
    assert (card.model.arch, card.model.spatial_dims) == ("residual", 3)
    assert card.model.kernel_sizes[0] == (1, 3, 3)
    assert type(model.body).__name__ == "ResidualUNetBody"
    assert any(p.ndim == 5 for p in model.parameters())
    written = predict_volumes(result.best_model, data / "images" / "case0.nii.gz",
                              tmp_path / "pred", overlays=False, show_progress=False)
    import nibabel as nib

    labels = np.asarray(nib.load(str(written[0])).dataobj)
    assert labels.shape == (16, 16, 8)  # NIfTI's x, y, z of the (8, 16, 16) volume


def test_volume_training_refuses_2d_only_architectures(tmp_path: Path):
    cfg = RunConfig(model=ModelConfig(arch="resnet18"))
    with pytest.raises(UserError, match="--arch resnet18 has no 3D form"):
        fit_volumes(tmp_path / "missing", tmp_path / "run", cfg, show_progress=False)
    assert not (tmp_path / "run").exists()
