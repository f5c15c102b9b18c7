"""3D training as 2D trains: an interrupted run resumes exactly, a time budget plans the
epochs from a timed 3D step, two processes follow one, the ``image`` normalisation is the
whole volume's, and valid padding is refused in one line."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import StopAfter, write_ball_volumes
from safetensors.torch import load_file

from unetseg.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from unetseg.errors import UserError
from unetseg.infer.volume import normalize_volume
from unetseg.train import distributed, volumes
from unetseg.train.plan import time_train_step
from unetseg.train.volumes import (
    fit_volumes,
    prepare_volumes,
    volume_batch_preparer,
    volume_batches,
)

pytest.importorskip("nibabel")

SHAPE = (4, 16, 16)  # 4 mm slices of 1 mm pixels: patch (4, 16, 16), kernels (1, 3, 3) first
RUN_FILES = {"best.safetensors", "last.safetensors", "resume.safetensors", "config.json",
             "metrics.csv", "curves.png", "report.html"}


def small_cfg(**train) -> RunConfig:
    return RunConfig(model=ModelConfig(depth=1, width=4, norm="group"),
                     data=DataConfig(val_fraction=0.25),
                     train=TrainConfig(**{"epochs": 3, "steps_per_epoch": 2, "batch_size": 2,
                                          "loss": "ce", **train}))


@pytest.fixture
def balls(tmp_path: Path) -> Path:
    return write_ball_volumes(tmp_path / "balls", count=4, shape=SHAPE)


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_an_interrupted_volume_run_resumes_exactly(balls: Path, tmp_path: Path,
                                                   one_torch_thread):
    full = fit_volumes(balls, tmp_path / "full", small_cfg(), show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        fit_volumes(balls, tmp_path / "run", small_cfg(), show_progress=False,
                    callbacks=[StopAfter(1)])
    with pytest.raises(UserError, match="pass --resume"):
        fit_volumes(balls, tmp_path / "run", small_cfg(), show_progress=False)
    resumed = fit_volumes(balls, tmp_path / "run", resume=True, show_progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert resumed.history == [{**row, "elapsed_s": resumed.history[i]["elapsed_s"]}
                               for i, row in enumerate(full.history)]
    assert same_weights(full.last_model, resumed.last_model)
    assert same_weights(full.best_model, resumed.best_model)
    assert {p.name for p in (tmp_path / "run").iterdir()} == RUN_FILES
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Validation examples" in page and "case" in page


class Clock:
    """A ``time.perf_counter`` that advances one second a call."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_a_time_budget_plans_epochs_from_a_timed_3d_step(balls: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         one_torch_thread):
    timed = []

    def fake_step(step_s):
        def step(cfg, rows, patch, device):
            timed.append((cfg.model.spatial_dims, rows, tuple(patch)))
            return step_s
        return step

    budget = 10.0  # about 3 epochs of 3 s by Clock
    cfg = small_cfg(epochs=30, steps_per_epoch=None, time_limit_s=budget)
    monkeypatch.setattr(volumes, "time_train_step", fake_step(0.5))
    monkeypatch.setattr(time, "perf_counter", Clock())
    result = fit_volumes(balls, tmp_path / "run", cfg, show_progress=False)
    assert timed == [(3, 2, SHAPE)]  # the 3D network on a batch of training patches
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    # by hand: 3 training volumes of 1024 voxels in patches of 1024, 2 a batch: 2 steps,
    # raised to 8; one validation volume in one window: 1024 voxels, a third of a step each
    val_s = 0.5 * 1024 / (3 * 2 * 1024)
    assert saved["planned_epochs"]["steps_per_epoch"] == 8 == saved["steps_per_epoch"]
    assert saved["planned_epochs"]["epochs"] == math.floor(budget / (8 * 0.5 + val_s))
    assert "steps per epoch" in saved["planned_epochs"]["reason"]
    assert result.stopped == "time_limit" and 1 < len(result.history) < 5
    assert result.history[-1]["elapsed_s"] <= budget

    monkeypatch.setattr(volumes, "time_train_step", fake_step(0.05))
    data = prepare_volumes(balls, cfg, None)
    cfg3d = volumes.volume_model_config(cfg, data)
    faster = volumes.plan_volume_epochs(cfg3d, data.train, data.val, SHAPE, 2,
                                        torch.device("cpu"))
    assert faster.epochs == math.floor(budget / (8 * 0.05 + val_s / 10))
    assert faster.epochs > saved["planned_epochs"]["epochs"]


def test_the_3d_step_is_timed_on_a_3d_network(balls: Path):
    cfg = small_cfg()
    cfg3d = volumes.volume_model_config(cfg, prepare_volumes(balls, cfg, None))
    seconds = time_train_step(cfg3d, 1, SHAPE, torch.device("cpu"), repeats=1)
    assert math.isfinite(seconds) and seconds > 0
    with pytest.raises(ValueError, match="3D network takes"):  # a 2D batch does not fit it
        time_train_step(cfg3d, 1, 16, torch.device("cpu"), repeats=1)


def test_image_normalisation_of_training_patches_is_the_whole_volume_s(tmp_path: Path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    rng = np.random.default_rng(0)
    shape = (4, 12, 12)
    for i, (gain, offset) in enumerate([(1.0, 0.0), (10.0, 100.0), (0.1, -5.0)]):
        ramp = np.arange(np.prod(shape), dtype=np.float32).reshape(1, *shape)
        np.save(tmp_path / "images" / f"v{i}.npy", (ramp * gain + offset).astype(np.float32))
        np.save(tmp_path / "masks" / f"v{i}.npy", (rng.random(shape) > 0.5).astype(np.uint8))
    still = AugmentConfig(flip=False, rot90=False, affine_p=0.0, elastic_p=0.0, intensity_p=0.0)
    cfg = RunConfig(data=DataConfig(normalization="image", val_fraction=0.34), augment=still,
                    train=TrainConfig(batch_size=4))
    data = prepare_volumes(tmp_path, cfg, None)
    patch = (2, 8, 8)
    x, y, params = next(volume_batches(data.train, patch, cfg, torch.Generator().manual_seed(1),
                                       slice(None), data.spacing))
    patches, _ = volume_batch_preparer(data.stats, torch.device("cpu"))(x, y, params)
    wholes = [normalize_volume(torch.as_tensor(np.load(tmp_path / "images" / f"{v.stem}.npy")),
                               data.stats) for v in data.train]
    windows = [w[:, z:z + 2, r:r + 8, c:c + 8] for w in wholes for z in range(3)
               for r in range(5) for c in range(5)]
    for p in patches:  # brute force: each patch is a window of a volume normalised whole
        assert any(torch.allclose(p, w, atol=1e-5) for w in windows)
        assert abs(float(p.mean())) > 0.1  # a patch z-scored by itself would have mean 0


def test_valid_padding_is_refused_in_one_line(balls: Path, tmp_path: Path):
    cfg = RunConfig(model=ModelConfig(padding="valid", depth=1, width=4))
    with pytest.raises(UserError) as error:
        fit_volumes(balls, tmp_path / "run", cfg, show_progress=False)
    assert "\n" not in str(error.value) and "drop --padding valid" in str(error.value)
    assert not (tmp_path / "run").exists()


def _ddp_worker(data: Path, runs: Path, reports: Path) -> int:
    env = distributed.DistEnv.from_environ()
    with distributed.leaving_at_the_end():
        result = fit_volumes(data, runs / "ddp", small_cfg(epochs=2), show_progress=False)
    (reports / f"rank{env.rank}.json").write_text(json.dumps(result.history))
    return 0


@pytest.mark.slow
def test_two_processes_follow_one_process(balls: Path, tmp_path: Path):
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    runs.mkdir()
    reports.mkdir()
    assert distributed.spawn_local(2, _ddp_worker, balls, runs, reports, threads=1) == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = fit_volumes(balls, tmp_path / "one", small_cfg(epochs=2), show_progress=False)
    finally:
        torch.set_num_threads(threads)
    rank0, rank1 = (json.loads((reports / f"rank{r}.json").read_text()) for r in range(2))
    assert rank0 == rank1
    assert json.loads((runs / "ddp" / "config.json").read_text())["processes"] == 2
    assert [r["train_loss"] for r in rank0] == pytest.approx(
        [r["train_loss"] for r in one.history], rel=1e-4)
    assert [r["val_mean_iou"] for r in rank0] == pytest.approx(
        [r["val_mean_iou"] for r in one.history], rel=1e-4)
    a, b = load_file(str(one.last_model)), load_file(str(runs / "ddp" / "last.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
