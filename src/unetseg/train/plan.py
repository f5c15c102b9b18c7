"""Plan what the configuration leaves open from the machine: the network width and the epoch
length for a budget.

Under a wall-clock budget a wider U-Net is not always better: each step costs about the square
of the width, and a network that gets too few optimiser steps ends worse than a narrower one
that converged. :func:`plan_width` times one training step of the narrowest candidate on the
training device and picks the widest candidate the budget trains for at least
:data:`MIN_STEPS` steps: 64 (the paper's) on a GPU for any budget of minutes, 16 or 32 on a
laptop CPU for a budget of minutes to an hour. The first level keeps at least two channels
per class (:func:`plan_top_width`).

An epoch ends with a validation, a checkpoint and a re-fit of the cosine schedule to the time
left, so a budget needs several of them: one pass over a large data set's area can take most
of the budget on a CPU (CamVid: 194 steps of about half a second, against a 5-minute budget),
which leaves one or two epochs, the first all warm-up. :func:`plan_epochs` shortens the epochs
of such a run so that the budget holds :data:`MIN_EPOCHS` of them, or as many as validation
leaves room for.

:func:`resolve_config` applies both plans to a run's configuration once, before training;
:func:`fit_schedule_to_budget` re-plans the number of epochs after each epoch from the times
measured so far.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from unetseg.config import RunConfig, TrainConfig
from unetseg.model import build_model, nearest_legal_input_size
from unetseg.model.layout import fastest_memory_format
from unetseg.model.variants import DEFAULT_WIDTHS, PLANNED_WIDTH
from unetseg.train import distributed
from unetseg.train.distributed import DistEnv
from unetseg.train.loop import Precision, supervised_loss
from unetseg.train.optim import build_optimizer
from unetseg.train.state import RunState

if TYPE_CHECKING:
    from unetseg.data.classes import ClassTable
    from unetseg.data.dataset import LoadedPair

log = logging.getLogger(__name__)

CANDIDATE_WIDTHS = (64, 32, 16)
"""Widths considered, widest first."""
MIN_STEPS = 500
"""Optimiser steps a budget must buy for a width to be chosen."""
TRAINING_SHARE = 0.8
"""Share of the budget assumed spent in training steps (the rest: validation and saving)."""
MIN_EPOCHS = 8
"""Epochs a budget is cut into at least, when validation leaves room for them."""
VALIDATION_SHARE = 0.2
"""Largest share of the budget that shortened epochs may spend validating."""
MIN_STEPS_PER_EPOCH = 8
"""Fewest optimiser steps in an epoch."""
TOP_CHANNELS_PER_CLASS = 2
"""Fewest first-level channels per class of a planned network (rounded up to a power of 2)."""


@dataclass(frozen=True)
class WidthPlan:
    """The planned width, the measured step time of ``probe_width`` (s) and the reason."""

    width: int
    probe_width: int
    probe_step_s: float
    reason: str
    top_width: int | None = None


def time_train_step(cfg: RunConfig, rows: int, patch: int | Sequence[int],
                    device: torch.device, *, repeats: int = 2) -> float:
    """Seconds of one training step (forward, loss, backward, optimiser) of ``cfg.model`` on
    random ``(rows, C, patch, patch)`` batches (``(rows, C, d, h, w)`` for a volume network's
    ``patch`` ``(d, h, w)``): the fastest of ``repeats`` after one warm-up."""
    sides = _sides(patch)
    generator = torch.Generator().manual_seed(0)
    model = build_model(cfg.model).to(device).train()
    model.to(memory_format=fastest_memory_format(model, device))  # type: ignore[call-overload]
    optimizer = build_optimizer(cfg.train, model.parameters())
    precision = Precision.for_device(device, cfg.train.amp)
    x = torch.randn(rows, cfg.model.in_channels, *sides, generator=generator).to(device)
    y = torch.randint(0, cfg.model.num_classes, (rows, *sides), generator=generator)
    y = y.to(device)
    best = float("inf")
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=precision.dtype or torch.float32,
                            enabled=precision.dtype is not None):
            outputs = model(x)
        loss = supervised_loss(F.cross_entropy, outputs, [y])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i > 0:
            best = min(best, time.perf_counter() - started)
    return best


def plan_top_width(width: int, num_classes: int) -> int | None:
    """The first level's channels for a planned ``width``: at least
    :data:`TOP_CHANNELS_PER_CLASS` per class, rounded up to a power of two; None where that is
    no more than ``width``.

    The first level's features are all the 1x1 classifier sees of a pixel, and that level alone
    holds the image at full resolution. Sixteen of them are plenty for two classes but few for
    eleven. Widening that level alone from 16 to 32 made CamVid's timed step 1.7x longer
    (0.72 s -> 1.21 s on 2 CPU cores), where doubling the whole width costs about 4x
    (:func:`choose_width`'s model). Measured with ``benchmarks/quality.py`` at 600 s on 2 CPU
    cores: CamVid (11 classes) scored mean IoU 0.282 and 0.260 in two runs with a first level
    of 32, against 0.244 with 16 (single runs at this budget vary by a few hundredths);
    ISBI 2012 (2 classes) lost with 32 (membrane IoU 0.713 -> 0.708, Rand error 0.065 ->
    0.096), and this rule leaves it at 16.
    """
    wanted = 1 << max(0, TOP_CHANNELS_PER_CLASS * num_classes - 1).bit_length()
    return wanted if wanted > width else None


def choose_width(budget_s: float, probe_width: int, probe_step_s: float,
                 num_classes: int = 2, top_width: int | None = None) -> WidthPlan:
    """The widest of :data:`CANDIDATE_WIDTHS` that ``budget_s`` trains for :data:`MIN_STEPS`
    steps, with a width-``w`` step taken to cost ``probe_step_s * (w / probe_width) ** 2``
    (the convolutions' cost; wider layers run a little more efficiently, and a first level
    widened for ``num_classes`` does not widen further, so this errs long); the narrowest
    candidate when none does. ``probe_width`` was timed with its first level: ``top_width``
    where the user set one, else the planned one (:func:`plan_top_width`)."""
    train_s = budget_s * TRAINING_SHARE
    for width in CANDIDATE_WIDTHS:
        step_s = probe_step_s * (width / probe_width) ** 2
        steps = train_s / step_s
        if steps >= MIN_STEPS or width == CANDIDATE_WIDTHS[-1]:
            enough = "" if steps >= MIN_STEPS else f", fewer than {MIN_STEPS} but the narrowest"
            top = top_width or plan_top_width(width, num_classes)
            first = "" if top is None else f" (first level {top})"
            reason = (f"width {width}{first}: a {budget_s:.0f} s budget buys about {steps:.0f}"
                      f" steps of {step_s:.2f} s{enough}")
            return WidthPlan(width, probe_width, probe_step_s, reason, top)
    raise AssertionError("unreachable")


def plan_width(cfg: RunConfig, rows: int, patch: int, device: torch.device) -> WidthPlan:
    """The width for a run whose ``cfg.model.width`` is None (see the module docstring).

    Without a time budget the run length is set by epochs, not by the width: the paper's 64
    (32 for U-Net++, its paper's).
    """
    budget = cfg.train.time_limit_s
    if budget is None:
        width = DEFAULT_WIDTHS.get(cfg.model.arch, 64)
        return WidthPlan(width, width, float("nan"),
                         f"width {width}: no time budget, the paper's width", cfg.model.top_width)
    probe = CANDIDATE_WIDTHS[-1]
    probe_model = replace(cfg.model, width=probe,
                          top_width=cfg.model.top_width
                          or plan_top_width(probe, cfg.model.num_classes))
    step_s = time_train_step(replace(cfg, model=probe_model), rows, patch, device)
    plan = choose_width(budget, probe, step_s, cfg.model.num_classes, cfg.model.top_width)
    log.info("planned %s", plan.reason)
    return plan


@dataclass(frozen=True)
class EpochPlan:
    """Optimiser steps per epoch and the number of epochs expected to fit the budget."""

    steps_per_epoch: int
    epochs: int
    reason: str


def plan_epochs(budget_s: float, step_s: float, area_steps: int, val_s: float) -> EpochPlan:
    """Epoch length for a run of ``budget_s`` seconds whose training step takes ``step_s`` s
    and whose validation takes ``val_s`` s.

    Epochs of ``area_steps`` (one pass over the training images' area) are kept when the budget
    holds at least :data:`MIN_EPOCHS` of them. Otherwise the run gets ``E`` shorter epochs:
    :data:`MIN_EPOCHS`, fewer when ``E`` validations would take more than
    :data:`VALIDATION_SHARE` of the budget (but at least 2), each of the steps that the rest of
    the budget buys (between :data:`MIN_STEPS_PER_EPOCH` and ``area_steps``).
    """
    if budget_s <= 0 or step_s <= 0:
        raise ValueError(f"budget and step time must be positive, got {budget_s}, {step_s}")
    whole = budget_s / (area_steps * step_s + val_s)
    if whole >= MIN_EPOCHS or area_steps <= MIN_STEPS_PER_EPOCH:
        return EpochPlan(area_steps, max(1, math.floor(whole)),
                         f"{area_steps} steps per epoch (the training images' area):"
                         f" about {whole:.0f} epochs of {area_steps * step_s + val_s:.0f} s")
    epochs = MIN_EPOCHS
    if val_s > 0:
        epochs = max(2, min(MIN_EPOCHS, math.floor(budget_s * VALIDATION_SHARE / val_s)))
    steps = math.floor((budget_s - epochs * val_s) / epochs / step_s)
    steps = max(MIN_STEPS_PER_EPOCH, min(area_steps, steps))
    return EpochPlan(steps, epochs,
                     f"{steps} steps per epoch (of {area_steps} for the training images'"
                     f" area), so that a {budget_s:.0f} s budget holds about {epochs} epochs"
                     f" of {steps} x {step_s:.2f} s steps and a {val_s:.0f} s validation")


def estimate_validation_s(step_s: float, rows: int, patch: int | Sequence[int],
                          val_pixels: int) -> float:
    """Seconds to validate ``val_pixels`` pixels (voxels), from the time of a training step on
    ``rows`` patches of ``patch`` x ``patch`` pixels (or ``(d, h, w)`` voxels): a forward pass
    costs about a third of a step (forward, then backward at twice the forward's cost)."""
    return step_s * val_pixels / (3 * rows * math.prod(_sides(patch)))


def _sides(patch: int | Sequence[int]) -> tuple[int, ...]:
    """A square crop's side as ``(patch, patch)``; a volume patch ``(d, h, w)`` as it is."""
    return (patch, patch) if isinstance(patch, int) else tuple(int(v) for v in patch)


def patch_size_for(cfg: RunConfig) -> int:
    """The training crop side: as configured, or the nearest legal size for valid padding."""
    if cfg.model.padding == "valid":
        return nearest_legal_input_size(cfg.data.patch_size, cfg.model.depth)
    return cfg.data.patch_size


def steps_per_epoch(cfg: RunConfig, train: list[LoadedPair], patch: int) -> int:
    """Configured, or enough patches to cover the training images' area once (>= 8 steps)."""
    if cfg.train.steps_per_epoch:
        return cfg.train.steps_per_epoch
    area = sum(p.ids.shape[0] * p.ids.shape[1] for p in train)
    return max(8, math.ceil(area / (patch * patch) / cfg.train.batch_size))


def plan_run_epochs(cfg: RunConfig, width_plan: WidthPlan | None, train: list[LoadedPair],
                    val_pixels: int, rows: int, device: torch.device) -> EpochPlan:
    """The epoch length for ``cfg.train.time_limit_s`` (:func:`plan_epochs`), from the width
    probe's step time when the width was planned, else from a timed step of the model.
    ``rows`` is this process's share of a batch, ``val_pixels`` the validation images' area."""
    assert cfg.train.time_limit_s is not None
    patch = patch_size_for(cfg)
    if width_plan is not None and not math.isnan(width_plan.probe_step_s):
        step_s = width_plan.probe_step_s * (width_plan.width / width_plan.probe_width) ** 2
    else:
        step_s = time_train_step(cfg, rows, patch, device)
    return plan_epochs(cfg.train.time_limit_s, step_s, steps_per_epoch(cfg, train, patch),
                       estimate_validation_s(step_s, rows, patch, val_pixels))


@dataclass(frozen=True)
class ResolvedConfig:
    """A run's configuration in its final form (channels, classes, width and epoch length
    set) and the plans that set them, None where the user did."""

    cfg: RunConfig
    width_plan: WidthPlan | None
    epoch_plan: EpochPlan | None
    plan: dict[str, Any] | None = None  # the plan.json of a planned run

    def plans_json(self) -> dict[str, Any]:
        """The plans as ``config.json`` and ``resume.safetensors`` store them."""
        width = None if self.width_plan is None else asdict(self.width_plan)
        epochs = None if self.epoch_plan is None else asdict(self.epoch_plan)
        return {"planned_width": width, "planned_epochs": epochs, "plan": self.plan}

    @classmethod
    def from_json(cls, cfg: RunConfig, data: dict[str, Any]) -> ResolvedConfig:
        """The resolved ``cfg`` of a stored run with the plans of :meth:`plans_json` (None
        where a file from an older unetseg lacks them)."""
        width, epochs = data.get("planned_width"), data.get("planned_epochs")
        return cls(cfg, None if width is None else WidthPlan(**width),
                   None if epochs is None else EpochPlan(**epochs), data.get("plan"))


def resolve_config(cfg: RunConfig, classes: ClassTable, train: list[LoadedPair],
                   val: list[LoadedPair], rows: int, device: torch.device, env: DistEnv, *,
                   show_progress: bool) -> ResolvedConfig:
    """The configuration in its final form, in one step: the data's channels and classes (an
    instance model's output channels: its target's),
    the width planned where ``cfg.model.width`` is None and the epoch length planned for a
    time budget without ``steps_per_epoch``. ``rows`` is this process's share of a batch;
    every process takes rank 0's plans."""
    outputs = classes.num_classes
    if cfg.train.task == "instance":
        from unetseg.data.instance_targets import output_channels

        outputs = output_channels(cfg.instance)
    cfg = replace(cfg, model=replace(cfg.model, in_channels=train[0].image.shape[0],
                                     num_classes=outputs))
    width_plan: WidthPlan | None = None
    if cfg.model.width is None and cfg.model.arch in PLANNED_WIDTH:
        width_plan = distributed.broadcast_object(
            plan_width(cfg, rows, patch_size_for(cfg), device), env)
        cfg = replace(cfg, model=replace(cfg.model, width=width_plan.width,
                                         top_width=width_plan.top_width))
        if show_progress:
            tqdm.write(f"planned {width_plan.reason}")
    epoch_plan: EpochPlan | None = None
    if cfg.train.time_limit_s is not None and cfg.train.steps_per_epoch is None:
        val_pixels = sum(p.ids.shape[0] * p.ids.shape[1] for p in val)
        epoch_plan = distributed.broadcast_object(
            plan_run_epochs(cfg, width_plan, train, val_pixels, rows, device), env)
        cfg = replace(cfg, train=replace(cfg.train, steps_per_epoch=epoch_plan.steps_per_epoch))
        if show_progress:
            tqdm.write(f"planned {epoch_plan.reason}")
    return ResolvedConfig(cfg, width_plan, epoch_plan)


def fit_schedule_to_budget(state: RunState, scheduler: torch.optim.lr_scheduler.LambdaLR,
                           cfg: TrainConfig, epoch: int, steps: int) -> None:
    """Re-plan the rest of the run (its epochs and the cosine schedule's length) after
    ``epoch`` so that it ends within ``cfg.time_limit_s``, from the mean times so far.

    The budget left after the whole epochs that fit goes to one shorter last epoch when it buys
    at least :data:`MIN_STEPS_PER_EPOCH` steps besides that epoch's validation; otherwise up to
    an epoch of the budget would stay unused (a quarter of it when validation limits a run to
    4 epochs).
    """
    assert cfg.time_limit_s is not None
    if state.last_epoch_steps is not None and epoch == state.epochs:
        return  # the shortened last epoch has run: the schedule has ended
    per_epoch = state.elapsed_s / epoch
    step_s = state.train_s / max(state.timed_steps, 1)
    overhead_s = max(0.0, per_epoch - step_s * steps)  # validation, per epoch (saving is not timed)
    left = max(0.0, cfg.time_limit_s - state.elapsed_s)
    whole = int(left // max(per_epoch, 1e-6))
    planned, last_steps = max(epoch, min(cfg.epochs, epoch + whole)), None
    extra = int((left - whole * per_epoch - overhead_s) // max(step_s, 1e-9))
    if planned == epoch + whole < cfg.epochs and extra >= MIN_STEPS_PER_EPOCH:
        planned, last_steps = planned + 1, min(extra, steps)
    if (planned, last_steps) != (state.epochs, state.last_epoch_steps):
        set_epochs(state, scheduler, planned, steps, last_steps)
        log.info("time budget %.0f s: planning %d epochs", cfg.time_limit_s, planned)


def set_epochs(state: RunState, scheduler: torch.optim.lr_scheduler.LambdaLR,
               epochs: int, steps: int, last_steps: int | None = None) -> None:
    """Make the run ``epochs`` long, the last of ``last_steps`` steps (None: ``steps``, like the
    others): the loop's end and the cosine schedule's length."""
    state.epochs, state.last_epoch_steps = epochs, last_steps
    scheduler.lr_lambdas[0].total_steps = state.total_steps(steps)  # type: ignore[attr-defined]
