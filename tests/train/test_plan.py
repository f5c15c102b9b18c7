"""Width planning: the widest candidate a budget trains for enough steps."""

import json
import math
from pathlib import Path

import pytest
import torch

from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from unetseg.train.checkpoint import read_card
from unetseg.train.fit import fit
from unetseg.train.plan import MIN_STEPS, TRAINING_SHARE, choose_width, plan_width, time_train_step


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


def test_without_a_budget_the_width_is_the_papers():
    plan = plan_width(RunConfig(), 4, 256, torch.device("cpu"))
    assert plan.width == 64 and math.isnan(plan.probe_step_s)


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
    assert card.run is not None and card.run.model.width == planned["width"]
    assert choose_width(30.0, 16, planned["probe_step_s"]).width == planned["width"]


def test_an_explicit_width_is_not_planned(disc_data: Path, tmp_path: Path, one_torch_thread):
    cfg = RunConfig(model=ModelConfig(depth=2, width=4), data=DataConfig(patch_size=32),
                    train=TrainConfig(epochs=1, batch_size=2, steps_per_epoch=2,
                                      time_limit_s=30.0))
    result = fit(disc_data, tmp_path / "run", cfg, show_progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["planned_width"] is None
    assert read_card(result.best_model).model.width == 4
