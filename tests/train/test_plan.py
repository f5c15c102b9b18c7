"""Width planning: the widest candidate a budget trains for enough steps."""

import json
import math
from pathlib import Path

import pytest
import torch

from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from unetseg.modelfile import read_card
from unetseg.train.fit import fit
from unetseg.train.plan import (
    MIN_EPOCHS,
    MIN_STEPS,
    MIN_STEPS_PER_EPOCH,
    TRAINING_SHARE,
    choose_width,
    estimate_validation_s,
    plan_epochs,
    plan_top_width,
    plan_width,
    time_train_step,
)


def steps_at(width: int, budget: float, probe_s: float) -> float:
    return budget * TRAINING_SHARE / (probe_s * (width / 16) ** 2)


@pytest.mark.parametrize("budget,probe_s,expected", [
    (100.0, 0.1, 16),     # w16: 800 steps; w32: 200
    (300.0, 0.1, 32),     # w32: 600 steps; w64: 150
    (1250.0, 0.125, 64),  # w64: exactly 500 steps of 2 s
    (1249.0, 0.125, 32),  # w64 just short of 500
    (10.0, 0.1, 16),      # nothing reaches 500: the narrowest
    (60.0, 0.002, 64),    # a GPU-like step time
])
def test_choose_width_picks_the_widest_with_enough_steps(budget, probe_s, expected):
    plan = choose_width(budget, 16, probe_s)
    assert plan.width == expected
    wider = [w for w in (64, 32, 16) if w > expected]
    assert all(steps_at(w, budget, probe_s) < MIN_STEPS for w in wider)
    assert f"width {expected}" in plan.reason


@pytest.mark.parametrize("width,classes,expected", [
    (16, 2, None), (16, 8, None), (16, 9, 32), (16, 11, 32), (32, 11, None), (32, 21, 64),
    (16, 1, None), (2, 3, 8), (64, 100, 256)])
def test_the_first_level_gets_two_channels_per_class(width, classes, expected):
    top = plan_top_width(width, classes)
    assert top == expected
    if top is not None:  # the smallest power of two with 2 per class, wider than the width
        assert top >= 2 * classes > top // 2 and top > width


def test_choose_width_names_a_widened_first_level():
    narrow, wide = choose_width(100.0, 16, 0.1, 11), choose_width(300.0, 16, 0.1, 11)
    assert (narrow.width, narrow.top_width) == (16, 32) and "first level 32" in narrow.reason
    assert (wide.width, wide.top_width) == (32, None) and "first level" not in wide.reason
    assert choose_width(100.0, 16, 0.1).top_width is None  # two classes


def test_choose_width_keeps_and_names_a_first_level_the_user_set():
    for classes, budget in ((11, 100.0), (2, 100.0), (11, 300.0)):
        plan = choose_width(budget, 16, 0.1, classes, top_width=8)
        assert plan.top_width == 8 and "first level 8" in plan.reason


@pytest.mark.parametrize("budget", [1.0, 600.0])
def test_plan_width_widens_the_first_level_for_many_classes(budget, one_torch_thread):
    cfg = RunConfig(model=ModelConfig(depth=2, num_classes=11),
                    train=TrainConfig(time_limit_s=budget))
    plan = plan_width(cfg, 2, 32, torch.device("cpu"))
    assert plan.top_width == plan_top_width(plan.width, 11)
    assert plan.top_width == (32 if plan.width == 16 else None)
    assert budget > 1 or plan.width == 16  # one second buys few steps of anything


def test_without_a_budget_the_width_is_the_papers():
    plan = plan_width(RunConfig(), 4, 256, torch.device("cpu"))
    assert plan.width == 64 and math.isnan(plan.probe_step_s)


def test_without_a_budget_a_first_level_the_user_set_is_kept():
    cfg = RunConfig(model=ModelConfig(top_width=8))
    assert plan_width(cfg, 4, 256, torch.device("cpu")).top_width == 8


def test_time_train_step_times_a_real_step(one_torch_thread):
    cfg = RunConfig(model=ModelConfig(depth=2, width=4))
    small = time_train_step(cfg, 2, 32, torch.device("cpu"))
    large = time_train_step(cfg, 2, 256, torch.device("cpu"))
    assert 0 < small < large < 60


def test_fit_plans_and_stores_the_width(disc_data: Path, tmp_path: Path, one_torch_thread):
    cfg = RunConfig(model=ModelConfig(depth=2), data=DataConfig(patch_size=32),
                    train=TrainConfig(epochs=1, batch_size=2, steps_per_epoch=2,
                                      time_limit_s=30.0))
    result = fit(disc_data, tmp_path / "run", cfg, show_progress=False)
    planned = json.loads((tmp_path / "run" / "config.json").read_text())["planned_width"]
    card = read_card(result.best_model)
    assert card.model.width == planned["width"] in (16, 32, 64)
    assert card.model.top_width == planned["top_width"] is None  # two classes
    assert card.run is not None and card.run.model.width == planned["width"]
    assert choose_width(30.0, 16, planned["probe_step_s"]).width == planned["width"]


def test_an_explicit_first_level_width_is_kept_when_the_width_is_planned(
        disc_data: Path, tmp_path: Path, one_torch_thread):
    cfg = RunConfig(model=ModelConfig(depth=2, top_width=8), data=DataConfig(patch_size=32),
                    train=TrainConfig(epochs=1, batch_size=2, steps_per_epoch=2,
                                      time_limit_s=30.0))
    result = fit(disc_data, tmp_path / "run", cfg, show_progress=False)
    card = read_card(result.best_model)
    assert card.model.width in (16, 32, 64) and card.model.top_width == 8
    planned = json.loads((tmp_path / "run" / "config.json").read_text())["planned_width"]
    assert planned["top_width"] == 8 and "first level 8" in planned["reason"]


def test_an_explicit_width_is_not_planned(disc_data: Path, tmp_path: Path, one_torch_thread):
    cfg = RunConfig(model=ModelConfig(depth=2, width=4), data=DataConfig(patch_size=32),
                    train=TrainConfig(epochs=1, batch_size=2, steps_per_epoch=2,
                                      time_limit_s=30.0))
    result = fit(disc_data, tmp_path / "run", cfg, show_progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["planned_width"] is None
    assert read_card(result.best_model).model.width == 4


@pytest.mark.parametrize("budget,step_s,area,val_s,steps,epochs", [
    (300.0, 1.0, 19, 2.0, 19, 14),      # ISBI-like: 300 / 21 = 14.3 whole-area epochs
    (300.0, 1.0, 200, 18.0, 82, 3),     # CamVid-like: 60 s of validation allows 3 epochs
    (600.0, 1.0, 200, 18.0, 82, 6),     # twice the budget: 6 epochs of (600 - 108) / 6 steps
    (300.0, 1.0, 200, 0.0, 37, 8),      # no validation: MIN_EPOCHS epochs
    (300.0, 1.0, 200, 200.0, 8, 2),     # validation dearer than the budget: 2 short epochs
    (10.0, 1.0, 6, 0.0, 6, 1),          # too few steps to shorten
])
def test_plan_epochs_by_hand(budget, step_s, area, val_s, steps, epochs):
    plan = plan_epochs(budget, step_s, area, val_s)
    assert (plan.steps_per_epoch, plan.epochs) == (steps, epochs)
    assert f"{steps} steps per epoch" in plan.reason


def test_plan_epochs_keeps_whole_area_epochs_exactly_when_the_budget_holds_enough():
    # step 0.5 s, 40 steps, no validation: 20 s an epoch
    assert plan_epochs(MIN_EPOCHS * 20.0, 0.5, 40, 0.0).steps_per_epoch == 40
    assert plan_epochs(MIN_EPOCHS * 20.0 - 1, 0.5, 40, 0.0).steps_per_epoch < 40


def test_estimate_validation_is_a_third_of_a_step_per_patch_area():
    assert estimate_validation_s(1.5, 4, 256, 12 * 256 * 256) == pytest.approx(1.5)


def test_fit_plans_short_epochs_for_a_budget_and_stores_them(
        disc_data: Path, tmp_path: Path, one_torch_thread):
    cfg = RunConfig(model=ModelConfig(depth=2, width=4), data=DataConfig(patch_size=32),
                    train=TrainConfig(epochs=2, batch_size=2, time_limit_s=1e-3))
    result = fit(disc_data, tmp_path / "run", cfg, show_progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    planned = saved["planned_epochs"]
    # a budget far too short for anything: two epochs of the fewest steps
    assert planned["steps_per_epoch"] == MIN_STEPS_PER_EPOCH and planned["epochs"] == 2
    assert saved["steps_per_epoch"] == MIN_STEPS_PER_EPOCH
    card = read_card(result.best_model)
    assert card.run is not None and card.run.train.steps_per_epoch == MIN_STEPS_PER_EPOCH
    assert result.history[0]["step"] == MIN_STEPS_PER_EPOCH


def test_no_budget_no_epoch_plan(disc_data: Path, tmp_path: Path, one_torch_thread):
    cfg = RunConfig(model=ModelConfig(depth=2, width=4), data=DataConfig(patch_size=32),
                    train=TrainConfig(epochs=1, batch_size=2))
    fit(disc_data, tmp_path / "run", cfg, show_progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["planned_epochs"] is None and saved["run"]["train"]["steps_per_epoch"] is None
