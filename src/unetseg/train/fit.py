"""``fit``: data folder in, trained model files out. A short orchestrator over plain functions.

The configuration is resolved once (:func:`~unetseg.train.plan.resolve_config`), the planning is in
:mod:`unetseg.train.plan`, the loop state is a :class:`~unetseg.train.state.RunState` and
``config.json`` is :mod:`unetseg.train.manifest`'s.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from unetseg.config import RunConfig, TrainConfig, check_run_config, replace
from unetseg.data.augment import apply_params, sample_params
from unetseg.data.classes import IGNORE_INDEX, ClassTable
from unetseg.data.dataset import LoadedPair, PatchDataset, load_data, split_pairs
from unetseg.data.normalize import ChannelStats, channel_stats, normalize
from unetseg.data.report import Report
from unetseg.data.weights import attach_weight_maps
from unetseg.errors import UserError
from unetseg.files import output_folder, remove_stale_temps
from unetseg.infer.engine import ImagePredictor, resolve_device
from unetseg.infer.evaluate import score_images, total_confusion
from unetseg.losses import LossFn, build_loss
from unetseg.metrics import iou, mean_iou
from unetseg.model import arch_config, build_model
from unetseg.model.encoder_weights import load_encoder_weights
from unetseg.model.layout import fastest_memory_format
from unetseg.model.resnet import RESNET_LAYERS
from unetseg.modelfile import ModelCard, read_card
from unetseg.report.training import Example, training_report
from unetseg.train import distributed
from unetseg.train.checkpoint import load_training_state, read_loop_state
from unetseg.train.distributed import DistEnv
from unetseg.train.loop import Precision, keep_examples, train_one_epoch
from unetseg.train.manifest import run_manifest, write_manifest
from unetseg.train.optim import build_optimizer, build_scheduler
from unetseg.train.plan import (
    ResolvedConfig,
    fit_schedule_to_budget,
    patch_size_for,
    resolve_config,
    set_epochs,
    steps_per_epoch,
)
from unetseg.train.rundir import check_run_folder, save_epoch_files
from unetseg.train.state import RunState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedData:
    """Decoded training and validation pairs with the class table, the normalisation and
    what the data check found (for the run's report)."""

    classes: ClassTable
    train: list[LoadedPair]
    val: list[LoadedPair]
    stats: ChannelStats
    check: Report | None = None


@dataclass(frozen=True)
class FitResult:
    """The run folder, its model files, the metrics rows of every epoch and why it ended
    (``"epochs"``, ``"early_stopping"`` or ``"time_limit"``)."""

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
    return PreparedData(classes, train, val, channel_stats(p.image for p in train),
                        loaded.report)


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


def _validate(model: torch.nn.Module, data: PreparedData, cfg: RunConfig, env: DistEnv,
              examples: list[Example] | None = None) -> dict[str, Any]:
    """Validation scores; with several processes each counts every ``world_size``-th image and
    the confusion matrices are summed over the processes (the same counts as one process).
    ``examples`` is refilled with this process's first :data:`REPORT_EXAMPLES` images and
    their predictions, for the report."""
    if examples is not None:
        examples.clear()
    if not data.val:
        return {"val_mean_iou": None}
    distributed.broadcast_buffers(model, env)
    model.eval()
    predictor = ImagePredictor(model, data.stats, tile=cfg.train.val_tile, batch_size=2)
    truths = ((p.stem, p.image, torch.from_numpy(p.ids))
              for p in data.val[env.rank::env.world_size])
    k = data.classes.num_classes
    scores = keep_examples(score_images(predictor.logits, truths, k), data.val,
                           examples if examples is not None else [], REPORT_EXAMPLES)
    total = distributed.all_reduce_sum(total_confusion(scores, k), env)
    row: dict[str, Any] = {"val_mean_iou": float(mean_iou(total))}
    for name, value in zip(data.classes.names, iou(total).tolist()):
        row[f"val_iou/{name}"] = None if math.isnan(value) else value
    return row


REPORT_EXAMPLES = 3


def _score(row: dict[str, Any]) -> float:
    """Higher is better: validation mean IoU, or minus the training loss without validation."""
    return row["val_mean_iou"] if row["val_mean_iou"] is not None else -row["train_loss"]


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


def _check_class_weights(weights: tuple[float, ...] | None, classes: ClassTable) -> None:
    """Refuse ``--class-weights`` that do not give one weight per class of the data."""
    if weights is not None and len(weights) != classes.num_classes:
        raise UserError(f"--class-weights gives {len(weights)} weights for"
                        f" {classes.num_classes} classes ({', '.join(classes.names)});"
                        " give one weight per class")


@dataclass(frozen=True)
class _Run:
    """What stays fixed over the epochs of one run: its folder, configuration, data, training
    objects (``net`` is ``training.model`` wrapped for several processes), process group and
    the data loader of this process's share of each batch (``rows``)."""

    out: Path
    resolved: ResolvedConfig
    data: PreparedData
    training: Training
    card: ModelCard
    env: DistEnv
    device: torch.device
    rows: slice
    net: torch.nn.Module
    dataset: PatchDataset
    loader: DataLoader
    show_progress: bool
    examples: list[Example] = field(default_factory=list)  # the last validation's, refilled


def _set_up(data: str | Path, out: Path, cfg: RunConfig | None, resume_file: Path | None,
            show_progress: bool, loss_fn: LossFn | None) -> tuple[_Run, RunState]:
    """Resolve the configuration (a resumed run's is the stored one, with its plans), build
    the training objects, restore a resumed run's state and write ``config.json``."""
    if resume_file is not None:
        cfg = read_card(resume_file).run
    cfg = cfg or RunConfig()
    check_run_config(cfg)
    cfg = replace(cfg, model=arch_config(cfg.model))  # an unknown --arch fails here, at once
    if resume_file is None:
        _check_encoder_weights(cfg)
    env, device = distributed.init_distributed(resolve_device(cfg.train.device))
    if env.is_main:
        remove_stale_temps(out)  # left by a run killed mid-write
    rows = distributed.batch_shard(cfg.train.batch_size, env)  # this process's share
    show_progress = show_progress and env.is_main
    prepared = prepare_data(data, cfg, show_progress=show_progress)
    _check_class_weights(cfg.train.class_weights, prepared.classes)
    resolved = (resolve_config(cfg, prepared.classes, prepared.train, prepared.val,
                               rows.stop - rows.start, device, env, show_progress=show_progress)
                if resume_file is None
                else ResolvedConfig.from_json(cfg, read_loop_state(resume_file)))
    cfg = resolved.cfg
    if env.is_main:
        output_folder(out)
    t = build_training(cfg, prepared.train, device, loss_fn=loss_fn)
    if resume_file is None and cfg.train.encoder_weights:
        _load_encoder_weights(t.model, cfg.train.encoder_weights, show_progress)
    state = _start_state(resolved, t) if resume_file is None else _restore_state(resume_file, t)
    net = distributed.distribute(t.model, env, device, sync_batchnorm=cfg.train.sync_batchnorm)
    if env.is_main:
        write_manifest(out / "config.json", run_manifest(
            resolved, data, prepared.classes, prepared.stats, prepared.train, prepared.val,
            patch_size=t.patch, steps_per_epoch=t.steps, processes=env.world_size,
            device=device))
    dataset, loader = _data_loader(cfg, prepared, t, env, rows, device)
    card = ModelCard(cfg.model, prepared.classes, prepared.stats, cfg)
    return _Run(out, resolved, prepared, t, card, env, device, rows, net, dataset, loader,
                show_progress), state


def _check_encoder_weights(cfg: RunConfig) -> None:
    """Refuse ``--encoder-weights`` that cannot load, before the data is read."""
    path = cfg.train.encoder_weights
    if path is None:
        return
    if cfg.model.arch not in RESNET_LAYERS:
        raise UserError(f"--encoder-weights initialises a ResNet encoder, and --arch"
                        f" {cfg.model.arch} has none; use --arch resnet18, resnet34 or resnet50,"
                        " or drop --encoder-weights")
    if not Path(path).is_file():
        raise UserError(f"--encoder-weights {path}: file not found; give a ResNet state dict"
                        " (.safetensors or .pth)")


def _load_encoder_weights(model: torch.nn.Module, path: str, show_progress: bool) -> None:
    """Initialise the encoder from ``path`` and say what was loaded (a warning for keys the
    file lacked)."""
    result = load_encoder_weights(model, path)
    if result.missing:
        log.warning("%s", result.summary())
    else:
        log.info("%s", result.summary())
    if show_progress:
        tqdm.write(result.summary())


def _start_state(resolved: ResolvedConfig, t: Training) -> RunState:
    """A new run's state; with an epoch plan the first epoch already follows its schedule."""
    state = RunState(epochs=resolved.cfg.train.epochs)
    if resolved.epoch_plan is not None:
        set_epochs(state, t.scheduler, min(state.epochs, resolved.epoch_plan.epochs), t.steps)
    return state


def _restore_state(resume_file: Path, t: Training) -> RunState:
    """Load model, optimiser, RNG, schedule and scaler from ``resume_file``; return the loop
    state stored with them."""
    stored = load_training_state(resume_file, t.model, t.optimizer)
    t.scheduler.load_state_dict(stored["scheduler"])
    t.scaler.load_state_dict(stored["scaler"])
    return RunState.from_json(stored)


def _data_loader(cfg: RunConfig, data: PreparedData, t: Training, env: DistEnv, rows: slice,
                 device: torch.device) -> tuple[PatchDataset, DataLoader]:
    """The epoch's crops (``t.steps`` global batches) and the loader of this process's rows."""
    dataset = PatchDataset(data.train, t.patch, length=t.steps * cfg.train.batch_size,
                           foreground_fraction=cfg.data.foreground_fraction, seed=cfg.train.seed)
    workers = loader_workers(cfg.train, device)
    loader = DataLoader(dataset, batch_size=rows.stop - rows.start, shuffle=False,
                        sampler=distributed.shard_indices(len(dataset), cfg.train.batch_size, env),
                        drop_last=True, pin_memory=device.type == "cuda", num_workers=workers,
                        prefetch_factor=4 if workers else None)
    return dataset, loader


def _run_epoch(run: _Run, state: RunState) -> tuple[dict[str, Any], bool]:
    """Train and validate the next epoch, count its time against the budget, re-plan the rest
    of a budgeted run and record the epoch in ``state``; return the epoch's metrics row and
    whether it scored best so far."""
    cfg, t, env, epoch = run.resolved.cfg, run.training, run.env, state.epoch + 1
    started = time.perf_counter()
    run.dataset.set_epoch(epoch)
    torch.manual_seed(cfg.train.seed * 100_003 + epoch + 7_919 * env.rank)  # dropout
    stats = train_one_epoch(
        run.net, run.loader, prepare=_batch_preparer(cfg, run.data.stats, run.device, epoch,
                                                     run.rows),
        loss_fn=t.loss_fn, optimizer=t.optimizer, scheduler=t.scheduler, scaler=t.scaler,
        precision=t.precision, steps=state.steps_in(epoch, t.steps),
        description=f"epoch {epoch}/{state.epochs}", show_progress=run.show_progress)
    train_s = distributed.broadcast_object(stats.seconds, env)
    loss = distributed.all_reduce_mean(stats.loss, env)
    scores = _validate(t.model, run.data, cfg, env, run.examples)
    # rank 0's clock, so that every process plans the same number of epochs
    state.count_epoch(stats.steps, train_s,
                      distributed.broadcast_object(time.perf_counter() - started, env))
    if cfg.train.time_limit_s is not None:
        fit_schedule_to_budget(state, t.scheduler, cfg.train, epoch, t.steps)
    row = {"epoch": epoch, "step": state.optimizer_steps, "lr": t.scheduler.get_last_lr()[0],
           "train_loss": loss, **scores, "elapsed_s": round(state.elapsed_s, 2),
           "images_seen": state.optimizer_steps * cfg.train.batch_size}
    improved = state.record(row, _score(row))
    state.stopped = _stop_reason(state, cfg.train)
    return row, improved


def _save_epoch(run: _Run, state: RunState, row: dict[str, Any], improved: bool) -> None:
    """Write the epoch's files (:func:`~unetseg.train.rundir.save_epoch_files`)."""
    t = run.training

    def report() -> str:
        return training_report(run.out, state.history, run.data.check, run.examples,
                               run.data.classes)

    save_epoch_files(run.out, t.model, run.card, t.optimizer, state.history, row, improved, {
        **state.to_json(), **run.resolved.plans_json(),
        "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict()}, report)


def _stop_reason(state: RunState, cfg: TrainConfig) -> str | None:
    """Why the run ends after its last recorded epoch, or None when it goes on."""
    if cfg.early_stopping and state.bad_epochs >= cfg.early_stopping:
        return "early_stopping"
    if state.epoch < state.epochs:
        return None
    return "time_limit" if state.epoch < cfg.epochs else "epochs"


def fit(data: str | Path, out: str | Path, cfg: RunConfig | None = None, *,
        resume: bool = False, show_progress: bool = True,
        callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
        loss_fn: LossFn | None = None) -> FitResult:
    """Train a U-Net on ``data`` (``images/`` + ``masks/``) and write the run into ``out``.

    Writes ``best.safetensors`` and ``last.safetensors`` (model + JSON card),
    ``resume.safetensors`` (everything to continue), ``config.json``, ``metrics.csv``,
    ``curves.png`` and ``report.html`` (curves, plan, data check, validation examples; see
    :mod:`unetseg.report.training`), each rewritten every epoch. With ``resume=True`` the run
    continues from ``resume.safetensors`` with the configuration and plans stored there,
    exactly as if it had not stopped (under a time budget, see the README's "Crash
    safety"). Each callback is called with the epoch's metrics
    row after the epoch's files are written; an exception from it stops the run with
    everything up to that epoch saved. ``loss_fn`` replaces the loss that ``cfg.train.loss``
    names (to compare with another library's loss; it is not stored, so ``resume`` must be
    given it again).

    ``cfg.model.width`` None (the default) is planned from the time budget and the device
    (:func:`unetseg.train.plan.plan_width`) and stored, planned, in the model files.

    Launched as several processes (``torchrun``, ``unetseg train --nproc N``; see
    :mod:`unetseg.train.distributed`) it trains data-parallel: each process takes its share of
    every global batch of ``batch_size``, only rank 0 writes files and shows progress, the
    logged loss is the mean over processes, and callbacks run on every process with the same row.
    """
    out = Path(out)
    resume_file = check_run_folder(out, resume)
    run, state = _set_up(data, out, cfg, resume_file, show_progress, loss_fn)
    while state.stopped is None and state.epoch < state.epochs:
        row, improved = _run_epoch(run, state)
        if run.env.is_main:
            _save_epoch(run, state, row, improved)
            _report(row, improved, state.epochs, run.show_progress)
        distributed.barrier(run.env)  # the epoch's files are whole before any process goes on
        for callback in callbacks:
            callback(row)
    return FitResult(out, out / "best.safetensors", out / "last.safetensors", state.history,
                     state.stopped or "epochs")


def _report(row: dict[str, Any], improved: bool, epochs: int, show: bool) -> None:
    val = row["val_mean_iou"]
    text = (f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}"
            + (f"  val mIoU {val:.4f}" if val is not None else "")
            + ("  (best)" if improved else "") + f"  [{row['elapsed_s']:.0f} s]")
    if show:
        tqdm.write(text)
    log.info(text)
