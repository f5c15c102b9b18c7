"""``fit``: data folder in, trained model files out. A short orchestrator over plain functions."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from unetseg.config import RunConfig, TrainConfig, check_run_config, to_dict
from unetseg.data.augment import apply_params, sample_params
from unetseg.data.classes import IGNORE_INDEX, ClassTable
from unetseg.data.dataset import LoadedPair, PatchDataset, load_data, split_pairs
from unetseg.data.normalize import ChannelStats, channel_stats, normalize
from unetseg.data.weights import attach_weight_maps
from unetseg.errors import UserError
from unetseg.files import output_folder, remove_stale_temps, write_csv_atomic, write_text_atomic
from unetseg.infer.engine import ImagePredictor, resolve_device
from unetseg.infer.evaluate import score_images, total_confusion
from unetseg.losses import LossFn, build_loss
from unetseg.metrics import iou, mean_iou
from unetseg.model import build_model, nearest_legal_input_size
from unetseg.model.layout import fastest_memory_format
from unetseg.modelfile import ModelCard, read_card, save_model
from unetseg.train import distributed
from unetseg.train.checkpoint import load_training_state, save_training_state
from unetseg.train.distributed import DistEnv
from unetseg.train.loop import Precision, train_one_epoch
from unetseg.train.optim import build_optimizer, build_scheduler
from unetseg.train.plan import (
    MIN_STEPS_PER_EPOCH,
    EpochPlan,
    WidthPlan,
    estimate_validation_s,
    plan_epochs,
    plan_width,
    time_train_step,
)
from unetseg.viz import plot_curves

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedData:
    """Decoded training and validation pairs with the class table and normalisation."""

    classes: ClassTable
    train: list[LoadedPair]
    val: list[LoadedPair]
    stats: ChannelStats


@dataclass(frozen=True)
class FitResult:
    run_dir: Path
    best_model: Path
    last_model: Path
    history: list[dict[str, Any]]
    stopped: str


def prepare_data(root: str | Path, cfg: RunConfig, *, show_progress: bool = True) -> PreparedData:
    """Pair, check and decode the data; split it by seed; compute the training normalisation.

    The checks are ``unetseg check``'s (:func:`unetseg.data.dataset.load_data`): any error ends
    the run with one line, warnings are logged.
    """
    d = cfg.data
    loaded = load_data(root, d, progress=show_progress)
    classes = loaded.classes
    train, val = split_pairs(loaded.pairs, d.val_fraction, cfg.train.seed)
    if cfg.train.loss == "weighted-ce":  # the paper's border weight map, once per mask
        attach_weight_maps(train, classes, d, progress=show_progress)
    return PreparedData(classes, train, val, channel_stats(p.image for p in train))


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


def _plan_epochs(cfg: RunConfig, width_plan: WidthPlan | None, data: PreparedData, rows: int,
                 device: torch.device) -> EpochPlan:
    """The epoch length for ``cfg.train.time_limit_s`` (:func:`plan_epochs`), from the width
    probe's step time when the width was planned, else from a timed step of the model."""
    assert cfg.train.time_limit_s is not None
    patch = patch_size_for(cfg)
    if width_plan is not None and not math.isnan(width_plan.probe_step_s):
        step_s = width_plan.probe_step_s * (width_plan.width / width_plan.probe_width) ** 2
    else:
        step_s = time_train_step(cfg, rows, patch, device)
    val_pixels = sum(p.ids.shape[0] * p.ids.shape[1] for p in data.val)
    return plan_epochs(cfg.train.time_limit_s, step_s, steps_per_epoch(cfg, data.train, patch),
                       estimate_validation_s(step_s, rows, patch, val_pixels))


def loader_workers(cfg: TrainConfig, device: torch.device) -> int:
    """DataLoader processes: as configured, else none on a CPU and up to 4 beside a GPU (half
    the cores, the rest feed the GPU). Workers are started afresh each epoch, so each copies the
    dataset with that epoch's seed."""
    if cfg.workers is not None:
        return cfg.workers
    return min(4, (os.cpu_count() or 2) // 2) if device.type == "cuda" else 0


def _batch_preparer(cfg: RunConfig, stats: ChannelStats, device: torch.device, epoch: int,
                    rows: slice = slice(None)
                    ) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Move, augment and normalise a batch. The augmentation of the whole global batch is drawn
    every step and this process applies its ``rows``, so each sample is augmented the same
    whatever the number of processes. Loss weights, when the batch has them, are warped with
    the masks and returned third."""
    generator = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)

    def prepare(images: torch.Tensor, masks: torch.Tensor,
                weights: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        if weights is not None:
            weights = weights.to(device, non_blocking=True)
        params = sample_params(cfg.train.batch_size, cfg.augment, generator,
                               height=images.shape[-2], width=images.shape[-1])
        augmented = apply_params(images, masks, params.rows(rows), weights=weights,
                                 image_mode=cfg.augment.image_interpolation)
        return (normalize(augmented[0], stats), *augmented[1:])

    return prepare


def _validate(model: torch.nn.Module, data: PreparedData, cfg: RunConfig, env: DistEnv
              ) -> dict[str, Any]:
    """Validation scores; with several processes each counts every ``world_size``-th image and
    the confusion matrices are summed over the processes (the same counts as one process)."""
    if not data.val:
        return {"val_mean_iou": None}
    distributed.broadcast_buffers(model, env)
    model.eval()
    predictor = ImagePredictor(model, data.stats, tile=cfg.train.val_tile, batch_size=2)
    truths = ((p.stem, p.image, torch.from_numpy(p.ids))
              for p in data.val[env.rank::env.world_size])
    k = data.classes.num_classes
    total = distributed.all_reduce_sum(
        total_confusion(score_images(predictor.logits, truths, k), k), env)
    row: dict[str, Any] = {"val_mean_iou": float(mean_iou(total))}
    for name, value in zip(data.classes.names, iou(total).tolist()):
        row[f"val_iou/{name}"] = None if math.isnan(value) else value
    return row


def _score(row: dict[str, Any]) -> float:
    """Higher is better: validation mean IoU, or minus the training loss without validation."""
    return row["val_mean_iou"] if row["val_mean_iou"] is not None else -row["train_loss"]


def _check_run_folder(out: Path, resume: bool) -> Path | None:
    """Refuse an unusable run folder before any work; return the resume file, if resuming."""
    state = out / "resume.safetensors"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another --out")
    if resume:
        if not state.is_file():
            raise UserError(f"{out}: nothing to resume (no resume.safetensors); drop --resume")
        return state
    if state.exists():
        raise UserError(f"{out}: holds a run already; pass --resume to continue it or choose"
                        " another --out")
    return None


@dataclass
class Training:
    """The objects one training run updates step by step."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    precision: Precision
    loss_fn: Callable[..., torch.Tensor]
    patch: int
    steps: int


def build_training(cfg: RunConfig, train: list[LoadedPair], device: torch.device, *,
                   loss_fn: LossFn | None = None) -> Training:
    """Model, optimiser, schedule, precision and loss (``loss_fn``, else the one
    ``cfg.train.loss`` names) for ``cfg``, seeded."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    model.to(memory_format=fastest_memory_format(model, device))  # type: ignore[call-overload]
    patch = patch_size_for(cfg)
    steps = steps_per_epoch(cfg, train, patch)
    optimizer = build_optimizer(cfg.train, model.parameters())
    precision = Precision.for_device(device, cfg.train.amp)
    weights = (torch.tensor(cfg.train.class_weights, device=device)
               if cfg.train.class_weights else None)
    return Training(
        model=model, optimizer=optimizer,
        scheduler=build_scheduler(cfg.train, optimizer, steps_per_epoch=steps),
        scaler=torch.amp.GradScaler(device.type, enabled=precision.scale_gradients),
        precision=precision,
        loss_fn=loss_fn or build_loss(cfg.train.loss, class_weights=weights,
                                      ignore_index=IGNORE_INDEX),
        patch=patch, steps=steps)


def _save_epoch(out: Path, t: Training, card: ModelCard, state: dict[str, Any],
                row: dict[str, Any], improved: bool) -> None:
    """Write the epoch's model files, metrics table, curves and resume state (each atomic).

    ``resume.safetensors`` is written last: it is the commit point. A run killed before it is
    replaced redoes the epoch from the previous state and rewrites the other files with the
    same contents; killed after it, every file of the epoch is already complete.
    """
    if improved:
        save_model(out / "best.safetensors", t.model, replace(card, info=row))
    save_model(out / "last.safetensors", t.model, replace(card, info={"epoch": row["epoch"]}))
    write_csv_atomic(out / "metrics.csv", state["history"])
    plot_curves(state["history"], out / "curves.png")
    save_training_state(out / "resume.safetensors", t.model, card, t.optimizer, {
        **state, "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict()})


def fit(data: str | Path, out: str | Path, cfg: RunConfig | None = None, *,
        resume: bool = False, show_progress: bool = True,
        callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
        loss_fn: LossFn | None = None) -> FitResult:
    """Train a U-Net on ``data`` (``images/`` + ``masks/``) and write the run into ``out``.

    Writes ``best.safetensors`` and ``last.safetensors`` (model + JSON card),
    ``resume.safetensors`` (everything to continue), ``config.json``, ``metrics.csv`` and
    ``curves.png``. With ``resume=True`` the run continues from ``resume.safetensors`` with the
    configuration stored there, exactly as if it had not stopped. Each callback is called with
    the epoch's metrics row after the epoch's files are written; an exception from it stops
    the run with everything up to that epoch saved. ``loss_fn`` replaces the loss that
    ``cfg.train.loss`` names (to compare with another library's loss; it is not stored, so
    ``resume`` must be given it again).

    ``cfg.model.width`` None (the default) is planned from the time budget and the device
    (:func:`unetseg.train.plan.plan_width`) and stored, planned, in the model files.

    Launched as several processes (``torchrun``, ``unetseg train --nproc N``; see
    :mod:`unetseg.train.distributed`) it trains data-parallel: each process takes its share of
    every global batch of ``batch_size``, only rank 0 writes files and shows progress, the
    logged loss is the mean over processes, and callbacks run on every process with the same row.
    """
    out = Path(out)
    resume_file = _check_run_folder(out, resume)
    if resume_file is not None:
        cfg = read_card(resume_file).run
    cfg = cfg or RunConfig()
    check_run_config(cfg)
    env, device = distributed.init_distributed(resolve_device(cfg.train.device))
    if env.is_main:
        remove_stale_temps(out)  # left by a run killed mid-write
    rows = distributed.batch_shard(cfg.train.batch_size, env)  # this process's share
    show_progress = show_progress and env.is_main
    data_ = prepare_data(data, cfg, show_progress=show_progress)
    cfg = replace(cfg, model=replace(cfg.model, in_channels=data_.train[0].image.shape[0],
                                     num_classes=data_.classes.num_classes))
    plan: WidthPlan | None = None
    if cfg.model.width is None and cfg.model.arch == "unet":
        plan = distributed.broadcast_object(
            plan_width(cfg, rows.stop - rows.start, patch_size_for(cfg), device), env)
        cfg = replace(cfg, model=replace(cfg.model, width=plan.width, top_width=plan.top_width))
        if show_progress:
            tqdm.write(f"planned {plan.reason}")
    epoch_plan: EpochPlan | None = None
    if cfg.train.time_limit_s is not None and cfg.train.steps_per_epoch is None:
        epoch_plan = distributed.broadcast_object(
            _plan_epochs(cfg, plan, data_, rows.stop - rows.start, device), env)
        cfg = replace(cfg, train=replace(cfg.train, steps_per_epoch=epoch_plan.steps_per_epoch))
        if show_progress:
            tqdm.write(f"planned {epoch_plan.reason}")
    card = ModelCard(cfg.model, data_.classes, data_.stats, cfg)
    weights = cfg.train.class_weights
    if weights is not None and len(weights) != data_.classes.num_classes:
        raise UserError(f"--class-weights gives {len(weights)} weights for"
                        f" {data_.classes.num_classes} classes ({', '.join(data_.classes.names)});"
                        " give one weight per class")
    if env.is_main:
        output_folder(out)
    t = build_training(cfg, data_.train, device, loss_fn=loss_fn)
    state: dict[str, Any] = {"epoch": 0, "epochs": cfg.train.epochs, "history": [],
                             "best_score": -math.inf, "bad_epochs": 0, "elapsed_s": 0.0}
    if epoch_plan is not None:  # the first epoch already follows the planned schedule
        _set_epochs(state, t.scheduler, min(cfg.train.epochs, epoch_plan.epochs), t.steps)
    if resume_file is not None:
        state = load_training_state(resume_file, t.model, t.optimizer)
        t.scheduler.load_state_dict(state.pop("scheduler"))
        t.scaler.load_state_dict(state.pop("scaler"))
    net = distributed.distribute(t.model, env, device, sync_batchnorm=cfg.train.sync_batchnorm)
    if env.is_main:
        write_text_atomic(out / "config.json", json.dumps({
            "run": to_dict(cfg), "classes": data_.classes.to_dict(),
            "stats": data_.stats.to_dict(), "data": str(Path(data).resolve()),
            "patch_size": t.patch, "steps_per_epoch": t.steps, "processes": env.world_size,
            "train_stems": [p.stem for p in data_.train], "val_stems": [p.stem for p in data_.val],
            "planned_width": None if plan is None else {
                "width": plan.width, "top_width": cfg.model.top_width, "reason": plan.reason,
                "probe_width": plan.probe_width,
                "probe_step_s": plan.probe_step_s},
            "planned_epochs": None if epoch_plan is None else {
                "steps_per_epoch": epoch_plan.steps_per_epoch, "epochs": epoch_plan.epochs,
                "reason": epoch_plan.reason},
        }, indent=2))
    dataset = PatchDataset(data_.train, t.patch, length=t.steps * cfg.train.batch_size,
                           foreground_fraction=cfg.data.foreground_fraction, seed=cfg.train.seed)
    workers = loader_workers(cfg.train, device)
    loader = DataLoader(dataset, batch_size=rows.stop - rows.start, shuffle=False,
                        sampler=distributed.shard_indices(len(dataset), cfg.train.batch_size, env),
                        drop_last=True, pin_memory=device.type == "cuda", num_workers=workers,
                        prefetch_factor=4 if workers else None)
    stopped, epoch = "epochs", state["epoch"] + 1
    while epoch <= state["epochs"]:
        started = time.perf_counter()
        dataset.set_epoch(epoch)
        torch.manual_seed(cfg.train.seed * 100_003 + epoch + 7_919 * env.rank)  # dropout
        stats = train_one_epoch(
            net, loader, prepare=_batch_preparer(cfg, data_.stats, device, epoch, rows),
            loss_fn=t.loss_fn, optimizer=t.optimizer, scheduler=t.scheduler, scaler=t.scaler,
            precision=t.precision, steps=_epoch_steps(state, epoch, t.steps),
            description=f"epoch {epoch}/{state['epochs']}", show_progress=show_progress)
        state["optimizer_steps"] = state.get("optimizer_steps", 0) + stats.steps  # counted
        # step time from the steps timed in this run (a resumed older run has no "train_s")
        state["train_s"] = state.get("train_s", 0.0) + distributed.broadcast_object(
            stats.seconds, env)
        state["timed_steps"] = state.get("timed_steps", 0) + stats.steps
        row = {"epoch": epoch, "step": state["optimizer_steps"], "lr": t.scheduler.get_last_lr()[0],
               "train_loss": distributed.all_reduce_mean(stats.loss, env),
               **_validate(t.model, data_, cfg, env)}
        # rank 0's clock, so that every process plans the same number of epochs
        state["elapsed_s"] += distributed.broadcast_object(time.perf_counter() - started, env)
        if cfg.train.time_limit_s is not None:
            _fit_schedule_to_budget(state, t.scheduler, cfg.train, epoch, t.steps)
        row.update(elapsed_s=round(state["elapsed_s"], 2),
                   images_seen=state["optimizer_steps"] * cfg.train.batch_size)
        state["history"].append(row)
        improved = _score(row) > state["best_score"]
        state["bad_epochs"] = 0 if improved else state["bad_epochs"] + 1
        state["best_score"] = max(state["best_score"], _score(row))
        state["epoch"] = epoch
        if env.is_main:
            _save_epoch(out, t, card, state, row, improved)
            _report(row, improved, state["epochs"], show_progress)
        distributed.barrier(env)  # the epoch's files are whole before any process goes on
        for callback in callbacks:
            callback(row)
        if cfg.train.early_stopping and state["bad_epochs"] >= cfg.train.early_stopping:
            stopped = "early_stopping"
            break
        if epoch == state["epochs"] and epoch < cfg.train.epochs:
            stopped = "time_limit"
        epoch += 1
    return FitResult(out, out / "best.safetensors", out / "last.safetensors",
                     state["history"], stopped)


def _fit_schedule_to_budget(state: dict[str, Any], scheduler: torch.optim.lr_scheduler.LambdaLR,
                            cfg: TrainConfig, epoch: int, steps: int) -> None:
    """Re-plan the rest of the run (its epochs and the cosine schedule's length) after each
    epoch so that it ends within ``cfg.time_limit_s``, from the mean times so far.

    The budget left after the whole epochs that fit goes to one shorter last epoch when it buys
    at least :data:`~unetseg.train.plan.MIN_STEPS_PER_EPOCH` steps besides that epoch's
    validation; otherwise up to an epoch of the budget would stay unused (a quarter of it when
    validation limits a run to 4 epochs).
    """
    assert cfg.time_limit_s is not None
    if state.get("last_epoch_steps") is not None and epoch == state["epochs"]:
        return  # the shortened last epoch has run: the schedule has ended
    per_epoch = state["elapsed_s"] / epoch
    step_s = state["train_s"] / max(state["timed_steps"], 1)
    overhead_s = max(0.0, per_epoch - step_s * steps)  # validation and saving, per epoch
    left = max(0.0, cfg.time_limit_s - state["elapsed_s"])
    whole = int(left // max(per_epoch, 1e-6))
    planned, last_steps = max(epoch, min(cfg.epochs, epoch + whole)), None
    extra = int((left - whole * per_epoch - overhead_s) // max(step_s, 1e-9))
    if planned == epoch + whole < cfg.epochs and extra >= MIN_STEPS_PER_EPOCH:
        planned, last_steps = planned + 1, min(extra, steps)
    if (planned, last_steps) != (state["epochs"], state.get("last_epoch_steps")):
        _set_epochs(state, scheduler, planned, steps, last_steps)
        log.info("time budget %.0f s: planning %d epochs", cfg.time_limit_s, planned)


def _set_epochs(state: dict[str, Any], scheduler: torch.optim.lr_scheduler.LambdaLR,
                epochs: int, steps: int, last_steps: int | None = None) -> None:
    """Make the run ``epochs`` long, the last of ``last_steps`` steps (None: ``steps``, like the
    others): the loop's end and the cosine schedule's length."""
    state["epochs"], state["last_epoch_steps"] = epochs, last_steps
    total = (epochs - 1) * steps + (steps if last_steps is None else last_steps)
    scheduler.lr_lambdas[0].total_steps = total  # type: ignore[attr-defined]


def _epoch_steps(state: dict[str, Any], epoch: int, steps: int) -> int:
    """Optimiser steps of ``epoch``: ``steps``, or fewer in a shortened last epoch."""
    last = state.get("last_epoch_steps")
    return last if last is not None and epoch == state["epochs"] else steps


def _report(row: dict[str, Any], improved: bool, epochs: int, show: bool) -> None:
    val = row["val_mean_iou"]
    text = (f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}"
            + (f"  val mIoU {val:.4f}" if val is not None else "")
            + ("  (best)" if improved else "") + f"  [{row['elapsed_s']:.0f} s]")
    if show:
        tqdm.write(text)
    log.info(text)
