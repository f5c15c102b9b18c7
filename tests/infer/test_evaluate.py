"""The one scoring routine: confusion matrices against a pixel-by-pixel count, and validation
during training scoring exactly what ``unetseg evaluate`` scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from unetseg.infer.evaluate import score_images, total_confusion


def _count(pred: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), np.int64)
    for t, p in zip(truth.ravel(), pred.ravel()):
        if t >= 0:
            cm[t, p] += 1
    return cm


def test_scores_count_every_labelled_pixel_once() -> None:
    rng = np.random.default_rng(0)
    k, truths = 3, []
    for i, (h, w) in enumerate([(5, 7), (8, 3)]):
        logits = rng.normal(size=(k, h, w)).astype(np.float32)
        truth = rng.integers(-1, k, size=(h, w))  # -1: ignored
        truths.append((f"im{i}", logits, torch.from_numpy(truth)))
    scores = list(score_images(lambda image: torch.as_tensor(image), truths, k))
    assert [s.stem for s in scores] == ["im0", "im1"]
    for score, (_, logits, truth) in zip(scores, truths):
        pred = logits.argmax(0)
        np.testing.assert_array_equal(score.labels.numpy(), pred)
        np.testing.assert_array_equal(score.confusion.numpy(), _count(pred, truth.numpy(), k))
    want = sum(_count(t[1].argmax(0), t[2].numpy(), k) for t in truths)
    np.testing.assert_array_equal(total_confusion(scores, k).numpy(), want)
    assert total_confusion([], k).tolist() == [[0] * k] * k


@pytest.mark.slow
def test_validation_scores_what_evaluate_scores(tmp_path: Path) -> None:
    from helpers import write_dataset

    import unetseg

    data = write_dataset(tmp_path / "data", 4, size=(40, 48))
    cfg = RunConfig(model=ModelConfig(width=4, depth=2),
                    data=DataConfig(patch_size=32, val_fraction=0.5),
                    train=TrainConfig(epochs=1, steps_per_epoch=2, device="cpu"))
    result = unetseg.fit(data, tmp_path / "run", cfg, show_progress=False)
    val_stems = json.loads((tmp_path / "run" / "config.json").read_text())["val_stems"]
    val = tmp_path / "val"
    for sub in ("images", "masks"):
        (val / sub).mkdir(parents=True)
        for stem in val_stems:
            (val / sub / f"{stem}.png").write_bytes((data / sub / f"{stem}.png").read_bytes())
    scores = unetseg.evaluate(result.best_model, val, device="cpu", show_progress=False)
    row = result.history[-1]
    assert scores.summary["mean_iou"] == pytest.approx(row["val_mean_iou"], abs=1e-12)
