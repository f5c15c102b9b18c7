"""Flag tables of the command line, and help texts whose defaults come from the config
dataclasses.

A flag bound to a config field has the argparse default None, so that only the flags given
override a preset or config file; its help ends with ``(default X)`` taken from the field, so a
default is stated once, in :mod:`unetseg.config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from unetseg.config import (
    DEFAULT_OVERLAP,
    PLANNED_FIELDS,
    AugmentConfig,
    DataConfig,
    InstanceConfig,
    ModelConfig,
    PredictConfig,
    RunConfig,
    TrainConfig,
    literal_choices,
)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _switch(text: str) -> bool:
    """``on``/``off`` (also ``true``/``false``, ``yes``/``no``, ``1``/``0``)."""
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not on or off")


def _ignore_value(text: str) -> int:
    """A mask value (``11``), or a colour (``0,0,0`` or ``#000000``) packed as
    ``R*65536 + G*256 + B`` for colour masks."""
    t = text.strip()
    try:
        if t.startswith("#") and len(t) == 7:
            return int(t[1:], 16)
        parts = [int(v) for v in t.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a value (11) or a colour (0,0,0 or"
                                         " #000000)") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 3 and all(0 <= v <= 255 for v in parts):
        return (parts[0] << 16) | (parts[1] << 8) | parts[2]
    raise argparse.ArgumentTypeError(f"{text!r} is not a value (11) or a colour (0,0,0)")


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "augment": AugmentConfig,
                             "train": TrainConfig, "instance": InstanceConfig}

Flag = tuple[str, Callable[[str], Any], str]
"""(field, parser of the value, help without the default)"""

# flag -> (dotted RunConfig field, parser, help); the help's "(default X)" is added from the field
TRAIN_FLAGS: dict[str, Flag] = {
    "--epochs": ("train.epochs", int, "training epochs"),
    "--batch-size": ("train.batch_size", int, "patches per step"),
    "--lr": ("train.lr", float, "peak learning rate"),
    "--weight-decay": ("train.weight_decay", float, "weight decay"),
    "--optimizer": ("train.optimizer", str, "optimiser"),
    "--scheduler": ("train.scheduler", str, "learning-rate schedule"),
    "--loss": ("train.loss", str, "loss; weighted-ce is the paper's border weight map"),
    "--class-weights": ("train.class_weights", _floats, "comma-separated weight per class"),
    "--steps-per-epoch": ("train.steps_per_epoch", int, "default: cover the images once, or"
                          " fewer when --time-limit would hold under 8 such epochs"),
    "--early-stopping": ("train.early_stopping", int, "stop after N epochs without gain"),
    "--time-limit": ("train.time_limit_s", float, "seconds; the schedule is fitted to it"),
    "--seed": ("train.seed", int, "seed of split, sampling and augmentation"),
    "--device": ("train.device", str, "auto, cpu, cuda, cuda:1, ..."),
    "--workers": ("train.workers", int, "crop-loading processes (default: 0 on CPU, up to 4"
                  " with a GPU)"),
    "--width": ("model.width", int, "channels of the first level, doubled at each level down"
               " (default: planned from --time-limit and the device; 64 without one)"),
    "--top-width": ("model.top_width", int, "channels of the first level alone (default: the"
                    " width; a planned width keeps at least 2 per class there)"),
    "--depth": ("model.depth", int, "number of poolings"),
    "--padding": ("model.padding", str, "same: any size; valid: the paper's"),
    "--up": ("model.up", str, "upsampling"),
    "--norm": ("model.norm", str, "normalisation layers"),
    "--dropout": ("model.dropout", float, "drop-out at the end of the contracting path"),
    "--arch": ("model.arch", str, "network: unet, residual, attention, nested (U-Net++),"
               " resnet18, resnet34, resnet50, or one an installed package provides (entry"
               " point group unetseg.architectures)"),
    "--encoder-blocks": ("model.encoder_blocks", int, "--arch residual: residual blocks per"
                         " encoder stage"),
    "--deep-supervision": ("model.deep_supervision", _switch, "on or off: auxiliary heads on"
                           " the coarser decoder levels (nested: on its nested outputs),"
                           " trained with the main one"),
    "--prune-level": ("model.prune_level", int, "--arch nested: predict with the first N"
                      " levels only, the U-Net++ paper's pruning (default: all)"),
    "--encoder-weights": ("train.encoder_weights", str, "ResNet state dict (.safetensors or"
                          " .pth, torchvision's or timm's names) that initialises a resnet*"
                          " encoder"),
    "--patch-size": ("data.patch_size", int, "training crop side in pixels"),
    "--val-fraction": ("data.val_fraction", float, "share of pairs held out"),
    "--foreground-fraction": ("data.foreground_fraction", float, "share of crops centred on a"
                              " pixel of a class present in the image, so rare classes are"
                              " seen often"),
    "--classes": ("data.class_values", _ints, "mask values of the classes, e.g. 0,255"),
    "--class-names": ("data.class_names", _names, "names of the classes, e.g. membrane,cell"),
    "--ignore-value": ("data.ignore_value", _ignore_value, "mask value to ignore, e.g. 11 for"
                       " CamVid void; for colour masks a colour, e.g. 0,0,0"),
    "--palette": ("data.palette", str, "JSON or CSV file of class names and colours (colour"
                  " masks; names and display colours for label masks)"),
    "--weight-w0": ("data.weight_w0", float, "weighted-ce: border weight w0 (the paper's)"),
    "--weight-sigma": ("data.weight_sigma", float, "weighted-ce: border width in px (the"
                       " paper's)"),
    "--weight-objects": ("data.weight_objects", _ints, "weighted-ce and instance task: mask"
                         " values of the objects (default: all classes but the first, e.g."
                         " 255 = ISBI cells)"),
    "--normalization": ("data.normalization", str, "intensity normalisation: dataset"
                        " (z-score with the training images' mean and sd), image (each image"
                        " by its own), percentile (clip to the training images' 0.5-99.5th"
                        " percentiles, then z-score)"),
    "--image-interpolation": ("augment.image_interpolation", str,
                              "image resampling in augmentation"),
    "--task": ("train.task", str, "semantic: the masks' classes; instance: one label per object"
               " (DATA/instances/, else the connected components of the object classes)"),
    "--instance-target": ("instance.target", str, "instance task: boundary (background,"
                          " interior, boundary classes) or distance (object classes plus a"
                          " distance map)"),
    "--boundary-width": ("instance.boundary_width", int, "instance task: boundary width in px"),
    "--distance-weight": ("instance.distance_weight", float, "instance task: weight of the"
                          " distance map's loss"),
}

# flag -> (PredictConfig field, parser, help)
PREDICT_FLAGS: dict[str, Flag] = {
    "--tile": ("tile", int, "tile side in pixels (default: the whole image up to 1088 px, else"
               " the fewest tiles overlapping by 64 px)"),
    "--overlap": ("overlap", float, "tile overlap, a fraction (default: planned with the tile;"
                  f" {DEFAULT_OVERLAP} with --tile)"),
    "--batch-size": ("batch_size", int, "tiles per forward pass"),
    "--device": ("device", str, "auto, cpu, cuda, cuda:1, ..."),
    "--tta": ("tta", str, "test-time augmentation of every tile: flip (4 flips), d4 (8"
              " symmetries) or rot:N (N rotations, e.g. rot:7)"),
    "--backend": ("backend", str, "auto runs .onnx files (from unetseg export) on ONNX Runtime"
                  " (CPU), other models on the backend measured faster for them on this"
                  " machine (measured once, cached)"),
    "--precision": ("precision", str, "number format on the CPU: auto runs bf16 where the CPU"
                    " has native bf16 and the model's labels in bf16 agree with fp32 on a sample"
                    " of the input, else fp32"),
}


def field_of(owner: type, dotted: str) -> dataclasses.Field[Any]:
    """The dataclass field ``dotted`` (``train.epochs`` of RunConfig, ``tile`` of
    PredictConfig)."""
    if "." in dotted:
        section, name = dotted.split(".", 1)
        owner, dotted = SECTIONS[section], name
    return next(f for f in dataclasses.fields(owner) if f.name == dotted)


def field_default(owner: type, dotted: str) -> Any:
    return field_of(owner, dotted).default


def choices_of(owner: type, dotted: str) -> tuple[Any, ...]:
    """The choices of a ``Literal`` field, else ()."""
    head = owner if "." not in dotted else SECTIONS[dotted.split(".", 1)[0]]
    name = dotted.rsplit(".", 1)[-1]
    return literal_choices(typing.get_type_hints(head)[name])


def format_default(value: Any) -> str:
    """A default as the help shows it: tuples comma-separated, like the flags take them."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def help_text(owner: type, dotted: str, text: str, *, planned: bool = False) -> str:
    """``text`` with the field's choices and ``(default X)``, both read from the dataclass.

    A field whose default is None says what None means in ``text`` itself (``(default: ...)``).
    """
    choices = choices_of(owner, dotted)
    if choices:
        text = f"{text}; one of {', '.join(map(str, choices))}"
    default = field_default(owner, dotted)
    if planned and dotted in PLANNED_FIELDS and "(default" not in text:
        return (f"{text} (default: planned from the data"
                + ("" if default is None else f"; {format_default(default)} with --plan off")
                + ")")
    if default is None or "(default" in text:
        return text
    return f"{text} (default {format_default(default)})"


def add_flags(p: argparse.ArgumentParser, owner: type, table: dict[str, Flag],
              flags: typing.Iterable[str] | None = None, *, planned: bool = False) -> None:
    """Add ``flags`` (default: all) of ``table``, bound to fields of ``owner``, default None.

    No argparse ``choices``: a wrong value is a one-line UserError from the config's check,
    not argparse's usage message."""
    for flag in table if flags is None else flags:
        key, kind, text = table[flag]
        p.add_argument(flag, type=kind, default=None,
                       help=help_text(owner, key, text, planned=planned))


def add_train_flags(p: argparse.ArgumentParser, flags: typing.Iterable[str] | None = None,
                    *, planned: bool = False) -> None:
    """The ``train`` flags (default: all) bound to RunConfig fields; ``planned`` says in the
    help that the plan sets the fields of :data:`~unetseg.config.PLANNED_FIELDS`."""
    add_flags(p, RunConfig, TRAIN_FLAGS, flags, planned=planned)


def add_prediction_flags(p: argparse.ArgumentParser,
                         flags: typing.Iterable[str] = tuple(PREDICT_FLAGS)) -> None:
    add_flags(p, PredictConfig, PREDICT_FLAGS, flags)


def dest(flag: str) -> str:
    """The argparse attribute of ``flag``."""
    return flag[2:].replace("-", "_")


def predict_config_from_args(args: argparse.Namespace) -> PredictConfig:
    """A PredictConfig with the prediction flags given on the command line."""
    given = {key: getattr(args, dest(flag)) for flag, (key, _, _) in PREDICT_FLAGS.items()
             if getattr(args, dest(flag), None) is not None}
    return PredictConfig(**given)
