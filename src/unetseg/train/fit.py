"""``fit``: data folder in, trained model files out. A short orchestrator over plain functions.

The configuration is resolved once (:func:`~unetseg.train.plan.resolve_config`), the planning is in
:mod:`unetseg.train.plan`, the loop state is a :class:`~unetseg.train.state.RunState` and
``config.json`` is :mod:`unetseg.train.manifest`'s.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from unetseg.config import RunConfig, TrainConfig, check_run_config, replace
from unetseg.data.augment import apply_params, sample_params
from unetseg.data.classes import IGNORE_INDEX, ClassTable
from unetseg.data.dataset import LoadedData, LoadedPair, PatchDataset, load_data, split_pairs
from unetseg.data.folds import split_by_stems
from unetseg.data.instance_targets import (
    attach_instances,
    batch_targets,
    target_class_names,
    target_ids,
)
from unetseg.data.normalize import ChannelStats, dataset_stats, normalize, training_view
from unetseg.data.report import Report
from unetseg.data.weights import attach_weight_maps
from unetseg.errors import UserError
from unetseg.files import output_folder, remove_stale_temps, write_text_atomic
from unetseg.infer.engine import ImagePredictor, resolve_device
from unetseg.infer.evaluate import score_images, total_confusion
from unetseg.infer.instances import (
    TUNE_MAX_PIXELS,
    InstanceMaps,
    choose_postprocess,
    instance_maps,
    instances_from_logits,
)
from unetseg.infer.predict import logits_to_labels
from unetseg.losses import LossFn, build_instance_loss, build_loss
from unetseg.metrics import confusion_matrix, iou, mean_iou
from unetseg.model import arch_config, build_model
from unetseg.model.encoder_weights import load_encoder_weights
from unetseg.model.layout import fastest_memory_format
from unetseg.model.resnet import RESNET_LAYERS
from unetseg.modelfile import ModelCard, load_model, read_card, save_model
from unetseg.report.training import Example, training_report
from unetseg.train import distributed
from unetseg.train.autoplan import (
    LABELS,
    Plan,
    apply_plan,
    complete_plan,
    fixed_fields,
    plan_from_fingerprint,
    read_plan,
)
from unetseg.train.checkpoint import load_training_state, read_loop_state
from unetseg.train.crossval import CrossValidation, cross_validate
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

PlanSource = str | Path | Plan
"""What ``fit``'s ``plan`` takes: ``"auto"``, a ``plan.json`` path, or a :class:`Plan`."""


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


def prepare_data(root: str | Path, cfg: RunConfig, *, show_progress: bool = True,
                 loaded: LoadedData | None = None) -> PreparedData:
    """Pair, check and decode the data (unless ``loaded`` already holds it); split it by seed
    (or hold out ``cfg.data.val_stems``); compute the training normalisation of
    ``cfg.data.normalization``.

    The checks are ``unetseg check``'s (:func:`unetseg.data.dataset.load_data`): any error ends
    the run with one line, warnings are logged. The training images are kept as training
    crops them (:func:`~unetseg.data.normalize.training_view`); validation images as read.
    """
    d = cfg.data
    loaded = loaded or load_data(root, d, progress=show_progress)
    classes = loaded.classes
    train, val = (split_pairs(loaded.pairs, d.val_fraction, cfg.train.seed)
                  if d.val_stems is None else split_by_stems(loaded.pairs, d.val_stems))
    if cfg.train.task == "instance":  # targets (and weights) derived after augmentation
        attach_instances([*train, *val], classes, d)
    elif cfg.train.loss == "weighted-ce":  # the paper's border weight map, once per mask
        attach_weight_maps(train, classes, d, progress=show_progress)
    stats = dataset_stats([p.image for p in train], d.normalization, seed=cfg.train.seed)
    if stats.scheme != "dataset":
        train = [dataclasses.replace(p, image=training_view(p.image, stats)) for p in train]
    return PreparedData(classes, train, val, stats, loaded.report)


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
    the masks and returned third. For the instance task the batch's third tensor holds the
    instance labels: they are warped in place of the masks and the targets derived from them
    (:func:`~unetseg.data.instance_targets.batch_targets`)."""
    generator = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
    batch_stats = stats.training()  # the images are already in their training view
    if cfg.train.task == "instance":
        return _instance_batch_preparer(cfg, batch_stats, device, generator, rows)

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
        return (normalize(augmented[0], batch_stats), *augmented[1:])

    return prepare


def _instance_batch_preparer(cfg: RunConfig, stats: ChannelStats, device: torch.device,
                             generator: torch.Generator, rows: slice
                             ) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Warp the instance labels (ignored pixels -1) with the images, nearest, in one
    resampling, then derive the targets from the warped labels."""

    def prepare(images: torch.Tensor, masks: torch.Tensor,
                instances: torch.Tensor) -> tuple[torch.Tensor, ...]:
        images = images.to(device, non_blocking=True)
        labels = instances.to(device, non_blocking=True)  # ignored pixels are -1 already
        params = sample_params(cfg.train.batch_size, cfg.augment, generator,
                               height=images.shape[-2], width=images.shape[-1])
        images, labels = apply_params(images, labels, params.rows(rows),
                                      image_mode=cfg.augment.image_interpolation)[:2]
        targets = batch_targets(labels, cfg.instance, weighted=cfg.train.loss == "weighted-ce",
                                w0=cfg.data.weight_w0, sigma=cfg.data.weight_sigma)
        return (normalize(images, stats), *targets)

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
    if cfg.train.task == "instance":
        return _validate_instances(predictor, data, cfg, env, examples)
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


def _validate_instances(predictor: ImagePredictor, data: PreparedData, cfg: RunConfig,
                        env: DistEnv, examples: list[Example] | None) -> dict[str, Any]:
    """Validation of an instance model: the mean IoU of its target classes (the targets of the
    unwarped validation labels) and the mean 2018 Data Science Bowl score of its objects with
    the configured post-processing, pooled over the processes."""
    from unetseg.metrics_instance import instance_scores

    names = target_class_names(cfg.instance)
    k = len(names)
    total = torch.zeros(k, k, dtype=torch.int64)
    dsb = torch.zeros(2, dtype=torch.float64)  # sum of the images' scores, images
    for pair in data.val[env.rank::env.world_size]:
        assert pair.instances is not None
        logits = predictor.logits(pair.image)
        truth = target_ids(pair.instances, cfg.instance)
        labels = logits_to_labels(logits[:k])
        total += confusion_matrix(labels, torch.from_numpy(truth), k)
        objects = instances_from_logits(logits, cfg.instance)
        ignored = pair.instances < 0
        objects[ignored] = 0
        dsb += torch.tensor([instance_scores(np.maximum(pair.instances, 0), objects).dsb_score,
                             1.0], dtype=torch.float64)
        if examples is not None and len(examples) < REPORT_EXAMPLES:
            examples.append((pair.stem, pair.image, truth, labels.numpy()))
    total = distributed.all_reduce_sum(total, env)
    dsb = distributed.all_reduce_sum(dsb, env)
    row: dict[str, Any] = {"val_mean_iou": float(mean_iou(total))}
    for name, value in zip(names, iou(total).tolist()):
        row[f"val_iou/{name}"] = None if math.isnan(value) else value
    row["val_dsb_score"] = float(dsb[0] / dsb[1]) if dsb[1] > 0 else None
    return row


REPORT_EXAMPLES = 3


def _score(row: dict[str, Any]) -> float:
    """Higher is better: the validation DSB score of an instance model, else the validation
    mean IoU, or minus the training loss without validation."""
    if row.get("val_dsb_score") is not None:
        return row["val_dsb_score"]
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
    if loss_fn is None and cfg.train.task == "instance":
        loss_fn = build_instance_loss(cfg.train.loss, cfg.instance.target, class_weights=weights,
                                      distance_weight=cfg.instance.distance_weight)
    return Training(
        model=model, optimizer=optimizer,
        scheduler=build_scheduler(cfg.train, optimizer, steps_per_epoch=steps),
        scaler=torch.amp.GradScaler(device.type, enabled=precision.scale_gradients),
        precision=precision,
        loss_fn=loss_fn or build_loss(cfg.train.loss, class_weights=weights,
                                      ignore_index=IGNORE_INDEX),
        patch=patch, steps=steps)


def _check_class_weights(weights: tuple[float, ...] | None, classes: ClassTable,
                         cfg: RunConfig) -> None:
    """Refuse ``--class-weights`` that do not give one weight per class of the data (of the
    target, for the instance task)."""
    names = (target_class_names(cfg.instance) if cfg.train.task == "instance"
             else classes.names)
    if weights is not None and len(weights) != len(names):
        raise UserError(f"--class-weights gives {len(weights)} weights for"
                        f" {len(names)} classes ({', '.join(names)});"
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


def _plan(data: str | Path, cfg: RunConfig, plan: PlanSource, fixed: Collection[str],
          device: torch.device, env: DistEnv, show_progress: bool
          ) -> tuple[RunConfig, Plan, LoadedData | None]:
    """``cfg`` with the plan applied around the fields the user fixed, the plan, and the data
    when planning read it (with its fingerprint) to plan from."""
    fixed = fixed_fields(cfg, fixed)
    loaded = None
    if isinstance(plan, Plan):
        chosen = plan
    elif str(plan) != "auto":
        chosen = read_plan(plan)
    else:
        loaded = load_data(data, cfg.data, progress=show_progress, fingerprint=True)
        assert loaded.fingerprint is not None
        chosen = distributed.broadcast_object(plan_from_fingerprint(
            loaded.fingerprint, cfg, device, fixed=fixed, processes=env.world_size), env)
    cfg, chosen = apply_plan(cfg, chosen, fixed)
    if show_progress:
        tqdm.write("planned " + "; ".join(f"{LABELS[k]} {c.value}"
                                          for k, c in chosen.choices.items()))
    return cfg, chosen, loaded


def _set_up(data: str | Path, out: Path, cfg: RunConfig | None, resume_file: Path | None,
            show_progress: bool, loss_fn: LossFn | None, plan: PlanSource | None = None,
            fixed: Collection[str] = ()) -> tuple[_Run, RunState]:
    """Plan and resolve the configuration (a resumed run's is the stored one, with its
    plans), build the training objects, restore a resumed run's state and write
    ``config.json`` (and a planned run's ``plan.json`` and ``fingerprint.json``)."""
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
    show_progress = show_progress and env.is_main
    planned, loaded = None, None
    if resume_file is None and plan is not None:
        cfg, planned, loaded = _plan(data, cfg, plan, fixed, device, env, show_progress)
    rows = distributed.batch_shard(cfg.train.batch_size, env)  # this process's share
    prepared = prepare_data(data, cfg, show_progress=show_progress, loaded=loaded)
    _check_class_weights(cfg.train.class_weights, prepared.classes, cfg)
    resolved = (resolve_config(cfg, prepared.classes, prepared.train, prepared.val,
                               rows.stop - rows.start, device, env, show_progress=show_progress)
                if resume_file is None
                else ResolvedConfig.from_json(cfg, read_loop_state(resume_file)))
    if planned is not None:
        planned = complete_plan(planned, resolved.cfg, resolved.width_plan,
                                resolved.epoch_plan,
                                steps_per_epoch(resolved.cfg, prepared.train,
                                                patch_size_for(resolved.cfg)))
        resolved = dataclasses.replace(resolved, plan=planned.to_dict())
    cfg = resolved.cfg
    if env.is_main:
        output_folder(out)
        if planned is not None:
            write_text_atomic(out / "plan.json", json.dumps(planned.to_dict(), indent=2))
        if loaded is not None and loaded.fingerprint is not None:
            write_text_atomic(out / "fingerprint.json",
                              json.dumps(loaded.fingerprint.to_dict(), indent=2))
    t = build_training(cfg, prepared.train, device, loss_fn=loss_fn)
    if resume_file is None and cfg.train.encoder_weights:
        _load_encoder_weights(t.model, cfg.train.encoder_weights, show_progress)
    state = (start_state(resolved, t.scheduler, t.steps) if resume_file is None
             else restore_state(resume_file, t.model, t.optimizer, t.scheduler, t.scaler))
    net = distributed.distribute(t.model, env, device, sync_batchnorm=cfg.train.sync_batchnorm)
    if env.is_main:
        write_manifest(out / "config.json", run_manifest(
            resolved, data, prepared.classes, prepared.stats, prepared.train, prepared.val,
            patch_size=t.patch, steps_per_epoch=t.steps, processes=env.world_size,
            device=device))
    dataset, loader = _data_loader(cfg, prepared, t, env, rows, device)
    card = ModelCard(cfg.model, prepared.classes, prepared.stats, cfg,
                     instance=cfg.instance if cfg.train.task == "instance" else None)
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


def start_state(resolved: ResolvedConfig, scheduler: torch.optim.lr_scheduler.LambdaLR,
                steps: int) -> RunState:
    """A new run's state for epochs of ``steps`` optimiser steps; with an epoch plan the first
    epoch already follows its schedule."""
    state = RunState(epochs=resolved.cfg.train.epochs)
    if resolved.epoch_plan is not None:
        set_epochs(state, scheduler, min(state.epochs, resolved.epoch_plan.epochs), steps)
    return state


def restore_state(resume_file: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  scheduler: torch.optim.lr_scheduler.LambdaLR, scaler: torch.amp.GradScaler
                  ) -> RunState:
    """Load model, optimiser, RNG, schedule and scaler from ``resume_file``; return the loop
    state stored with them."""
    stored = load_training_state(resume_file, model, optimizer)
    scheduler.load_state_dict(stored["scheduler"])
    scaler.load_state_dict(stored["scaler"])
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
    state.stopped = stop_reason(state, cfg.train)
    return row, improved


def _save_epoch(run: _Run, state: RunState, row: dict[str, Any], improved: bool) -> None:
    """Write the epoch's files (:func:`~unetseg.train.rundir.save_epoch_files`)."""
    t = run.training

    def report() -> str:
        return training_report(run.out, state.history, run.data.check, run.examples,
                               _shown_classes(run))

    save_epoch_files(run.out, t.model, run.card, t.optimizer, state.history, row, improved, {
        **state.to_json(), **run.resolved.plans_json(),
        "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict()}, report)


def _shown_classes(run: _Run) -> ClassTable:
    """The classes the validation examples show: the data's, or an instance target's."""
    cfg = run.resolved.cfg
    if cfg.train.task != "instance":
        return run.data.classes
    names = target_class_names(cfg.instance)
    return ClassTable.from_values(range(len(names)), names)


def stop_reason(state: RunState, cfg: TrainConfig) -> str | None:
    """Why the run ends after its last recorded epoch, or None when it goes on."""
    if cfg.early_stopping and state.bad_epochs >= cfg.early_stopping:
        return "early_stopping"
    if state.epoch < state.epochs:
        return None
    return "time_limit" if state.epoch < cfg.epochs else "epochs"


@overload
def fit(data: str | Path, out: str | Path, cfg: RunConfig | None = None, *,
        folds: None = None, resume: bool = False, show_progress: bool = True,
        callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
        loss_fn: LossFn | None = None, plan: PlanSource | None = "auto",
        fixed: Collection[str] = ()) -> FitResult: ...
@overload
def fit(data: str | Path, out: str | Path, cfg: RunConfig | None = None, *,
        folds: int, resume: bool = False, show_progress: bool = True,
        callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
        loss_fn: LossFn | None = None, plan: PlanSource | None = "auto",
        fixed: Collection[str] = ()) -> CrossValidation: ...


def fit(data: str | Path, out: str | Path, cfg: RunConfig | None = None, *,
        folds: int | None = None, resume: bool = False, show_progress: bool = True,
        callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
        loss_fn: LossFn | None = None, plan: PlanSource | None = "auto",
        fixed: Collection[str] = ()) -> FitResult | CrossValidation:
    """Train a U-Net on ``data`` (``images/`` + ``masks/``) and write the run into ``out``.

    With ``folds`` it cross-validates instead: one run per fold in ``out/fold-<i>/``, each
    scored on its held-out images, ``out/folds.json`` with the scores' mean and sd, and
    ``out/modelset.json``, the fold models as one model set with the post-processing chosen on
    their held-out predictions (:mod:`unetseg.train.crossval`); it returns a
    :class:`~unetseg.train.crossval.CrossValidation`.

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

    ``plan`` ``"auto"`` (the default) measures the data set's fingerprint while reading it and
    plans the patch size, depth, batch size, normalisation and loss from it
    (:mod:`unetseg.train.autoplan`); a ``plan.json`` path (from ``unetseg plan``, or a run
    folder, edited or not) or a :class:`~unetseg.train.autoplan.Plan` applies that plan;
    None trains ``cfg`` as it is. A plan keeps the fields ``fixed`` names (dotted RunConfig
    fields, such as ``"data.patch_size"``: what the command line's flags set) and those of
    ``cfg`` that differ from the defaults. The run folder gets ``plan.json`` (the plan with
    a reason per choice, also in ``config.json``) and, when planned from the data,
    ``fingerprint.json``. With ``folds``, the first fold plans and the others take its
    ``plan.json``.

    Launched as several processes (``torchrun``, ``unetseg train --nproc N``; see
    :mod:`unetseg.train.distributed`) it trains data-parallel: each process takes its share of
    every global batch of ``batch_size``, only rank 0 writes files and shows progress, the
    logged loss is the mean over processes, and callbacks run on every process with the same row.
    """
    if folds is not None:
        return cross_validate(data, out, cfg, folds=folds, train_run=fit, resume=resume,
                              show_progress=show_progress, callbacks=callbacks,
                              loss_fn=loss_fn, plan=plan, fixed=fixed)
    out = Path(out)
    resume_file = check_run_folder(out, resume)
    run, state = _set_up(data, out, cfg, resume_file, show_progress, loss_fn, plan, fixed)
    while state.stopped is None and state.epoch < state.epochs:
        row, improved = _run_epoch(run, state)
        if run.env.is_main:
            _save_epoch(run, state, row, improved)
            report_epoch(row, improved, state.epochs, run.show_progress)
        distributed.barrier(run.env)  # the epoch's files are whole before any process goes on
        for callback in callbacks:
            callback(row)
    if run.env.is_main and run.resolved.cfg.train.task == "instance":
        choose_instance_postprocess(out, run.data, run.resolved.cfg, run.device,
                                    show_progress=run.show_progress)
    return FitResult(out, out / "best.safetensors", out / "last.safetensors", state.history,
                     state.stopped or "epochs")


def choose_instance_postprocess(out: Path, data: PreparedData, cfg: RunConfig,
                                device: torch.device, *, show_progress: bool = False
                                ) -> dict[str, Any] | None:
    """Choose the post-processing of the run's best instance model on the validation images
    (:func:`~unetseg.infer.instances.choose_postprocess`, on at most
    :data:`~unetseg.infer.instances.TUNE_MAX_PIXELS` pixels) and store it in the cards of
    ``best.safetensors`` and ``last.safetensors`` (the choice's record under
    ``info["instance_postprocess"]``). Without validation images the configured values stay.
    Returns the record, or None."""
    if not data.val:
        log.warning("no validation images: the instance post-processing keeps its configured"
                    " values")
        return None
    model, card = load_model(out / "best.safetensors", device)
    predictor = ImagePredictor(model, card.stats, tile=cfg.train.val_tile, batch_size=2)
    examples: list[tuple[InstanceMaps, np.ndarray]] = []
    pixels = 0
    for pair in data.val:
        if examples and pixels + pair.ids.size > TUNE_MAX_PIXELS:
            break
        assert pair.instances is not None
        maps = instance_maps(predictor.logits(pair.image), cfg.instance)
        ignored = pair.instances < 0
        maps.foreground[ignored] = 0.0
        examples.append((maps, np.maximum(pair.instances, 0)))
        pixels += pair.ids.size
    chosen, record = choose_postprocess(examples, cfg.instance)
    for name in ("best.safetensors", "last.safetensors"):
        path = out / name
        net, stored = load_model(path)
        save_model(path, net, replace(stored, instance=chosen,
                                      info={**stored.info, "instance_postprocess": record}))
    text = (f"instance post-processing chosen on {record['images']} validation image(s):"
            f" mask > {chosen.mask_threshold}, seeds > {chosen.seed_threshold}, objects of"
            f" {chosen.min_size}+ pixels (DSB score {record['dsb_score']:.4f})")
    if show_progress:
        tqdm.write(text)
    log.info(text)
    return record


def report_epoch(row: dict[str, Any], improved: bool, epochs: int, show: bool) -> None:
    """One line per epoch: loss, validation scores, best so far, seconds; shown above the
    progress bars and logged."""
    val = row["val_mean_iou"]
    dsb = row.get("val_dsb_score")
    text = (f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}"
            + (f"  val mIoU {val:.4f}" if val is not None else "")
            + (f"  val DSB {dsb:.4f}" if dsb is not None else "")
            + ("  (best)" if improved else "") + f"  [{row['elapsed_s']:.0f} s]")
    if show:
        tqdm.write(text)
    log.info(text)
