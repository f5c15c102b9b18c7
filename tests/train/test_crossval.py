"""``train --folds``: the fold summary against a hand computation, the budget shares, and the
whole workflow (train the folds, then predict and evaluate the run folder), resumed fold by
fold."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig, from_dict, to_dict
from unetseg.data.classes import ClassTable
from unetseg.data.normalize import ChannelStats
from unetseg.errors import UserError
from unetseg.model import UNet
from unetseg.modelfile import ModelCard, read_card, save_model
from unetseg.train.crossval import (
    FOLDS_FILE,
    _fold_config,
    cross_validate,
    fold_row,
    fold_summary,
    format_fold_table,
)
from unetseg.train.fit import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_cfg(**train) -> RunConfig:
    return RunConfig(model=ModelConfig(depth=2, width=4),
                     data=DataConfig(patch_size=32),
                     train=TrainConfig(**{"epochs": 2, "batch_size": 2, "steps_per_epoch": 2,
                                          **train}))


def test_fold_summary_is_the_mean_and_sample_sd_by_hand():
    rows = [{"fold": 0, "images": 3, "seconds": 1.0, "mean_iou": 0.5, "iou/a": 0.25},
            {"fold": 1, "images": 3, "seconds": 2.0, "mean_iou": 0.75, "iou/a": None},
            {"fold": 2, "images": 2, "seconds": 3.0, "mean_iou": 0.6, "iou/a": 0.5}]
    summary = fold_summary(rows)
    mean = (0.5 + 0.75 + 0.6) / 3
    sd = math.sqrt(((0.5 - mean) ** 2 + (0.75 - mean) ** 2 + (0.6 - mean) ** 2) / 2)
    assert summary["mean_iou"]["mean"] == pytest.approx(mean)
    assert summary["mean_iou"]["sd"] == pytest.approx(sd)
    assert summary["iou/a"] == {"mean": pytest.approx(0.375),
                                "sd": pytest.approx(math.sqrt(2 * 0.125**2)), "n": 2}
    assert set(summary) == {"mean_iou", "iou/a"}
    table = format_fold_table([{**r, "mean_dice": None} for r in rows], summary)
    assert table.splitlines()[-1].split()[:3] == ["mean+-sd", "8", f"{mean:.4f}+-{sd:.4f}"]


def test_fold_row_reads_one_confusion_matrix():
    cm = torch.tensor([[6, 2], [1, 3]])
    row = fold_row(1, 4, cm, ClassTable.from_values((0, 255), ("bg", "fg")))
    assert row["iou/fg"] == pytest.approx(3 / 6) and row["dice/fg"] == pytest.approx(6 / 9)
    assert row["foreground_dice"] == pytest.approx(6 / 9)
    assert row["mean_iou"] == pytest.approx((6 / 9 + 3 / 6) / 2)


def test_each_fold_gets_its_share_of_what_is_left_and_the_first_folds_width(tmp_path):
    state = {"run": to_dict(small_cfg()), "time_limit_s": 100.0,
             "split": [["a"], ["b"], ["c"]],
             "results": [{"seconds": 40.0}, None, None]}
    cfg = _fold_config(state, 1, tmp_path)
    assert cfg.train.time_limit_s == pytest.approx(30.0)
    assert cfg.data.val_stems == ("b",)
    assert cfg.model.width == 4  # given: kept
    state["run"] = to_dict(from_dict(RunConfig, {**state["run"], "model": {"depth": 2}}))
    (tmp_path / "fold-0").mkdir()
    net = UNet(1, 2, depth=2, width=8, top_width=16)
    save_model(tmp_path / "fold-0" / "best.safetensors", net,
               ModelCard(net.config, ClassTable.from_values((0, 1)), ChannelStats((0,), (1,))))
    planned = _fold_config(state, 2, tmp_path)
    assert (planned.model.width, planned.model.top_width) == (8, 16)
    state["results"] = [{"seconds": 90.0}, {"seconds": 20.0}, None]
    assert _fold_config(state, 2, tmp_path).train.time_limit_s == 1.0  # spent: one epoch


class StopAtCall:
    """Interrupts training like Ctrl-C at the ``n``-th epoch of the whole run."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self, row: dict) -> None:
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_folds_then_predict_and_evaluate_the_run_folder(tmp_path, disc_data):
    from unetseg.api import evaluate, predict
    from unetseg.cli import main

    run = tmp_path / "run"
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--folds", "2",
                 "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "2",
                 "--width", "4", "--depth", "2", "--patch-size", "32",
                 "--time-limit", "600"]) == 0
    record = json.loads((run / FOLDS_FILE).read_text())
    assert record["method"] == "blocks"  # img00..img05: one group, so contiguous blocks
    assert sorted(sum(record["split"], [])) == [f"img{i:02d}" for i in range(6)]
    rows = record["results"]
    assert [r["fold"] for r in rows] == [0, 1] and all(r["images"] == 3 for r in rows)
    values = [r["mean_iou"] for r in rows]
    assert record["summary"]["mean_iou"]["mean"] == pytest.approx(np.mean(values))
    assert record["summary"]["mean_iou"]["sd"] == pytest.approx(np.std(values, ddof=1))
    for fold in range(2):
        card = read_card(run / f"fold-{fold}" / "best.safetensors")
        assert card.run.data.val_stems == tuple(record["split"][fold])
        assert card.run.train.time_limit_s <= 600
    first = read_card(run / "fold-0" / "best.safetensors").run.train.time_limit_s
    assert first == pytest.approx(300.0)  # half of the whole run's budget
    model_set = json.loads((run / "modelset.json").read_text())
    assert model_set["members"] == ["fold-0/best.safetensors", "fold-1/best.safetensors"]
    assert model_set["selection"]["before"] is not None

    written = predict(run, disc_data / "images", tmp_path / "pred", device="cpu",
                      show_progress=False)
    assert len(written) == 6
    scores = evaluate(run, disc_data, device="cpu", show_progress=False)
    assert len(scores.summary["members"]) == 2
    assert 0.0 <= scores.summary["mean_iou"] <= 1.0

    with pytest.raises(UserError, match="holds a cross-validation already"):
        fit(disc_data, run, small_cfg(), folds=2, show_progress=False)
    with pytest.raises(UserError, match="resume it with --folds 2"):
        fit(disc_data, run, small_cfg(), folds=3, resume=True, show_progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU path of --folds needs CUDA")
def test_folds_then_predict_the_run_folder_on_cuda(tmp_path, disc_data):
    from unetseg.cli import main

    run, pred = tmp_path / "run", tmp_path / "pred"
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--folds", "2",
                 "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "2",
                 "--width", "4", "--depth", "2", "--patch-size", "32", "--device", "cuda",
                 "--time-limit", "120"]) == 0
    for fold in range(2):
        card = read_card(run / f"fold-{fold}" / "best.safetensors")
        assert card.run.train.device.startswith("cuda")
    assert main(["-q", "predict", str(run), str(disc_data / "images"), "--out", str(pred),
                 "--device", "cuda"]) == 0
    assert sorted(p.stem for p in pred.glob("img??.png")) == [f"img{i:02d}" for i in range(6)]


@pytest.mark.slow
def test_a_resumed_cross_validation_skips_finished_folds(tmp_path, disc_data):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # fold 0: epochs 1, 2; fold 1 stops after epoch 1
        fit(disc_data, run, small_cfg(), folds=2, show_progress=False,
            callbacks=[StopAtCall(3)])
    record = json.loads((run / FOLDS_FILE).read_text())
    assert record["results"][0] is not None and record["results"][1] is None
    finished = (run / "fold-0" / "best.safetensors").stat().st_mtime_ns
    calls = []

    def spy(data, out, cfg, **kw):
        calls.append((Path(out).name, cfg, kw["resume"]))
        return fit(data, out, cfg, **kw)

    result = cross_validate(disc_data, run, None, folds=2, train_run=spy, resume=True,
                            show_progress=False)
    assert calls == [("fold-1", None, True)]  # fold 0 skipped, fold 1 resumed
    assert (run / "fold-0" / "best.safetensors").stat().st_mtime_ns == finished
    assert [r["fold"] for r in result.folds] == [0, 1]
    assert (run / "fold-1" / "metrics.csv").read_text().strip().count("\n") == 2  # 2 epochs
    assert result.model_set.is_file()
