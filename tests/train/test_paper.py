"""The paper preset, weighted cross-entropy through training, and the ISBI/TTA evaluation flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unetseg.cli import build_parser, main, run_config_from_args
from unetseg.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from unetseg.errors import UserError
from unetseg.losses import build_loss
from unetseg.model import UNet
from unetseg.model.blocks import center_crop
from unetseg.presets import PRESETS, paper_preset, preset
from unetseg.train.fit import fit
from unetseg.train.loop import Precision, train_one_epoch


def test_paper_preset_follows_the_paper():
    cfg = paper_preset()
    m, d, a, t = cfg.model, cfg.data, cfg.augment, cfg.train
    assert (m.padding, m.up, m.norm, m.dropout, m.depth, m.width) == (
        "valid", "transpose", "none", 0.5, 4, 64)
    assert (t.optimizer, t.momentum, t.batch_size, t.loss) == ("sgd", 0.99, 1, "weighted-ce")
    assert (d.patch_size, d.weight_w0, d.weight_sigma) == (572, 10.0, 5.0)
    assert (a.elastic_p, a.elastic_grid, a.elastic_sigma, a.affine_p) == (1.0, 3, 10.0, 1.0)
    assert a.intensity_p > 0 and a.rot90 and a.rotate_deg == 45.0
    net = UNet.from_config(ModelConfig(**{**m.__dict__, "in_channels": 1, "num_classes": 2}))
    assert sum(p.numel() for p in net.parameters()) == 31_030_658  # the paper's network
    assert net.output_size(572, 572) == (388, 388)
    assert preset("default") == RunConfig() and set(PRESETS) == {"default", "paper"}


def test_flags_override_the_preset(tmp_path: Path):
    parser = build_parser()
    args = parser.parse_args(["train", "data", "--out", "r", "--preset", "paper", "--lr", "0.05",
                              "--width", "8", "--weight-sigma", "3", "--image-interpolation",
                              "bicubic"])
    cfg = run_config_from_args(args)
    assert cfg.train.lr == 0.05 and cfg.model.width == 8 and cfg.data.weight_sigma == 3.0
    assert cfg.augment.image_interpolation == "bicubic"
    assert cfg.model.padding == "valid" and cfg.train.loss == "weighted-ce"  # from the preset
    with pytest.raises(UserError, match="--preset nope"):
        run_config_from_args(parser.parse_args(["train", "d", "--out", "r", "--preset", "nope"]))
    config = tmp_path / "c.json"
    config.write_text("{}")
    with pytest.raises(UserError, match="not both"):
        run_config_from_args(parser.parse_args(["train", "d", "--out", "r", "--preset", "paper",
                                                "--config", str(config)]))


def test_pixel_weights_are_cropped_like_the_targets_for_valid_padding():
    torch.manual_seed(0)
    model = UNet(1, 2, depth=1, width=2, padding="valid", norm="none")
    x = torch.rand(2, 1, 28, 28)
    y = (x[:, 0] > 0.5).long()
    w = torch.arange(2 * 28 * 28, dtype=torch.float32).view(2, 28, 28)
    seen: list[torch.Tensor] = []
    ce = build_loss("weighted-ce")

    def loss_fn(logits: torch.Tensor, target: torch.Tensor, pixel_weights=None) -> torch.Tensor:
        seen.append(pixel_weights)
        assert target.shape == logits.shape[:1] + logits.shape[2:]
        return ce(logits, target, pixel_weights)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = train_one_epoch(
        model, [(x, y, w)], prepare=lambda *b: b, loss_fn=loss_fn, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        precision=Precision(None, False), steps=1, show_progress=False)
    out = model.output_size(28, 28)
    assert stats.steps == 1 and seen[0].shape == (2, *out)
    assert torch.equal(seen[0], center_crop(w, *out))
    with pytest.raises(ValueError, match="weighted-ce"):  # the loss refuses to run without
        train_one_epoch(
            model, [(x, y)], prepare=lambda *b: b, loss_fn=ce, optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
            scaler=torch.amp.GradScaler("cpu", enabled=False),
            precision=Precision(None, False), steps=1, show_progress=False)


def _tiny(loss: str, padding: str = "same", patch: int = 32) -> RunConfig:
    return RunConfig(
        model=ModelConfig(depth=2, width=4, padding=padding),  # type: ignore[arg-type]
        data=DataConfig(patch_size=patch, val_fraction=0.34),
        augment=AugmentConfig(elastic_p=1.0, affine_p=1.0),
        train=TrainConfig(epochs=1, batch_size=2, steps_per_epoch=2, loss=loss),  # type: ignore
    )


@pytest.mark.slow
def test_fit_with_the_border_weighted_loss(disc_data: Path, tmp_path: Path):
    plain = fit(disc_data, tmp_path / "ce", _tiny("ce"), show_progress=False)
    weighted = fit(disc_data, tmp_path / "wce", _tiny("weighted-ce"), show_progress=False)
    assert weighted.best_model.is_file()
    # same seed, same batches: only the weight map differs
    assert weighted.history[0]["train_loss"] != pytest.approx(plain.history[0]["train_loss"])
    valid = fit(disc_data, tmp_path / "valid", _tiny("weighted-ce", "valid", 44),
                show_progress=False)
    assert valid.best_model.is_file()


@pytest.mark.slow
def test_cli_paper_preset_then_isbi_evaluation_with_tta(disc_data: Path, tmp_path: Path,
                                                        capsys):
    run = tmp_path / "run"
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--preset", "paper",
                 "--width", "4", "--depth", "2", "--patch-size", "44", "--epochs", "1",
                 "--steps-per-epoch", "2"]) == 0
    card = json.loads((run / "config.json").read_text())["run"]
    assert card["train"]["loss"] == "weighted-ce" and card["model"]["padding"] == "valid"
    out = tmp_path / "ev"
    assert main(["-q", "evaluate", str(run / "best.safetensors"), str(disc_data), "--out",
                 str(out), "--isbi", "--tta", "d4"]) == 0
    assert "ISBI 2012" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    isbi = metrics["isbi"]
    assert metrics["tta"] == "d4" and isbi["object_class"] == "foreground"
    for name in ("pixel_error", "rand_error", "warping_error"):
        assert 0.0 <= isbi[name]["value"] <= 1.0
        assert isbi[name]["value"] == min(isbi["per_threshold"][name])
    assert len(isbi["thresholds"]) == 10
    code = main(["-q", "evaluate", str(run / "best.safetensors"), str(disc_data), "--tta",
                 "rot:0"])
    assert code == 2 and "--tta rot:0" in capsys.readouterr().err
