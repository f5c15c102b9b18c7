"""The learning-rate schedules, against hand values."""

import pytest
import torch

from unetseg.config import TrainConfig
from unetseg.train.optim import LrSchedule, build_scheduler


def test_the_constant_schedule_holds_the_base_rate_after_warm_up():
    schedule = LrSchedule(total_steps=12, warmup_steps=4, schedule="constant")
    assert [schedule(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [schedule(s) for s in range(4, 20)] == [1.0] * 16  # also past the planned end
    schedule.total_steps = 6  # a time budget shortening the run changes nothing
    assert schedule(10) == 1.0


def test_the_constant_schedule_sets_the_optimiser_rate_at_every_step():
    # 3 epochs of 4 steps, 1 of warm-up, base rate 0.01
    cfg = TrainConfig(lr=0.01, scheduler="constant", warmup_epochs=1, epochs=3)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=4)
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.0025, 0.005, 0.0075] + [0.01] * 9, abs=1e-15)


def test_without_warm_up_the_constant_rate_starts_at_once():
    cfg = TrainConfig(lr=0.003, scheduler="constant", warmup_epochs=0, epochs=2)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=5)
    for _ in range(10):
        assert optimizer.param_groups[0]["lr"] == 0.003
        optimizer.step()
        scheduler.step()
