"""Training a 3D U-Net on volumes: patches, the plan from the spacing, a run that learns and a
model that predicts through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unetseg.cli import main
from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig, replace
from unetseg.errors import UserError
from unetseg.modelfile import load_model
from unetseg.train.volumes import _Volume, fit_volumes, plan_patch, sample_patches

nib = pytest.importorskip("nibabel")


def _balls(root: Path, count: int = 4, shape=(8, 24, 24), spacing=(4.0, 1.0, 1.0)) -> Path:
    """Bright ellipsoids (round in physical space) on noise, and their masks."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    for i in range(count):
        c = rng.uniform([2, 7, 7], [6, 17, 17])
        r = rng.uniform(4, 7)
        inside = ((z - c[0]) * spacing[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r * r
        image = (0.3 * rng.random(shape) + 0.6 * inside).astype(np.float32)
        for name, arr in (("images", image), ("masks", inside.astype(np.uint8))):
            nib.save(nib.Nifti1Image(arr.transpose(2, 1, 0), affine),
                     str(root / name / f"case{i}.nii.gz"))
    return root


def test_patch_covers_one_physical_length_and_fits_the_network():
    assert plan_patch((40, 200, 200), (4.0, 1.0, 1.0), (2, 16, 16)) == (16, 64, 64)
    assert plan_patch((6, 30, 30), (1.0, 1.0, 1.0), (4, 4, 4)) == (4, 28, 28)
    assert plan_patch((3, 30, 30), None, (4, 4, 4)) == (3, 28, 28)


def test_foreground_patches_hold_foreground():
    ids = torch.zeros(10, 20, 20, dtype=torch.long)
    ids[7, 15, 3] = 1
    volume = _Volume("v", torch.rand(1, 10, 20, 20), ids)
    g = torch.Generator().manual_seed(0)
    x, y = sample_patches([volume], (4, 8, 8), 5, g, foreground_fraction=1.0)
    assert x.shape == (5, 1, 4, 8, 8) and y.shape == (5, 4, 8, 8)
    assert all((patch == 1).any() for patch in y)


@pytest.mark.slow
def test_a_3d_run_learns_and_its_model_predicts(tmp_path: Path, capsys):
    data = _balls(tmp_path / "balls")
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
    data = _balls(tmp_path / "balls", count=2)
    assert main(["-q", "train", str(data), "--out", str(tmp_path / "r"), "--nproc", "2",
                 "--batch-size", "2"]) == 2
    assert "--nproc is not available for volumes yet" in capsys.readouterr().err
    code = main(["-q", "train", str(data), "--out", str(tmp_path / "r"), "--epochs", "1",
                 "--steps-per-epoch", "1", "--batch-size", "1", "--width", "2", "--depth", "1"])
    assert code == 0, capsys.readouterr().err
    assert "trained 1 epoch(s)" in capsys.readouterr().out


def test_the_named_volumes_are_held_out_for_validation(tmp_path: Path):
    data = _balls(tmp_path / "balls", count=3)
    cfg = RunConfig(model=ModelConfig(depth=1, width=2),
                    data=DataConfig(val_stems=("case1",)),
                    train=TrainConfig(epochs=0))  # the split is written before training
    fit_volumes(data, tmp_path / "run", cfg, show_progress=False)
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (written["train"], written["val"]) == (["case0", "case2"], ["case1"])
    with pytest.raises(UserError, match="case9: held out for validation"):
        fit_volumes(data, tmp_path / "r2", replace(cfg, **{"data.val_stems": ("case9",)}),
                    show_progress=False)
