"""Optimiser and learning-rate schedule from a :class:`~unetseg.config.TrainConfig`."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from unetseg.config import TrainConfig


def build_optimizer(cfg: TrainConfig, params: Iterable[torch.nn.Parameter]
                    ) -> torch.optim.Optimizer:
    """AdamW (default) or SGD with Nesterov-free momentum (the U-Net paper: 0.99)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use adamw or sgd")


class LrSchedule:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    Linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total_steps``
    (``schedule="cosine"``) or constant. A callable object rather than a closure so that
    ``LambdaLR.state_dict`` saves its fields (plain JSON) and a run fitted to a time budget can
    shorten ``total_steps`` after measuring its first epoch.
    """

    def __init__(self, total_steps: int, warmup_steps: int, schedule: str):
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.schedule = schedule

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, *,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step :class:`LrSchedule` over ``cfg.epochs`` epochs."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total // 2)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LrSchedule(total, warmup, cfg.scheduler))
