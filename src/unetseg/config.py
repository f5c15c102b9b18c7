"""Typed configuration: frozen dataclasses that serialise to and from JSON.

Every run writes its :class:`RunConfig` beside the model so a checkpoint describes itself.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Padding = Literal["same", "valid"]
UpMode = Literal["transpose", "bilinear", "nearest"]
Norm = Literal["batch", "instance", "group", "none"]
LossName = Literal["dice_ce", "ce", "dice", "focal", "weighted-ce"]
OptimizerName = Literal["adamw", "sgd"]
SchedulerName = Literal["cosine", "constant"]
ImageInterpolation = Literal["bilinear", "bicubic"]
Backend = Literal["auto", "torch", "onnxruntime"]
PrecisionName = Literal["auto", "fp32", "bf16"]
NormalizationScheme = Literal["dataset", "image", "percentile"]
TaskName = Literal["semantic", "instance"]
InstanceTargetName = Literal["boundary", "distance"]

DEFAULT_TILE = 512
"""Tile side in pixels where none is planned: a given ``overlap``, valid-padding models, the
tiling stored in exported files."""
DEFAULT_OVERLAP = 0.25
"""Share of a tile's side that overlaps its neighbour where the overlap is not planned."""
DEFAULT_BATCH_SIZE = 4
"""Tiles per forward pass."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`~unetseg.model.UNet`.

    ``width`` is the channel count of the first level; level ``i`` has ``width * 2**i``.
    ``None`` lets training plan it (:func:`unetseg.train.plan.plan_width`: the widest of 64, 32
    and 16 that a time budget can train for enough steps on the device; 64 without a budget).
    ``top_width``, when set, replaces the first (full-resolution) level's channel count alone;
    a planned width sets it (:func:`unetseg.train.plan.plan_top_width`).
    ``padding="valid"`` is the paper's network (unpadded 3x3 convs, output smaller than input).
    ``arch`` names the network: ``"unet"`` (this UNet), a built-in variant (``residual``,
    ``attention``, ``nested``, ``resnet18``, ``resnet34``, ``resnet50``; see
    :mod:`unetseg.model.variants`), one registered with
    :func:`unetseg.model.register_architecture` or one an installed package declares in the
    entry point group ``unetseg.architectures`` (such a network reads only the channel counts).
    ``encoder_blocks`` is the residual variant's number of residual blocks per encoder stage.
    ``deep_supervision`` adds 1x1 heads to the coarser decoder stages whose losses join the
    main one in training (for ``nested``, heads on its nested outputs); ``prune_level`` runs a
    ``nested`` network pruned to its first ``prune_level`` levels at inference (None: all).
    ``spatial_dims`` is 2 for images, 3 for volumes (``unet``, ``residual``, ``attention`` and
    ``nested``; the ResNets are 2D). For anisotropic volumes ``kernel_sizes`` (``depth + 1``
    entries, finest level first) and ``pool_sizes`` (``depth`` entries) give the conv kernel
    and the pooling per axis (``(z, y, x)``) of each level
    (:func:`unetseg.model.geometry.anisotropic_plan`); None: 3 and 2 along every axis.
    """

    in_channels: int = 1
    num_classes: int = 2
    depth: int = 4
    width: int | None = None
    padding: Padding = "same"
    up: UpMode = "transpose"
    norm: Norm = "instance"
    dropout: float = 0.0
    arch: str = "unet"
    top_width: int | None = None
    encoder_blocks: int = 2
    deep_supervision: bool = False
    prune_level: int | None = None
    spatial_dims: int = 2
    kernel_sizes: tuple[tuple[int, ...], ...] | None = None
    pool_sizes: tuple[tuple[int, ...], ...] | None = None


@dataclass(frozen=True)
class DataConfig:
    """How training pairs are found, split and sampled.

    ``patch_size`` is the side of the square training crop in pixels (for valid-padding models it
    is the network's input size and is rounded up to a legal one). ``foreground_fraction`` is the
    share of crops centred on a pixel of a class chosen uniformly among those present, so rare
    classes are seen often.

    ``weight_*`` configure the U-Net paper's border weight map used by the ``weighted-ce`` loss
    (see :mod:`unetseg.data.weights`): ``weight_w0`` and ``weight_sigma`` (pixels) as in its
    eq. 2, ``weight_objects`` the mask values whose connected components are the objects
    (default: every class but the first, e.g. the cells, 255, of ISBI 2012).

    ``palette`` is a JSON or CSV file naming the classes and their colours (for colour masks
    it defines the classes; for label and palette masks it names them and gives display
    colours; see :mod:`unetseg.data.masks`). For colour masks without it, ``ignore_value`` is
    a packed colour ``R*65536 + G*256 + B``.

    ``normalization`` is how image intensities are scaled before the network (see
    :mod:`unetseg.data.normalize`): ``dataset`` z-scores each channel with the training
    images' mean and sd, ``image`` z-scores each image by its own, ``percentile`` clips each
    channel to the training images' 0.5th and 99.5th percentiles, then z-scores it. The model
    file stores it, so prediction applies the same.

    ``val_stems``, when set, are the stems of the pairs held out for validation, in place of a
    seeded ``val_fraction`` split: each fold of a cross-validation (``train --folds``) sets its
    held-out images here (see :mod:`unetseg.data.folds`).
    """

    val_fraction: float = 0.2
    patch_size: int = 256
    foreground_fraction: float = 0.5
    ignore_value: int | None = None
    class_values: tuple[int, ...] | None = None
    class_names: tuple[str, ...] | None = None
    palette: str | None = None
    weight_w0: float = 10.0
    weight_sigma: float = 5.0
    weight_objects: tuple[int, ...] | None = None
    normalization: NormalizationScheme = "dataset"
    val_stems: tuple[str, ...] | None = None


@dataclass(frozen=True)
class AugmentConfig:
    """Joint image/mask augmentation, applied batched on the training device.

    Geometry (flips, 90-degree turns, affine, elastic) is one resampling: image bilinear, mask
    nearest. ``elastic_sigma`` is the standard deviation in pixels of the displacements drawn on
    an ``elastic_grid`` x ``elastic_grid`` grid and upsampled bicubically (the U-Net paper: 3, 10).
    ``image_interpolation="bicubic"`` resamples images bicubically instead (masks stay nearest,
    weights bilinear).
    """

    flip: bool = True
    rot90: bool = True
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    shift: float = 0.05
    affine_p: float = 0.5
    elastic_p: float = 0.3
    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    brightness: float = 0.1
    contrast: float = 0.15
    gamma: tuple[float, float] = (0.8, 1.25)
    intensity_p: float = 0.5
    image_interpolation: ImageInterpolation = "bilinear"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. ``steps_per_epoch=None`` means one pass over the training images' area in
    patches (at least 8 steps). ``time_limit_s`` stops after the epoch that crosses the budget.
    ``batch_size`` is global: with several processes each takes ``batch_size / processes``;
    ``sync_batchnorm`` then computes batch-norm statistics over the whole batch (GPUs only).
    ``workers`` are DataLoader processes cutting crops ahead of the training step (None: none on
    a CPU, where the crops come from decoded images in memory and a worker would take a core
    from the convolutions; up to 4 beside a GPU). ``task`` is what the network learns: the masks'
    classes (``semantic``) or targets that separate touching objects (``instance``, see
    :class:`InstanceConfig`). ``encoder_weights`` is a ResNet state dict (safetensors or
    ``.pth``, torchvision's or timm's names) that initialises the encoder of a ``resnet*``
    network (:mod:`unetseg.model.encoder_weights`)."""

    epochs: int = 50
    steps_per_epoch: int | None = None
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: OptimizerName = "adamw"
    momentum: float = 0.99
    scheduler: SchedulerName = "cosine"
    warmup_epochs: int = 1
    loss: LossName = "dice_ce"
    class_weights: tuple[float, ...] | None = None
    amp: bool = True
    early_stopping: int | None = None
    seed: int = 0
    device: str = "auto"
    time_limit_s: float | None = None
    val_tile: int = 512
    sync_batchnorm: bool = False
    workers: int | None = None
    task: TaskName = "semantic"
    encoder_weights: str | None = None


@dataclass(frozen=True)
class InstanceConfig:
    """Instance segmentation (``train.task="instance"``): the targets the network learns from
    the instance labels and how its output becomes one label per object
    (:mod:`unetseg.data.instance_targets`, :mod:`unetseg.infer.instances`).

    ``target`` ``"boundary"``: three classes, background / object interior / object boundary
    (object pixels within ``boundary_width`` pixels of another object or the background);
    ``"distance"``: background / object classes plus a regressed map of each object pixel's
    distance to its object's edge, divided by the object's largest (``distance_weight`` weighs
    its mean squared error against the class loss). The loss ``weighted-ce`` adds the U-Net
    paper's border weight map (``data.weight_w0``, ``data.weight_sigma``) computed on the
    object interiors after augmentation.

    Post-processing: pixels whose object probability exceeds ``mask_threshold`` are objects
    (holes filled when ``fill_holes``); connected regions whose seed map (interior probability,
    or distance) exceeds ``seed_threshold`` seed a watershed that splits them; objects under
    ``min_size`` pixels are dropped. Training chooses these three on the validation images
    (the 2018 Data Science Bowl score) and stores them in the model card; the values here are
    where the choice starts and what a run without validation keeps.
    """

    target: InstanceTargetName = "boundary"
    boundary_width: int = 2
    distance_weight: float = 1.0
    seed_threshold: float = 0.5
    mask_threshold: float = 0.5
    min_size: int = 8
    fill_holes: bool = True


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs, composed from the parts above."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    instance: InstanceConfig = field(default_factory=InstanceConfig)


@dataclass(frozen=True)
class PredictConfig:
    """How a model predicts images: the options of ``predict``, ``evaluate``, ``serve`` and the
    tiling ``export`` stores, stated once.

    ``tile`` None plans the tiling per image for same-padding models (the whole image up to
    1088 pixels, else the fewest tiles overlapping by 64 pixels; see
    :class:`~unetseg.infer.engine.ImagePredictor`) and is :data:`DEFAULT_TILE` otherwise;
    ``overlap`` None is planned with the tile, or :data:`DEFAULT_OVERLAP` with a given tile.
    ``tta`` is a test-time augmentation mode (``flip``, ``d4``, ``rot:N``) or None.
    ``backend`` ``auto`` runs ``.onnx`` files on ONNX Runtime and a model file on the backend
    measured faster for it on this machine (:mod:`unetseg.export.fastest`; PyTorch without ONNX
    Runtime).
    ``precision`` is the PyTorch backend's number format on the CPU: ``auto`` is bf16 where the
    CPU computes bf16 natively and the model's labels in bf16 agree with fp32 on a sample of
    the input, else fp32 (:mod:`unetseg.infer.precision`); ``fp32`` and ``bf16`` force one.
    """

    tile: int | None = None
    overlap: float | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "auto"
    tta: str | None = None
    backend: Backend = "auto"
    precision: PrecisionName = "auto"

    @property
    def fixed_tile(self) -> int:
        """The tile side where none is planned."""
        return self.tile or DEFAULT_TILE

    @property
    def fixed_overlap(self) -> float:
        """The overlap where none is planned."""
        return DEFAULT_OVERLAP if self.overlap is None else self.overlap

    def check(self) -> None:
        """One-line :class:`~unetseg.errors.UserError` for options no prediction can use (the
        test-time augmentation mode is parsed where it is used, in :mod:`unetseg.infer.tta`)."""
        from unetseg.errors import UserError

        if self.tile is not None and self.tile < 16:
            raise UserError(f"--tile {self.tile}: tiles must be at least 16 pixels; e.g."
                            " --tile 512")
        if self.overlap is not None and not 0.0 <= self.overlap < 1.0:
            raise UserError(f"--overlap {self.overlap}: must be a fraction in [0, 1); e.g. 0.25")
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: give at least 1 tile per batch")
        backends = typing.get_args(Backend)
        if self.backend not in backends:
            raise UserError(f"--backend {self.backend}: unknown backend; use"
                            f" {', '.join(backends)}")
        precisions = typing.get_args(PrecisionName)
        if self.precision not in precisions:
            raise UserError(f"--precision {self.precision}: unknown precision; use"
                            f" {', '.join(precisions)}")


def predict_config(config: PredictConfig | None = None, **options: Any) -> PredictConfig:
    """``config`` (default :class:`PredictConfig`) with ``options`` on top: what functions that
    take both ``config=`` and the options as keywords (``predict(..., tile=256)``) predict with.

    Raises:
        TypeError: an option that is not a :class:`PredictConfig` field.
    """
    names = [f.name for f in dataclasses.fields(PredictConfig)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise TypeError(f"unknown prediction option {', '.join(unknown)}; the options are"
                        f" {', '.join(names)}")
    return dataclasses.replace(config or PredictConfig(), **options)


@dataclass(frozen=True)
class ServeLimits:
    """What ``unetseg serve`` admits, stated once for the command line and :func:`~unetseg.serve.
    app.create_app`: larger requests, images or volumes get HTTP 413, more requests than
    ``workers + queue_size`` in inference get 503. ``max_voxels`` bounds depth x height x width
    of a volume (read from its header; 32 Mi voxels hold a float32 volume of 128 MiB)."""

    max_upload_bytes: int = 32 * 2**20
    max_pixels: int = 16 * 2**20
    max_voxels: int = 32 * 2**20
    queue_size: int = 8
    workers: int = 1


T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from a dict made by :func:`to_dict`; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs = {k: _coerce(hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def replace(cfg: T, **changes: Any) -> T:
    """A copy of ``cfg`` with fields changed; nested dataclasses are changed by dotted names
    (``replace(run, **{"train.epochs": 5})``)."""
    direct = {k: v for k, v in changes.items() if "." not in k}
    nested: dict[str, dict[str, Any]] = {}
    for k, v in changes.items():
        if "." in k:
            head, rest = k.split(".", 1)
            nested.setdefault(head, {})[rest] = v
    for head, sub in nested.items():
        direct[head] = replace(getattr(cfg, head), **sub)
    return dataclasses.replace(cfg, **direct)  # type: ignore[type-var]


def _coerce(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(args[0], value) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value)  # type: ignore[arg-type]
    if origin is tuple:
        items = typing.get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis:
            return tuple(_coerce(items[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(items, value))
    return value


# (section, field) -> (lowest allowed, highest allowed or None, whether the lowest is allowed)
_RANGES: dict[tuple[str, str], tuple[float, float | None, bool]] = {
    ("model", "width"): (1, None, True),
    ("model", "top_width"): (1, None, True),
    ("model", "depth"): (0, None, True),
    ("model", "dropout"): (0.0, 1.0, True),
    ("model", "encoder_blocks"): (1, None, True),
    ("model", "prune_level"): (1, None, True),
    ("model", "spatial_dims"): (2, 3, True),
    ("data", "patch_size"): (1, None, True),
    ("data", "foreground_fraction"): (0.0, 1.0, True),
    ("data", "val_fraction"): (0.0, 1.0, True),
    ("train", "epochs"): (1, None, True),
    ("train", "steps_per_epoch"): (1, None, True),
    ("train", "batch_size"): (1, None, True),
    ("train", "lr"): (0.0, None, False),
    ("train", "weight_decay"): (0.0, None, True),
    ("train", "early_stopping"): (1, None, True),
    ("train", "time_limit_s"): (0.0, None, False),
    ("train", "val_tile"): (16, None, True),
    ("train", "workers"): (0, None, True),
    ("instance", "boundary_width"): (1, None, True),
    ("instance", "distance_weight"): (0.0, None, True),
    ("instance", "seed_threshold"): (0.0, 1.0, True),
    ("instance", "mask_threshold"): (0.0, 1.0, True),
    ("instance", "min_size"): (0, None, True),
}


FLAG_NAMES: dict[str, str | None] = {
    "train.time_limit_s": "--time-limit",
    "data.class_values": "--classes",
    "train.val_tile": None,
    "instance.target": "--instance-target",
    "instance.seed_threshold": None,
    "instance.mask_threshold": None,
    "instance.min_size": None,
    "instance.fill_holes": None,
    # volumes: the network's form follows the data (training on volumes is not built yet)
    "model.spatial_dims": None,
    "model.kernel_sizes": None,
    "model.pool_sizes": None,
}
"""``train`` flags whose names are not their field's name (None: the field has no flag)."""


PLANNED_FIELDS = ("model.arch", "data.patch_size", "model.depth", "train.batch_size",
                  "model.width", "model.top_width", "data.normalization", "train.loss")
"""RunConfig fields a plan sets unless the user does (:mod:`unetseg.train.autoplan`), in the
order they are planned and shown."""


def flag_hint(dotted: str) -> str:
    """Where a user sets the RunConfig field ``dotted`` (``train.epochs``): its ``train`` flag,
    or the config file."""
    flag = FLAG_NAMES.get(dotted, "--" + dotted.rsplit(".", 1)[-1].replace("_", "-"))
    return flag if flag is not None else f"{dotted} in a --config file"


def check_run_config(cfg: RunConfig) -> None:
    """Refuse option values no run can use, with a one-line :class:`UserError` naming the
    option (``train.batch_size`` is the flag ``--batch-size``) and the allowed values.

    Checked: every ``Literal`` option against its choices, and the numeric ranges above
    (``val_fraction`` and ``dropout`` below 1, positive sizes, epochs and learning rate).
    """
    from unetseg.errors import UserError

    for section in dataclasses.fields(cfg):
        part = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(part):
            continue
        hints = typing.get_type_hints(type(part))
        for f in dataclasses.fields(part):
            value, name = getattr(part, f.name), f"{section.name}.{f.name}"
            flag = flag_hint(name)
            choices = literal_choices(hints[f.name])
            if choices and value not in choices:
                raise UserError(f"{name} {value!r} is not an option; choose one of"
                                f" {', '.join(map(str, choices))} ({flag})")
            bounds = _RANGES.get((section.name, f.name))
            if bounds is None or value is None:
                continue
            low, high, low_ok = bounds
            if (not isinstance(value, int | float) or value != value
                    or (value < low if low_ok else value <= low)
                    or (high is not None and value >= high)):
                allowed = (f"{'>=' if low_ok else '>'} {low}"
                           + (f" and < {high}" if high is not None else ""))
                raise UserError(f"{name} {value!r} is out of range; give a value {allowed}"
                                f" ({flag})")
    weights = cfg.train.class_weights
    if weights is not None and not all(w >= 0 and w != float("inf") for w in weights):
        raise UserError(f"train.class_weights {list(weights)}: weights must be finite and >= 0;"
                        " fix --class-weights")


def literal_choices(tp: Any) -> tuple[Any, ...]:
    """The choices of a ``Literal`` type (also inside ``X | None``), else ()."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if typing.get_origin(arg) is Literal:
                return typing.get_args(arg)
    return ()
