import csv
import json
from pathlib import Path

import pytest
import torch
from helpers import StopAfter
from safetensors.torch import load_file

from unetseg.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from unetseg.errors import UserError
from unetseg.train.fit import fit
from unetseg.train.optim import LrSchedule
from unetseg.train.state import RunState

NO_AUGMENT = AugmentConfig(flip=False, rot90=False, affine_p=0.0, elastic_p=0.0, intensity_p=0.0)


def small_cfg(**train) -> RunConfig:
    return RunConfig(
        model=ModelConfig(depth=2, width=4),
        data=DataConfig(patch_size=32, val_fraction=0.34),
        train=TrainConfig(**{"epochs": 2, "batch_size": 2, "steps_per_epoch": 3, **train}),
    )


def test_fit_writes_a_complete_run_folder(disc_data: Path, tmp_path: Path):
    result = fit(disc_data, tmp_path / "run", small_cfg(), show_progress=False)
    run = result.run_dir
    for name in ("best.safetensors", "last.safetensors", "resume.safetensors", "config.json",
                 "metrics.csv", "curves.png"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    config = json.loads((run / "config.json").read_text())
    assert config["classes"]["values"] == [0, 255]
    assert len(config["val_stems"]) == 2 and not set(config["val_stems"]) & set(
        config["train_stems"])
    assert not list(run.glob(".*tmp*")), "temporary files left behind"


def test_resume_after_an_interruption_matches_an_uninterrupted_run(disc_data: Path,
                                                                   tmp_path: Path):
    full = fit(disc_data, tmp_path / "full", small_cfg(epochs=3), show_progress=False)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(disc_data, run, small_cfg(epochs=3), show_progress=False, callbacks=[StopAfter(1)])
    resumed = fit(disc_data, run, resume=True, show_progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a = load_file(str(full.last_model))
    b = load_file(str(resumed.last_model))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history[-1]["train_loss"] == full.history[-1]["train_loss"]
    assert resumed.history[-1]["val_mean_iou"] == full.history[-1]["val_mean_iou"]


def test_existing_run_needs_resume(disc_data: Path, tmp_path: Path):
    fit(disc_data, tmp_path / "run", small_cfg(epochs=1), show_progress=False)
    with pytest.raises(UserError, match="--resume"):
        fit(disc_data, tmp_path / "run", small_cfg(epochs=1), show_progress=False)
    with pytest.raises(UserError, match="nothing to resume"):
        fit(disc_data, tmp_path / "new", resume=True, show_progress=False)


def test_time_budget_shortens_the_schedule():
    schedule = LrSchedule(total_steps=100, warmup_steps=10, schedule="cosine")
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    assert schedule(55) == pytest.approx(0.5)
    assert schedule(100) == pytest.approx(0.0)
    schedule.total_steps = 50
    assert schedule(50) == pytest.approx(0.0)


@pytest.mark.slow
def test_overfits_two_images(tmp_path: Path):
    from helpers import write_dataset

    data = write_dataset(tmp_path / "two", 2, size=(64, 64), seed=3)
    cfg = RunConfig(
        model=ModelConfig(depth=3, width=8),
        data=DataConfig(patch_size=64, val_fraction=0.0),
        augment=NO_AUGMENT,
        train=TrainConfig(epochs=30, batch_size=2, steps_per_epoch=10, lr=5e-3, warmup_epochs=0),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: idle threads only spin, badly under load
    try:
        result = fit(data, tmp_path / "run", cfg, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    from unetseg.api import evaluate

    scores = evaluate(result.last_model, data, show_progress=False)
    assert scores.summary["per_class"]["foreground"]["iou"] > 0.9
    assert scores.summary["mean_iou"] > 0.9


def test_loader_workers_train_the_same_weights(disc_data: Path, tmp_path: Path):
    """Crops are drawn from (seed, epoch, index), so worker processes change nothing."""
    runs = {}
    for workers in (0, 2):
        cfg = small_cfg(epochs=2, workers=workers)
        result = fit(disc_data, tmp_path / f"w{workers}", cfg, show_progress=False)
        runs[workers] = load_file(str(result.last_model))
    assert runs[0].keys() == runs[2].keys()
    for name, tensor in runs[0].items():
        torch.testing.assert_close(runs[2][name], tensor, rtol=0, atol=0, msg=name)


def test_workers_default_to_none_on_cpu():
    from unetseg.train.fit import loader_workers

    assert loader_workers(TrainConfig(), torch.device("cpu")) == 0
    assert loader_workers(TrainConfig(workers=3), torch.device("cpu")) == 3
    assert 1 <= loader_workers(TrainConfig(), torch.device("cuda")) <= 4


def _budget_state(elapsed_s: float) -> RunState:
    # two epochs of 10 steps: 1.5 s a step, 5 s of validation each
    return RunState(epochs=2, epoch=2, elapsed_s=elapsed_s, train_s=30.0, timed_steps=20)


@pytest.mark.parametrize("limit_s,epochs,last_steps,total_steps", [
    (100.0, 5, None, 50),   # 60 s left: three whole epochs of 20 s, nothing over
    (116.0, 5, None, 50),   # 16 s over: 11 s of steps after validation buy 7 < 8 steps
    (118.0, 6, 8, 58),      # 18 s over: 13 s buy 8 steps, a shortened sixth epoch
    (158.0, 8, 8, 78),      # five whole epochs more, then 18 s over as above
])
def test_the_budget_left_after_whole_epochs_buys_a_shorter_last_one(
        limit_s, epochs, last_steps, total_steps):
    from unetseg.train.optim import build_scheduler
    from unetseg.train.plan import fit_schedule_to_budget

    train = TrainConfig(epochs=100, time_limit_s=limit_s)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(train, optimizer, steps_per_epoch=10)
    state = _budget_state(40.0)
    fit_schedule_to_budget(state, scheduler, train, 2, 10)
    assert (state.epochs, state.last_epoch_steps) == (epochs, last_steps)
    assert scheduler.lr_lambdas[0].total_steps == total_steps


def test_nothing_is_planned_after_the_shortened_last_epoch():
    from unetseg.train.optim import build_scheduler
    from unetseg.train.plan import fit_schedule_to_budget, set_epochs

    train = TrainConfig(epochs=100, time_limit_s=1000.0)  # plenty of budget left
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(train, optimizer, steps_per_epoch=10)
    state = _budget_state(40.0)
    set_epochs(state, scheduler, 2, 10, 4)
    fit_schedule_to_budget(state, scheduler, train, 2, 10)
    assert (state.epochs, state.last_epoch_steps) == (2, 4)
    assert scheduler.lr_lambdas[0].total_steps == 14


def test_the_epoch_cap_leaves_no_shortened_epoch():
    from unetseg.train.optim import build_scheduler
    from unetseg.train.plan import fit_schedule_to_budget

    train = TrainConfig(epochs=5, time_limit_s=118.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(train, optimizer, steps_per_epoch=10)
    state = _budget_state(40.0)
    fit_schedule_to_budget(state, scheduler, train, 2, 10)
    assert (state.epochs, state.last_epoch_steps) == (5, None)


def test_a_shortened_last_epoch_takes_its_steps_and_ends_the_schedule(
        disc_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread):
    import unetseg.train.fit as fit_module
    from unetseg.train.plan import set_epochs

    def shorten_after_the_first(state, scheduler, cfg, epoch, steps):
        if epoch == 1:
            set_epochs(state, scheduler, 2, steps, 2)

    monkeypatch.setattr(fit_module, "fit_schedule_to_budget", shorten_after_the_first)
    result = fit(disc_data, tmp_path / "run", small_cfg(epochs=5, time_limit_s=1e6),
                 show_progress=False)
    assert [row["step"] for row in result.history] == [3, 5]
    assert [row["images_seen"] for row in result.history] == [6, 10]
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert result.stopped == "time_limit"


def test_a_constant_schedule_trains_at_the_base_rate_after_warm_up(disc_data: Path,
                                                                    tmp_path: Path):
    result = fit(disc_data, tmp_path / "run",
                 small_cfg(epochs=3, lr=2e-3, scheduler="constant", warmup_epochs=1),
                 show_progress=False)
    assert [row["lr"] for row in result.history] == [2e-3] * 3  # after each epoch's last step


def test_early_stopping_ends_a_run_whose_validation_stops_improving(
        disc_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import unetseg.train.fit as fit_module

    monkeypatch.setattr(fit_module, "_validate", lambda *args: {"val_mean_iou": 0.5})
    run = tmp_path / "run"
    result = fit(disc_data, run, small_cfg(epochs=10, early_stopping=2), show_progress=False)
    # epoch 1 improves on nothing; epochs 2 and 3 do not improve on it
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.stopped == "early_stopping"
    from unetseg.modelfile import read_card

    assert read_card(result.best_model).info["epoch"] == 1
    resumed = fit(disc_data, run, resume=True, show_progress=False)  # it ended: nothing more
    assert resumed.stopped == "early_stopping" and resumed.history == result.history
