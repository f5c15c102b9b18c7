"""The quality benchmark's summary over several runs (``benchmarks/quality.py``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
quality = importlib.import_module("quality")  # a broken benchmark fails here, never skips


def _row(model: str, miou: float, acc: float, epochs: int) -> dict:
    return {"model": model, "mean_iou": miou, "pixel_accuracy": acc, "epochs": epochs}


def test_summary_means_sds_and_runs_led_by_hand():
    runs = [[_row("a", 0.30, 0.70, 5), _row("b", 0.20, 0.60, 3)],
            [_row("a", 0.20, 0.66, 7), _row("b", 0.26, 0.64, 4)],
            [_row("a", 0.25, 0.62, 6), _row("b", 0.25, 0.65, 5)]]
    a, b = quality.summarise(runs, "camvid")
    assert (a["model"], b["model"], a["runs"]) == ("a", "b", 3)
    assert a["mean_iou"]["mean"] == pytest.approx(0.25)
    assert a["mean_iou"]["sd"] == pytest.approx(0.05)  # sample sd of 0.30, 0.20, 0.25
    assert b["mean_iou"]["mean"] == pytest.approx(0.71 / 3)
    assert b["pixel_accuracy"]["sd"] == pytest.approx(((0.03**2 + 0.01**2 + 0.02**2) / 2) ** 0.5)
    assert a["mean_iou"]["values"] == [0.30, 0.20, 0.25]
    assert (a["led"], b["led"]) == (2, 2)  # the third run is a tie
    assert (a["epochs"], b["epochs"]) == (6.0, 4.0)
    table = quality.summary_table("camvid", [a, b], "camvid", 600.0, ["seed0", "seed1", "seed2"])
    assert "0.2500 ± 0.0500" in table and "0.3000, 0.2000, 0.2500" in table
    assert "| 2/3 |" in table and "3 runs of 600 s" in table


def test_one_run_has_no_spread():
    (only,) = quality.summarise([[_row("a", 0.3, 0.7, 2)]], "camvid")
    assert only["mean_iou"] == {"mean": 0.3, "sd": 0.0, "values": [0.3]}


def test_the_variants_group_names_every_built_in_variant():
    from unetseg.model import architectures

    names = quality.model_names("default,variants,unetseg-default")
    assert names[0] == "unetseg-default" and len(names) == len(set(names))
    archs = {quality.VARIANT_MODELS[n].arch for n in names[1:]}
    assert archs == set(architectures()[:7])  # unet (with deep supervision) and the six


def test_dsb2018_is_summarised_by_its_nuclei_scores():
    def row(model: str, iou: float) -> dict:
        return {"model": model, "nuclei_iou": iou, "nuclei_dice": 2 * iou / (1 + iou),
                "mean_iou": iou, "pixel_accuracy": 0.9, "epochs": 1}

    a, b = quality.summarise([[row("a", 0.6), row("b", 0.7)], [row("a", 0.8), row("b", 0.7)]],
                             "dsb2018")
    assert a["nuclei_iou"]["mean"] == pytest.approx(0.7) and (a["led"], b["led"]) == (1, 1)
    assert a["nuclei_dice"]["values"] == pytest.approx([1.2 / 1.6, 1.6 / 1.8])
    table = quality.summary_table("dsb2018", [a, b], "dsb2018", 600.0, ["seed0", "seed1"])
    assert "nuclei IoU (mean ± sd)" in table and "0.7000 ± 0.1414" in table


def test_the_automation_group_and_its_fold_histories(tmp_path: Path):
    names = quality.model_names("automation")
    assert names[0] == "unetseg-default" and "unetseg-5fold+post-5x" in names
    post = quality.AUTOMATION_MODELS["unetseg-5fold+post"]
    assert (post.folds, post.postprocess, post.trained_as) == (5, True, "unetseg-5fold")
    assert quality.AUTOMATION_MODELS["unetseg-default-5x"].budget_scale == 5.0
    for k in range(2):
        (tmp_path / f"fold-{k}").mkdir()
        (tmp_path / f"fold-{k}" / "metrics.csv").write_text(
            "epoch,step,val_mean_iou,elapsed_s,images_seen\n"
            f"1,4,0.5,1.0,16\n2,8,,2.0,{32 + k}\n")
    runs = quality._histories(tmp_path, 2)
    assert [len(r) for r in runs] == [2, 2]
    assert runs[1][1]["images_seen"] == 33.0 and runs[0][1]["val_mean_iou"] is None


def test_the_plain_reference_moves_image_and_mask_together():
    plain = importlib.import_module("plain_peer")
    rng = np.random.default_rng(0)
    image = rng.random((3, 40, 300), dtype=np.float32)  # shorter than a patch: padded
    ids = (image[0] > 0.5).astype(np.int64)
    for _ in range(8):
        crop, crop_ids = plain._crop(image, ids, rng)
        assert crop.shape == (3, plain.PATCH, plain.PATCH)
        assert crop_ids.shape == (plain.PATCH, plain.PATCH)
        np.testing.assert_array_equal(crop_ids, (crop[0] > 0.5).astype(np.int64))
        assert 0 < (crop.sum(0) == 0).mean() < 1  # the zero padding shows


def test_the_plain_reference_is_scored_on_the_summed_confusion_matrix(tmp_path: Path):
    from PIL import Image

    plain = importlib.import_module("plain_peer")
    truths = []
    for k, side in enumerate((20, 35)):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        image = np.zeros((side, side + 3, 3), np.uint8)
        image[: side // 2] = 200
        Image.fromarray(image).save(tmp_path / "images" / f"{k}.png")
        mask = np.zeros((side, side + 3), np.uint8)
        mask[: side // 3] = 1
        Image.fromarray(mask).save(tmp_path / "masks" / f"{k}.png")
        truths.append((image[..., 0] > 0, mask > 0))

    class Bright(torch.nn.Module):  # "nuclei" where the first channel is bright
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([0.5 - x[:, :1], x[:, :1] - 0.5], dim=1)

    s = plain.score_plain(Bright(), tmp_path, ("background", "nuclei"))
    tp = sum(int((p & t).sum()) for p, t in truths)
    fp = sum(int((p & ~t).sum()) for p, t in truths)
    fn = sum(int((~p & t).sum()) for p, t in truths)
    assert s["per_class"]["nuclei"]["iou"] == pytest.approx(tp / (tp + fp + fn))


def test_a_contenders_set_fields_are_kept_by_the_plan(tmp_path: Path, monkeypatch):
    seen: dict = {}

    class Stop(Exception):
        pass

    def spy_fit(data, out, cfg, **kwargs):
        seen.update(cfg=cfg, fixed=list(kwargs["fixed"]))
        raise Stop

    monkeypatch.setattr(quality, "fit", spy_fit)
    data = quality.Dataset("dsb2018", tmp_path, tmp_path, quality.RunConfig(), "dsb2018")
    args = argparse.Namespace(budget=60.0, quiet=True)
    with pytest.raises(Stop):
        quality.train_and_score(quality.EXTRA_MODELS["unetseg-dataset-norm"], data, tmp_path,
                                args, {})
    assert seen["fixed"] == ["data.normalization"]
    assert seen["cfg"].data.normalization == "dataset"
    with pytest.raises(Stop):
        quality.train_and_score(quality.MODELS["unetseg-default"], data, tmp_path, args, {})
    assert seen["fixed"] == []
