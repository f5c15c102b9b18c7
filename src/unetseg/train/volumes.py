"""Training a 3D U-Net (or a 3D residual, attention or nested variant, ``cfg.model.arch``) on a
volume data set: the 2D recipe (Dice + cross-entropy, AdamW with a
cosine schedule, foreground-aware patches, joint augmentation, best validation epoch kept) with
3D patches, the 3D augmentation and the 3D sliding window for validation.

The network is planned from the voxel spacing (:func:`~unetseg.model.geometry.anisotropic_plan`:
slices far apart are neither convolved across nor pooled until the in-plane axes catch up) and
the patch covers about the same physical extent along every axis; the elastic deformation
moves every axis the same physical length (:func:`~unetseg.data.augment3d.elastic_axis_scale`).
Normalisation is 2D's (:mod:`unetseg.data.normalize`) over whole volumes: the ``image`` scheme
z-scores each training volume by its own statistics before patches are cut from it, as
prediction does the whole volume (:func:`volume_training_view`).

The loop is 2D training's (:mod:`unetseg.train.fit`): the same loop state, epoch files and
crash-safe order (:func:`~unetseg.train.rundir.save_epoch_files`). A run folder holds
``best.safetensors`` and ``last.safetensors`` (model files whose card also names the spacing
and the patch), ``resume.safetensors``, ``config.json``, ``metrics.csv``, ``curves.png`` and
``report.html`` (its validation examples are the middle slices of the first validation
volumes); ``unetseg predict``/``evaluate`` take the model like any other. A stopped run resumes
exactly (``resume=True``; each epoch's patches and augmentation come from a generator seeded by
the epoch). Launched as several processes (``unetseg train --volume --nproc N``, torchrun) it
trains data-parallel as 2D does (:mod:`unetseg.train.distributed`). A time budget without
``steps_per_epoch`` plans the epochs from a timed step of the 3D network on a training patch
(:func:`~unetseg.train.plan.plan_epochs`) and re-plans them after every epoch.

Not here (2D has them): width planning (the width defaults to :data:`DEFAULT_WIDTH`), the
data set's fingerprint plan, cross-validation, valid padding and the 2D-only architectures
(ResNet encoders, registered networks).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unetseg.config import DataConfig, RunConfig, check_run_config, replace, to_dict
from unetseg.data.augment3d import apply_volume_params, sample_volume_params
from unetseg.data.classes import IGNORE_INDEX, ClassTable
from unetseg.data.dataset import split_pairs
from unetseg.data.folds import split_by_stems
from unetseg.data.normalize import ChannelStats, dataset_stats, training_view
from unetseg.data.volumes import (
    VolumeCheck,
    check_volumes,
    read_volume,
    read_volume_mask,
    volume_files,
)
from unetseg.errors import UserError
from unetseg.files import output_folder, remove_stale_temps, write_text_atomic
from unetseg.infer.engine import resolve_device
from unetseg.infer.volume import (
    normalize_volume,
    sliding_window_volume_logits,
    volume_to_float,
    volume_windows,
)
from unetseg.losses import build_loss
from unetseg.metrics import confusion_matrix, iou, mean_iou
from unetseg.model import arch_config, build_model
from unetseg.model.geometry import anisotropic_plan, size_multiple
from unetseg.modelfile import ModelCard, read_card
from unetseg.report.training import Example, training_report
from unetseg.train import distributed
from unetseg.train.checkpoint import read_loop_state
from unetseg.train.distributed import DistEnv
from unetseg.train.fit import report_epoch, restore_state, start_state, stop_reason
from unetseg.train.loop import Precision, train_one_epoch
from unetseg.train.manifest import software_versions
from unetseg.train.optim import build_optimizer, build_scheduler
from unetseg.train.plan import (
    EpochPlan,
    ResolvedConfig,
    estimate_validation_s,
    fit_schedule_to_budget,
    plan_epochs,
    time_train_step,
)
from unetseg.train.rundir import check_run_folder, save_epoch_files
from unetseg.train.state import RunState

log = logging.getLogger(__name__)

PATCH_EXTENT = 64
"""In-plane side of a training patch in voxels (the z side covers the same physical length)."""
DEFAULT_WIDTH = 16
"""First-level channels of a 3D network on a CPU budget (a 3D level costs ~D times a 2D one)."""


@dataclass(frozen=True)
class VolumeFitResult:
    """The run folder, its model files, the metrics rows of every epoch and why it ended."""

    run_dir: Path
    best_model: Path
    last_model: Path
    history: list[dict[str, Any]]
    stopped: str


@dataclass(frozen=True)
class TrainingVolume:
    """A volume as training holds it: ``image`` ``(C, D, H, W)`` float32 (its
    :func:`volume_training_view` for training, normalised for validation) and ``ids``
    ``(D, H, W)`` int64 class ids (-1 ignored)."""

    stem: str
    image: torch.Tensor
    ids: torch.Tensor


def plan_patch(shape: Sequence[int], spacing: Sequence[float] | None,
               multiple: Sequence[int], extent: int = PATCH_EXTENT) -> tuple[int, int, int]:
    """A training patch ``(d, h, w)``: ``extent`` voxels in-plane and the same physical length
    along z, each a multiple of the network's ``multiple`` along it and no larger than the
    smallest volume ``shape`` (an axis shorter than one multiple is taken whole)."""
    ratio = 1.0 if not spacing else float(spacing[1]) / float(spacing[0])
    wants = (max(1, round(extent * ratio)), extent, extent)
    patch = []
    for size, want, m in zip((int(v) for v in shape), wants, multiple, strict=True):
        side = max(m, want // m * m)
        patch.append(min(side, size // m * m) if size >= m else size)
    return patch[0], patch[1], patch[2]


def load_volume_pairs(data: Path, stems: Sequence[str], classes: ClassTable,
                      spacing: Sequence[float] | None
                      ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The images (C, D, H, W) float32 in their read scale (:func:`volume_to_float`) and
    class ids (D, H, W) of the pairs ``stems`` of ``data/images`` and ``data/masks``."""
    images, masks = volume_files(data / "images"), volume_files(data / "masks")
    out_images, out_ids = [], []
    for stem in stems:
        out_images.append(volume_to_float(read_volume(images[stem], spacing=spacing).array))
        raw = read_volume_mask(masks[stem], spacing=spacing).array
        out_ids.append(classes.encode(raw, str(masks[stem])))
    return out_images, out_ids


def volume_classes(report: VolumeCheck, data_cfg: DataConfig) -> ClassTable:
    """The classes of a volume data set: ``data_cfg``'s values, else every mask value found
    (with 0 added where only one is), with its names and ignore value."""
    values = data_cfg.class_values or tuple(sorted({v for r in report.rows
                                                    for v in r["mask_values"]}))
    if len(values) < 2:
        values = (0, *values) if 0 not in values else (0, 1)
    return ClassTable.from_values(values, data_cfg.class_names,
                                  ignore_value=data_cfg.ignore_value)


def plan_spacing(report: VolumeCheck) -> tuple[float, float, float]:
    """The median spacing of the data set's volumes (1, 1, 1 where none has one): what the
    network and the patch are planned for."""
    spacings = [r["spacing"] for r in report.rows if r["spacing"]]
    if not spacings:
        return 1.0, 1.0, 1.0
    z, y, x = (float(v) for v in np.median(np.array(spacings), axis=0))
    return z, y, x


def pooling_multiple(pools: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """Per axis, the product of a network's poolings (:attr:`UNet.size_multiple`)."""
    z, y, x = (math.prod(p[a] for p in pools) for a in range(3))
    return z, y, x


def _flat(image: np.ndarray) -> np.ndarray:
    """(C, D, H, W) as (C, D * H, W): the 2D statistics' layout."""
    c, d, h, w = image.shape
    return image.reshape(c, d * h, w)


def sample_patches(volumes: Sequence[TrainingVolume], patch: Sequence[int], batch: int,
                   generator: torch.Generator, foreground_fraction: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random patches ``(B, C, d, h, w)`` and their ids ``(B, d, h, w)``; a share
    ``foreground_fraction`` of them is centred on a voxel of a class (but the first) present in
    the volume, so small structures are seen often."""
    images, ids = [], []
    for _ in range(batch):
        v = volumes[int(torch.randint(len(volumes), (1,), generator=generator))]
        shape = v.ids.shape
        centre = None
        if float(torch.rand((), generator=generator)) < foreground_fraction:
            where = (v.ids > 0).nonzero()
            if len(where):
                centre = where[int(torch.randint(len(where), (1,), generator=generator))]
        start = []
        for axis, (size, side) in enumerate(zip(shape, patch, strict=True)):
            room = size - side
            if centre is not None:
                s = int(centre[axis]) - side // 2
            else:
                s = int(torch.randint(room + 1, (1,), generator=generator))
            start.append(min(max(0, s), room))
        window = tuple(slice(s, s + side) for s, side in zip(start, patch, strict=True))
        images.append(v.image[(slice(None), *window)])
        ids.append(v.ids[window])
    return torch.stack(images), torch.stack(ids)


def volume_training_view(image: np.ndarray, stats: ChannelStats) -> np.ndarray:
    """A volume ``(C, D, H, W)`` as training cuts patches from it:
    :func:`~unetseg.data.normalize.training_view` over the whole volume, so that a patch
    normalised with ``stats.training()`` equals that window of the volume as prediction
    normalises it (:func:`~unetseg.infer.volume.normalize_volume`)."""
    return training_view(_flat(image), stats).reshape(image.shape)


def volume_steps_per_epoch(cfg: RunConfig, train: Sequence[TrainingVolume], patch: Sequence[int]
                           ) -> int:
    """Configured, or enough patches to cover the training volumes once (>= 8 steps)."""
    if cfg.train.steps_per_epoch:
        return cfg.train.steps_per_epoch
    voxels = sum(v.ids.numel() for v in train)
    return max(8, math.ceil(voxels / (math.prod(patch) * cfg.train.batch_size)))


def validation_voxels(val: Sequence[TrainingVolume], patch: Sequence[int], overlap: float = 0.5
                      ) -> int:
    """Voxels the validation's sliding window runs the network on (overlapping windows count
    each time), for the time a validation takes."""
    total = 0
    for v in val:
        windows = volume_windows(tuple(v.ids.shape), patch, overlap)
        total += len(windows) * math.prod(s.stop - s.start for s in windows[0])
    return total


def plan_volume_epochs(cfg: RunConfig, train: Sequence[TrainingVolume],
                       val: Sequence[TrainingVolume], patch: Sequence[int], rows: int,
                       device: torch.device) -> EpochPlan:
    """The epoch length for ``cfg.train.time_limit_s`` (:func:`~unetseg.train.plan.plan_epochs`)
    from a timed training step of ``cfg.model`` (the 3D network) on ``rows`` patches of
    ``patch`` voxels, this process's share of a batch."""
    assert cfg.train.time_limit_s is not None
    step_s = time_train_step(cfg, rows, tuple(patch), device)
    return plan_epochs(cfg.train.time_limit_s, step_s, volume_steps_per_epoch(cfg, train, patch),
                       estimate_validation_s(step_s, rows, tuple(patch),
                                             validation_voxels(val, patch)))


@dataclass(frozen=True)
class VolumeData:
    """The training volumes (in their :func:`volume_training_view`) and validation volumes
    (normalised), the class table, the normalisation and the median spacing ``(z, y, x)`` the
    network is planned for (ones without any spacing), the smallest volume's ``(D, H, W)``."""

    classes: ClassTable
    train: list[TrainingVolume]
    val: list[TrainingVolume]
    stats: ChannelStats
    spacing: tuple[float, float, float]
    smallest: tuple[int, int, int]


def prepare_volumes(data: Path, cfg: RunConfig, spacing: Sequence[float] | None) -> VolumeData:
    """Check, split (by seed, or holding out ``data.val_stems``), read and normalise the volume
    pairs of ``data``; the same data and configuration give the same result, so a resumed run
    prepares what it started with.

    Raises:
        UserError: problems ``check`` finds in the data set, or fewer than 2 volumes.
    """
    report = check_volumes(data, spacing=spacing)
    if report.problems:
        raise UserError(report.problems[0])
    if len(report.rows) < 2:
        raise UserError(f"{data}: {len(report.rows)} volume pair; training needs at least 2"
                        " (one is held out for validation)")
    classes = volume_classes(report, cfg.data)
    stems = [r["stem"] for r in report.rows]
    if cfg.data.val_stems is None:
        train_stems, val_stems = split_pairs(stems, max(cfg.data.val_fraction, 1 / len(stems)),
                                             cfg.train.seed)
    else:
        kept, held = split_by_stems([SimpleNamespace(stem=s) for s in stems],
                                    cfg.data.val_stems)
        if not held:
            raise UserError("val_stems names no volume; hold out at least one for validation")
        train_stems, val_stems = [k.stem for k in kept], [h.stem for h in held]
    median = plan_spacing(report)
    images, ids = load_volume_pairs(data, train_stems, classes, spacing)
    val_images, val_ids = load_volume_pairs(data, val_stems, classes, spacing)
    stats = dataset_stats([_flat(x) for x in images], cfg.data.normalization,
                          seed=cfg.train.seed)
    train = [TrainingVolume(n, torch.as_tensor(volume_training_view(x, stats)),
                            torch.as_tensor(y).long())
             for n, x, y in zip(train_stems, images, ids, strict=True)]
    val = [TrainingVolume(n, normalize_volume(torch.as_tensor(x), stats),
                          torch.as_tensor(y).long())
           for n, x, y in zip(val_stems, val_images, val_ids, strict=True)]
    smallest = np.min([r["shape"] for r in report.rows], axis=0)
    return VolumeData(classes, train, val, stats, (median[0], median[1], median[2]),
                      (int(smallest[0]), int(smallest[1]), int(smallest[2])))


def check_volume_config(cfg: RunConfig) -> None:
    """Refuse what volume training does not do, before any data is read.

    Raises:
        UserError: valid padding or an architecture without a 3D form.
    """
    if cfg.model.padding != "same":
        raise UserError("--padding valid: 3D training takes same padding (its validation and"
                        " prediction tile the volume with same-padding windows); drop"
                        " --padding valid")
    arch_config(replace(cfg.model, spatial_dims=3))


def volume_model_config(cfg: RunConfig, data: VolumeData) -> RunConfig:
    """``cfg`` with its network planned for ``data``: channels and classes from the data, the
    kernels and poolings from the spacing, :data:`DEFAULT_WIDTH` where no width is given."""
    kernels, pools = anisotropic_plan(data.spacing, cfg.model.depth)
    return replace(cfg, model=replace(
        cfg.model, in_channels=data.train[0].image.shape[0],
        num_classes=data.classes.num_classes, width=cfg.model.width or DEFAULT_WIDTH,
        spatial_dims=3, kernel_sizes=kernels, pool_sizes=pools))


def volume_batches(volumes: Sequence[TrainingVolume], patch: Sequence[int], cfg: RunConfig,
                   generator: torch.Generator, rows: slice, spacing: Sequence[float]
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
    """This process's ``rows`` of every global batch: patches and their augmentation are drawn
    for the whole batch from ``generator`` (so every process draws the same), and the rows'
    patches ``(b, C, d, h, w)``, ids ``(b, d, h, w)`` and augmentation draws are yielded."""
    while True:
        x, y = sample_patches(volumes, patch, cfg.train.batch_size, generator,
                              cfg.data.foreground_fraction)
        params = sample_volume_params(cfg.train.batch_size, cfg.augment, generator,
                                      shape=(x.shape[2], x.shape[3], x.shape[4]),
                                      spacing=spacing)
        yield x[rows], y[rows], params.rows(rows)


def volume_batch_preparer(stats: ChannelStats, device: torch.device
                          ) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Move a batch of :func:`volume_batches` to ``device``, augment and normalise it (with the
    statistics of the training view, :meth:`~unetseg.data.normalize.ChannelStats.training`)."""
    batch_stats = stats.training()

    def prepare(images: torch.Tensor, ids: torch.Tensor, params: Any
                ) -> tuple[torch.Tensor, ...]:
        images, ids = apply_volume_params(images.to(device), ids.to(device), params)
        return torch.stack([normalize_volume(v, batch_stats) for v in images]), ids

    return prepare


@dataclass
class _VolumeRun:
    """What stays fixed over the epochs of one volume run (``net`` is ``model`` wrapped for
    several processes; ``rows`` this process's share of each batch)."""

    out: Path
    resolved: ResolvedConfig
    data: VolumeData
    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    precision: Precision
    loss_fn: Callable[..., torch.Tensor]
    patch: tuple[int, int, int]
    steps: int
    card: ModelCard
    env: DistEnv
    device: torch.device
    rows: slice
    show_progress: bool
    examples: list[Example] = field(default_factory=list)


def fit_volumes(data: str | Path, out: str | Path, cfg: RunConfig | None = None, *,
                spacing: Sequence[float] | None = None, resume: bool = False,
                show_progress: bool = True,
                callbacks: Sequence[Callable[[dict[str, Any]], None]] = ()
                ) -> VolumeFitResult:
    """Train a 3D U-Net (or variant) on ``data/images`` + ``data/masks`` volumes, write the run in
    ``out`` (see the module's text). ``cfg`` gives the loss, the optimiser, epochs, steps per
    epoch, batch, seed, time limit, validation share, normalisation and augmentation as in 2D;
    its width (None: :data:`DEFAULT_WIDTH`) and depth shape the network, its ``arch`` names it
    (``unet``, ``residual``, ``attention`` or ``nested``). ``spacing`` stands in
    for files without one.

    With ``resume=True`` the run in ``out`` continues from ``resume.safetensors`` with the
    configuration and plans stored there, as if it had not stopped. Each callback is called
    with the epoch's metrics row after the epoch's files are written (an exception from it
    stops the run with everything up to that epoch saved). Launched as several processes it
    trains data-parallel as :func:`unetseg.train.fit.fit` does: each takes its share of every
    global batch, only rank 0 writes files.

    Raises:
        UserError: problems ``check`` finds in the data set, fewer than 2 volumes, valid
            padding, or a run folder that cannot be used (a run already, nothing to resume).
    """
    out = Path(out)
    resume_file = check_run_folder(out, resume)
    run, state = _set_up(Path(data), out, cfg, spacing, resume_file, show_progress)
    while state.stopped is None and state.epoch < state.epochs:
        row, improved = _run_epoch(run, state)
        if run.env.is_main:
            _save_epoch(run, state, row, improved)
            report_epoch(row, improved, state.epochs, run.show_progress)
        distributed.barrier(run.env)
        for callback in callbacks:
            callback(row)
    return VolumeFitResult(out, out / "best.safetensors", out / "last.safetensors",
                           state.history, state.stopped or "epochs")


def _set_up(data: Path, out: Path, cfg: RunConfig | None, spacing: Sequence[float] | None,
            resume_file: Path | None, show_progress: bool) -> tuple[_VolumeRun, RunState]:
    """Resolve the configuration (a resumed run's is the stored one, with its plans), read the
    data, build the training objects, restore a resumed run's state and write
    ``config.json``."""
    if resume_file is not None:  # checked when the run began, and planned for volumes since
        cfg = read_card(resume_file).run
    else:
        cfg = cfg or RunConfig()
        check_run_config(cfg)
    assert cfg is not None
    check_volume_config(cfg)
    env, device = distributed.init_distributed(resolve_device(cfg.train.device))
    if env.is_main:
        remove_stale_temps(out)
    show_progress = show_progress and env.is_main
    rows = distributed.batch_shard(cfg.train.batch_size, env)
    prepared = prepare_volumes(data, cfg, spacing)
    cfg = volume_model_config(cfg, prepared)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    patch = plan_patch(prepared.smallest, prepared.spacing,
                       size_multiple(cfg.model.depth, 3, cfg.model.pool_sizes))
    if resume_file is not None:
        resolved = ResolvedConfig.from_json(cfg, read_loop_state(resume_file))
    else:
        epoch_plan = None
        if cfg.train.time_limit_s is not None and cfg.train.steps_per_epoch is None:
            epoch_plan = distributed.broadcast_object(plan_volume_epochs(
                cfg, prepared.train, prepared.val, patch, rows.stop - rows.start, device), env)
            cfg = replace(cfg, train=replace(cfg.train,
                                             steps_per_epoch=epoch_plan.steps_per_epoch))
            if show_progress:
                tqdm.write(f"planned {epoch_plan.reason}")
        resolved = ResolvedConfig(cfg, None, epoch_plan, _volume_plan(cfg, prepared, patch))
    cfg = resolved.cfg
    steps = volume_steps_per_epoch(cfg, prepared.train, patch)
    optimizer = build_optimizer(cfg.train, model.parameters())
    scheduler = build_scheduler(cfg.train, optimizer, steps_per_epoch=steps)
    precision = Precision.for_device(device, cfg.train.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scale_gradients)
    state = (start_state(resolved, scheduler, steps) if resume_file is None
             else restore_state(resume_file, model, optimizer, scheduler, scaler))
    weights = (torch.tensor(cfg.train.class_weights, device=device)
               if cfg.train.class_weights else None)
    loss_fn = build_loss(cfg.train.loss if cfg.train.loss != "weighted-ce" else "dice_ce",
                         class_weights=weights, ignore_index=IGNORE_INDEX)
    card = ModelCard(cfg.model, prepared.classes, prepared.stats, cfg,
                     info={"spacing": list(prepared.spacing), "patch": list(patch)})
    if env.is_main:
        output_folder(out)
        write_text_atomic(out / "config.json", json.dumps(_manifest(
            resolved, data, prepared, patch, steps, env, device), indent=2))
        log.info("3D %s: kernels %s, poolings %s, patch %s", cfg.model.arch, cfg.model.kernel_sizes,
                 cfg.model.pool_sizes, patch)
    net = distributed.distribute(model, env, device, sync_batchnorm=cfg.train.sync_batchnorm)
    return _VolumeRun(out, resolved, prepared, model, net, optimizer, scheduler, scaler,
                      precision, loss_fn, patch, steps, card, env, device, rows,
                      show_progress), state


def _volume_plan(cfg: RunConfig, data: VolumeData, patch: Sequence[int]) -> dict[str, Any]:
    """What the spacing planned, with the reasons, in ``plan.json``'s form (for the report)."""
    spacing = ",".join(f"{v:g}" for v in data.spacing)
    return {"plan": {
        "model.depth": {"value": cfg.model.depth,
                        "reason": f"kernels {_plan_text(cfg.model.kernel_sizes)}, poolings"
                                  f" {_plan_text(cfg.model.pool_sizes)} for spacing {spacing}"
                                  " (slices far apart are not convolved across nor pooled)"},
        "data.patch_size": {"value": list(patch),
                            "reason": f"{PATCH_EXTENT} voxels in-plane and the same physical"
                                      " length along z, within the smallest volume"},
        "model.width": {"value": cfg.model.width,
                        "reason": "given" if cfg.model.width != DEFAULT_WIDTH
                        else "the 3D default on a CPU budget"},
    }}


def _plan_text(levels: Any) -> str:
    return " ".join("x".join(str(v) for v in level) for level in levels or ())


def _manifest(resolved: ResolvedConfig, data: Path, prepared: VolumeData,
              patch: Sequence[int], steps: int, env: DistEnv, device: torch.device
              ) -> dict[str, Any]:
    """``config.json`` of a volume run: 2D's keys (:func:`~unetseg.train.manifest.run_manifest`
    but the data hash) with the spacing, the patch ``(d, h, w)`` and the network's plan."""
    cfg = resolved.cfg
    return {
        "run": to_dict(cfg), "classes": prepared.classes.to_dict(),
        "stats": prepared.stats.to_dict(), "data": str(data.resolve()),
        "spacing": list(prepared.spacing), "patch": list(patch), "patch_size": list(patch),
        "kernel_sizes": [list(k) for k in cfg.model.kernel_sizes or ()],
        "pool_sizes": [list(p) for p in cfg.model.pool_sizes or ()],
        "steps_per_epoch": steps, "processes": env.world_size,
        "train_stems": [v.stem for v in prepared.train],
        "val_stems": [v.stem for v in prepared.val],
        "device": str(device), "torch_threads": torch.get_num_threads(),
        "versions": software_versions(), **resolved.plans_json(),
    }


def _run_epoch(run: _VolumeRun, state: RunState) -> tuple[dict[str, Any], bool]:
    """Train and validate the next epoch, count its time against the budget, re-plan the rest
    of a budgeted run and record the epoch in ``state`` (as 2D's ``_run_epoch``)."""
    cfg, env, epoch = run.resolved.cfg, run.env, state.epoch + 1
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
    torch.manual_seed(cfg.train.seed * 100_003 + epoch + 7_919 * env.rank)  # dropout
    stats = train_one_epoch(
        run.net, volume_batches(run.data.train, run.patch, cfg, generator, run.rows,
                                run.data.spacing),
        prepare=volume_batch_preparer(run.data.stats, run.device), loss_fn=run.loss_fn,
        optimizer=run.optimizer, scheduler=run.scheduler, scaler=run.scaler,
        precision=run.precision, steps=state.steps_in(epoch, run.steps),
        description=f"epoch {epoch}/{state.epochs}", show_progress=run.show_progress)
    train_s = distributed.broadcast_object(stats.seconds, env)
    loss = distributed.all_reduce_mean(stats.loss, env)
    scores = _validate(run)
    state.count_epoch(stats.steps, train_s,
                      distributed.broadcast_object(time.perf_counter() - started, env))
    if cfg.train.time_limit_s is not None:
        fit_schedule_to_budget(state, run.scheduler, cfg.train, epoch, run.steps)
    row = {"epoch": epoch, "step": state.optimizer_steps, "lr": run.scheduler.get_last_lr()[0],
           "train_loss": loss, **scores, "elapsed_s": round(state.elapsed_s, 2),
           "images_seen": state.optimizer_steps * cfg.train.batch_size}
    improved = state.record(row, row["val_mean_iou"])
    state.stopped = stop_reason(state, cfg.train)
    return row, improved


REPORT_EXAMPLES = 3
"""Validation volumes whose middle slice the report shows."""


@torch.inference_mode()
def _validate(run: _VolumeRun) -> dict[str, Any]:
    """Mean IoU (and per class) of the validation volumes, predicted with the sliding window;
    with several processes each predicts every ``world_size``-th volume and the confusion
    matrices are summed. Refills ``run.examples`` with middle slices for the report."""
    env, k = run.env, run.data.classes.num_classes
    distributed.broadcast_buffers(run.model, env)
    run.model.eval()
    run.examples.clear()
    cm = torch.zeros(k, k, dtype=torch.long)
    for v in run.data.val[env.rank::env.world_size]:
        logits = sliding_window_volume_logits(run.model, v.image.to(run.device), run.patch)
        labels = logits.argmax(0).cpu()
        cm += confusion_matrix(labels, v.ids, k)
        if len(run.examples) < REPORT_EXAMPLES:
            z = v.ids.shape[0] // 2
            run.examples.append((v.stem, v.image[:, z].numpy(), v.ids[z].numpy(),
                                 labels[z].numpy()))
    total = distributed.all_reduce_sum(cm, env)
    row: dict[str, Any] = {"val_mean_iou": float(mean_iou(total))}
    for name, value in zip(run.data.classes.names, iou(total).tolist(), strict=True):
        row[f"val_iou/{name}"] = None if math.isnan(value) else value
    return row


def _save_epoch(run: _VolumeRun, state: RunState, row: dict[str, Any], improved: bool) -> None:
    """Write the epoch's files (:func:`~unetseg.train.rundir.save_epoch_files`)."""

    def report() -> str:
        return training_report(run.out, state.history, None, run.examples, run.data.classes)

    save_epoch_files(run.out, run.model, run.card, run.optimizer, state.history, row, improved, {
        **state.to_json(), **run.resolved.plans_json(),
        "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict()}, report)
