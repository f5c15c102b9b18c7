"""Plan what the configuration leaves open from the machine: the network width for a budget.

Under a wall-clock budget a wider U-Net is not always better: each step costs about the square
of the width, and a network that gets too few optimiser steps ends worse than a narrower one
that converged. :func:`plan_width` times one training step of the narrowest candidate on the
training device and picks the widest candidate the budget trains for at least
:data:`MIN_STEPS` steps: 64 (the paper's) on a GPU for any budget of minutes, 16 or 32 on a
laptop CPU for a budget of minutes to an hour.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from unetseg.config import RunConfig
from unetseg.model import build_model
from unetseg.train.loop import Precision
from unetseg.train.optim import build_optimizer

log = logging.getLogger(__name__)

CANDIDATE_WIDTHS = (64, 32, 16)
"""Widths considered, widest first."""
MIN_STEPS = 500
"""Optimiser steps a budget must buy for a width to be chosen."""
TRAINING_SHARE = 0.8
"""Share of the budget assumed spent in training steps (the rest: validation and saving)."""


@dataclass(frozen=True)
class WidthPlan:
    """The planned width, the measured step time of ``probe_width`` (s) and the reason."""

    width: int
    probe_width: int
    probe_step_s: float
    reason: str


def time_train_step(cfg: RunConfig, rows: int, patch: int, device: torch.device,
                    *, repeats: int = 2) -> float:
    """Seconds of one training step (forward, loss, backward, optimiser) of ``cfg.model`` on
    random ``(rows, C, patch, patch)`` batches: the fastest of ``repeats`` after one warm-up."""
    generator = torch.Generator().manual_seed(0)
    model = build_model(cfg.model).to(device).train()
    optimizer = build_optimizer(cfg.train, model.parameters())
    precision = Precision.for_device(device, cfg.train.amp)
    x = torch.randn(rows, cfg.model.in_channels, patch, patch, generator=generator).to(device)
    y = torch.randint(0, cfg.model.num_classes, (rows, patch, patch), generator=generator)
    y = y.to(device)
    best = float("inf")
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=precision.dtype or torch.float32,
                            enabled=precision.dtype is not None):
            logits = model(x)
        if logits.shape[-2:] != y.shape[-2:]:
            top = (y.shape[-2] - logits.shape[-2]) // 2
            left = (y.shape[-1] - logits.shape[-1]) // 2
            target = y[..., top:top + logits.shape[-2], left:left + logits.shape[-1]]
        else:
            target = y
        loss = F.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i > 0:
            best = min(best, time.perf_counter() - started)
    return best


def choose_width(budget_s: float, probe_width: int, probe_step_s: float) -> WidthPlan:
    """The widest of :data:`CANDIDATE_WIDTHS` that ``budget_s`` trains for :data:`MIN_STEPS`
    steps, with a width-``w`` step taken to cost ``probe_step_s * (w / probe_width) ** 2``
    (the convolutions' cost; wider layers run a little more efficiently, so this errs long);
    the narrowest candidate when none does."""
    train_s = budget_s * TRAINING_SHARE
    for width in CANDIDATE_WIDTHS:
        step_s = probe_step_s * (width / probe_width) ** 2
        steps = train_s / step_s
        if steps >= MIN_STEPS or width == CANDIDATE_WIDTHS[-1]:
            enough = "" if steps >= MIN_STEPS else f", fewer than {MIN_STEPS} but the narrowest"
            reason = (f"width {width}: a {budget_s:.0f} s budget buys about {steps:.0f} steps"
                      f" of {step_s:.2f} s{enough}")
            return WidthPlan(width, probe_width, probe_step_s, reason)
    raise AssertionError("unreachable")


def plan_width(cfg: RunConfig, rows: int, patch: int, device: torch.device) -> WidthPlan:
    """The width for a run whose ``cfg.model.width`` is None (see the module docstring).

    Without a time budget the run length is set by epochs, not by the width: the paper's 64.
    """
    budget = cfg.train.time_limit_s
    if budget is None:
        return WidthPlan(64, 64, float("nan"), "width 64: no time budget, the paper's width")
    probe = CANDIDATE_WIDTHS[-1]
    step_s = time_train_step(replace(cfg, model=replace(cfg.model, width=probe)), rows, patch,
                             device)
    plan = choose_width(budget, probe, step_s)
    log.info("planned %s", plan.reason)
    return plan
