"""``--task instance`` end to end: train on touching discs, predict objects, evaluate them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from unetseg.config import (
    AugmentConfig,
    DataConfig,
    InstanceConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from unetseg.data.io import read_mask
from unetseg.errors import UserError
from unetseg.modelfile import ModelCard, read_card
from unetseg.train.fit import fit, prepare_data


def touching_pair(size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A gray image with pairs of touching bright discs and its instance labels."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros(size, np.uint16)
    k = 0
    for _ in range(2):
        r = int(rng.integers(5, 8))
        cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - 3 * r))
        for dx in (0, 2 * r - 1):
            k += 1
            labels[((yy - cy) ** 2 + (xx - cx - dx) ** 2 <= r * r) & (labels == 0)] = k
    image = 60 + 120 * (labels > 0) + rng.normal(0, 10, size)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_touching(root: Path, n: int, *, instances: bool = True) -> Path:
    for sub in ("images", "masks", *(("instances",) if instances else ())):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        image, labels = touching_pair((48, 48), i)
        Image.fromarray(image).save(root / "images" / f"img{i}.png")
        Image.fromarray(((labels > 0) * 255).astype(np.uint8)).save(root / "masks" / f"img{i}.png")
        if instances:
            Image.fromarray(labels).save(root / "instances" / f"img{i}.png")
    return root


def instance_cfg(target: str = "boundary", loss: str = "dice_ce") -> RunConfig:
    return RunConfig(
        model=ModelConfig(depth=1, width=4),
        data=DataConfig(patch_size=32, val_fraction=0.34),
        augment=AugmentConfig(elastic_p=1.0, affine_p=1.0),  # targets derived after the warp
        train=TrainConfig(epochs=1, batch_size=2, steps_per_epoch=2, task="instance",
                          loss=loss),  # type: ignore[arg-type]
        instance=InstanceConfig(target=target),  # type: ignore[arg-type]
    )


@pytest.mark.slow
def test_train_predict_evaluate_objects(tmp_path: Path, one_torch_thread: None) -> None:
    from unetseg.api import evaluate, predict

    data = write_touching(tmp_path / "data", 5)
    result = fit(data, tmp_path / "run", instance_cfg(), show_progress=False)
    row = result.history[-1]
    assert "val_dsb_score" in row and set(row) >= {"val_iou/interior", "val_iou/boundary"}
    card = read_card(result.best_model)
    assert card.task == "instance" and card.model.num_classes == 3
    assert card.run is not None and card.run.train.task == "instance"
    record = card.info["instance_postprocess"]
    assert card.instance is not None and card.instance.seed_threshold == record["seed_threshold"]
    assert ModelCard.from_json(card.to_json()) == card
    assert read_card(result.last_model).instance == card.instance

    written = predict(result.best_model, data / "images", tmp_path / "pred", show_progress=False,
                      probabilities=True)
    assert [p.name for p in written] == [f"img{i}_instances.png" for i in range(5)]
    with Image.open(written[0]) as im:
        assert im.mode == "I;16"
    labels = read_mask(written[0])
    rows = list(csv.DictReader((tmp_path / "pred" / "img0_objects.csv").open()))
    assert [int(r["id"]) for r in rows] == sorted(set(np.unique(labels)) - {0})
    assert sum(int(r["area"]) for r in rows) == int((labels > 0).sum())
    assert (tmp_path / "pred" / "img0_overlay.png").is_file()
    assert not (tmp_path / "pred" / "img0.png").exists()

    result = evaluate(result.best_model, data, tmp_path / "eval", show_progress=False)
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["task"] == "instance" and summary["images"] == 5
    assert summary["n_true"] == 20 and len(summary["dsb"]) == 10
    assert 0.0 <= summary["dsb_score"] <= 1.0 and summary == result.summary
    per_image = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").open()))
    assert [int(r["objects_true"]) for r in per_image] == [4] * 5
    assert "Evaluation report (objects)" in (tmp_path / "eval" / "report.html").read_text()
    with pytest.raises(UserError, match="--isbi"):
        evaluate(card_path := tmp_path / "run" / "best.safetensors", data, isbi=True,
                 show_progress=False)
    tiles = [np.array(Image.open(data / "images" / f"img{i}.png")) for i in range(4)]
    tiff = tmp_path / "big" / "big.tif"
    tiff.parent.mkdir()
    tifffile.imwrite(tiff, np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]]))
    streamed = predict(card_path, tiff, tmp_path / "streamed", stream=True, tile=32,
                       show_progress=False)
    assert streamed == [tmp_path / "streamed" / "big_instances.tif"]
    predict(card_path, tiff, tmp_path / "memory", stream=False, tile=32, show_progress=False)
    in_memory = read_mask(tmp_path / "memory" / "big_instances.png")
    banded = tifffile.imread(streamed[0])
    assert in_memory.max() > 3, "no objects: the comparison would say nothing"
    pairs = np.unique(np.stack([banded.ravel(), in_memory.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))  # same objects
    tables = [list(csv.DictReader((tmp_path / f / "big_objects.csv").open()))
              for f in ("streamed", "memory")]
    assert sorted(r["area"] for r in tables[0]) == sorted(r["area"] for r in tables[1])
    assert (tmp_path / "streamed" / "big_overlay.png").is_file()


@pytest.mark.slow
def test_distance_target_with_border_weights_on_the_command_line(tmp_path: Path,
                                                                 one_torch_thread: None,
                                                                 capsys: pytest.CaptureFixture
                                                                 ) -> None:
    from unetseg.cli import main

    data = write_touching(tmp_path / "data", 4)
    code = main(["-q", "train", str(data), "--out", str(tmp_path / "run"), "--task", "instance",
                 "--instance-target", "distance", "--loss", "weighted-ce", "--epochs", "1",
                 "--width", "4", "--depth", "1", "--patch-size", "32", "--batch-size", "2",
                 "--steps-per-epoch", "2", "--boundary-width", "1"])
    assert code == 0
    card = read_card(tmp_path / "run" / "best.safetensors")
    assert card.instance is not None and card.instance.target == "distance"
    assert card.run is not None and card.run.instance.boundary_width == 1
    assert main(["-q", "evaluate", str(tmp_path / "run" / "best.safetensors"), str(data)]) == 0
    assert "DSB 2018 score" in capsys.readouterr().out


def test_objects_from_components_without_an_instance_folder(tmp_path: Path) -> None:
    data = write_touching(tmp_path / "data", 3, instances=False)
    prepared = prepare_data(data, instance_cfg(), show_progress=False)
    for pair in [*prepared.train, *prepared.val]:
        assert pair.instances is not None
        assert 1 <= pair.instances.max() <= 2  # each touching pair merges into one component


def test_class_weights_count_the_target_classes(tmp_path: Path) -> None:
    data = write_touching(tmp_path / "data", 3)
    cfg = instance_cfg()
    cfg = RunConfig(cfg.model, cfg.data, cfg.augment,
                    TrainConfig(task="instance", class_weights=(1.0, 2.0)), cfg.instance)
    with pytest.raises(UserError, match="3 classes \\(background, interior, boundary\\)"):
        fit(data, tmp_path / "run", cfg, show_progress=False)


def test_instance_models_are_refused_where_objects_cannot_follow(tmp_path: Path) -> None:
    from shipping import tiny_instance_model

    from unetseg.infer.ensemble import load_ensemble

    data = write_touching(tmp_path / "data", 3)
    with pytest.raises(UserError, match="--folds"):
        fit(data, tmp_path / "folds", instance_cfg(), folds=2, show_progress=False)
    assert not (tmp_path / "folds").exists()
    model = tiny_instance_model(tmp_path / "objects.safetensors")
    with pytest.raises(UserError, match="an instance model"):
        load_ensemble([model, model])
