"""Prediction of an image layer's data, without Qt: which model file, every image of the
layer through :meth:`~unetseg.infer.engine.ImagePredictor.logits` (the tiling of ``unetseg
predict``), progress after each batch of tiles, and stopping between batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.config import InstanceConfig
from unetseg.data.classes import ClassTable
from unetseg.errors import UserError
from unetseg.infer.instances import instances_from_logits
from unetseg.infer.predict import logits_to_labels
from unetseg.napari.labels import class_values, ids_to_values, value_dtype
from unetseg.napari.planes import Planes

MODEL_SUFFIX = ".safetensors"
RUN_MODEL = "best.safetensors"


class Cancelled(Exception):
    """Raised between two batches of tiles when Cancel was pressed."""


def resolve_model_file(path: str | Path) -> tuple[Path, str]:
    """The model file to load for what was chosen, and a note when it is not the choice itself.

    A run folder gives its ``best.safetensors``; a folder of exactly one model file gives that
    file. Several models averaged (a model set) are not supported yet.

    Raises:
        UserError: nothing chosen, no model file in the folder, or several.
    """
    path = Path(path)
    if str(path) in ("", "."):
        raise UserError("choose a model file (best.safetensors of a training run) first")
    if not path.is_dir():
        return path, ""
    if (path / RUN_MODEL).is_file():
        return path / RUN_MODEL, f" (the run folder's {RUN_MODEL})"
    found = sorted(path.glob(f"*{MODEL_SUFFIX}"))
    if len(found) == 1:
        return found[0], f" (the folder's one model file, {found[0].name})"
    if not found:
        raise UserError(f"{path}: no {MODEL_SUFFIX} model file in this folder; choose a model"
                        " file")
    raise UserError(f"{path}: holds {len(found)} model files; predicting with several models"
                    " averaged is not supported yet, so choose one of them")


def predict_planes(predictor: Any, classes: ClassTable, planes: Planes, *, name: str = "image",
                   on_progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   instance: InstanceConfig | None = None) -> np.ndarray:
    """Class values (``planes.labels_shape``) of every image of ``planes``, each predicted by
    ``predictor.logits`` (an :class:`~unetseg.infer.engine.ImagePredictor`) as ``unetseg
    predict`` predicts a file; with ``instance`` (an instance model's card) object ids
    instead, int32, 0 background (:mod:`unetseg.infer.instances`).

    ``on_progress`` gets (tiles done, tiles in all) over all images after each batch of tiles;
    ``should_stop`` is asked before each batch and True raises :class:`Cancelled`.
    """
    dtype = np.int32 if instance is not None else value_dtype(class_values(classes)[-1])
    out = np.empty(planes.labels_shape, dtype)
    for i, index in enumerate(planes.indices()):
        if should_stop is not None and should_stop():
            raise Cancelled

        def on_batch(done: int, total: int, before: int = i) -> None:
            if on_progress is not None:
                on_progress(before * total + done, planes.count * total)
            if should_stop is not None and should_stop():
                raise Cancelled

        logits = predictor.logits(planes.image(index, name), on_batch=on_batch)
        if instance is not None:
            out[index] = instances_from_logits(logits, instance)
        else:
            out[index] = ids_to_values(logits_to_labels(logits).numpy(), classes)
    return out
