"""Post-processing of label images, and its choice on cross-validation predictions.

Three steps, each for one class ``c`` (never class 0, taken as the background) of a label image
(H, W) of class ids:

* ``largest_component``: keep only the largest connected component of class ``c`` (the first in
  row-major order of the largest, on ties); the rest becomes class 0.
* ``remove_small``: components of class ``c`` of fewer than ``min_size`` pixels become class 0.
* ``fill_holes``: a hole of class ``c`` is a connected component of pixels of other classes that
  does not touch the image border; holes become class ``c``.

Components are 4-connected (pixels sharing an edge), for class ``c`` and for holes alike.

:func:`choose_postprocessing` picks steps as nnU-Net does (Isensee et al., *nnU-Net*, Nature
Methods 2021): with every image's prediction from the fold model that did not train on it, each
foreground class in turn tries the three steps in the order above, each on top of the steps
already kept, and keeps a step only if it raises the cross-validated metric: the mean over the
foreground classes (1..K-1) of their Dice, counted over all images at once. The
``remove_small`` size is learned from the true objects (:func:`learned_min_size`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from unetseg.metrics import confusion_matrix, dice

STEP_KINDS = ("largest_component", "remove_small", "fill_holes")
MIN_SIZE_PERCENTILE = 5.0
"""Percentile of the true component areas of a class below which predicted components are
removed by ``remove_small``."""


@dataclass(frozen=True)
class Step:
    """One post-processing step: ``kind`` (one of :data:`STEP_KINDS`) for class id
    ``class_id``; ``min_size`` (pixels) for ``remove_small``."""

    kind: str
    class_id: int
    min_size: int = 0

    def __post_init__(self) -> None:
        if self.kind not in STEP_KINDS:
            raise ValueError(f"unknown post-processing step {self.kind!r}; use one of"
                             f" {', '.join(STEP_KINDS)}")
        if self.class_id < 1:
            raise ValueError("post-processing applies to foreground classes (ids >= 1)")

    def to_dict(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready; with ``names`` the class name too (for readers)."""
        d: dict[str, Any] = {"step": self.kind, "class_id": self.class_id}
        if names is not None:
            d["class"] = names[self.class_id]
        if self.kind == "remove_small":
            d["min_size"] = self.min_size
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Step:
        return cls(str(d["step"]), int(d["class_id"]), int(d.get("min_size", 0)))

    def describe(self, names: Sequence[str]) -> str:
        name = names[self.class_id] if self.class_id < len(names) else str(self.class_id)
        if self.kind == "remove_small":
            return f"{name}: remove components under {self.min_size} px"
        return {"largest_component": f"{name}: keep the largest component",
                "fill_holes": f"{name}: fill holes"}[self.kind]


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected components of a boolean mask: (component ids (H, W), 0 outside; pixel
    counts per id, index 0 the outside)."""
    labelled, _ = ndimage.label(mask)
    return labelled, np.bincount(labelled.ravel())


def keep_largest_component(labels: np.ndarray, class_id: int) -> np.ndarray:
    """``labels`` with every component of ``class_id`` but the largest set to class 0."""
    out = labels.copy()
    mask = labels == class_id
    components, sizes = _components(mask)
    if len(sizes) <= 2:  # none or one component
        return out
    keep = int(np.argmax(sizes[1:])) + 1  # the first of the largest, in raster order
    out[mask & (components != keep)] = 0
    return out


def remove_small_components(labels: np.ndarray, class_id: int, min_size: int) -> np.ndarray:
    """``labels`` with the components of ``class_id`` of fewer than ``min_size`` pixels set to
    class 0."""
    out = labels.copy()
    components, sizes = _components(labels == class_id)
    small = sizes < min_size
    small[0] = False
    out[small[components]] = 0
    return out


def fill_holes(labels: np.ndarray, class_id: int) -> np.ndarray:
    """``labels`` with the holes of ``class_id`` (see the module's text) set to it."""
    out = labels.copy()
    mask = labels == class_id
    out[ndimage.binary_fill_holes(mask) & ~mask] = class_id
    return out


def apply_step(labels: np.ndarray, step: Step) -> np.ndarray:
    """``labels`` (H, W) after one step (a new array)."""
    if step.kind == "largest_component":
        return keep_largest_component(labels, step.class_id)
    if step.kind == "remove_small":
        return remove_small_components(labels, step.class_id, step.min_size)
    return fill_holes(labels, step.class_id)


def apply_postprocessing(labels: np.ndarray, steps: Sequence[Step]) -> np.ndarray:
    """``labels`` (H, W) after ``steps`` in order; ``labels`` itself when there are none."""
    for step in steps:
        labels = apply_step(labels, step)
    return labels


def component_areas(labels: np.ndarray, class_id: int) -> np.ndarray:
    """Pixel counts of the 4-connected components of ``class_id`` in ``labels``."""
    return _components(labels == class_id)[1][1:]


def learned_min_size(areas: np.ndarray, percentile: float = MIN_SIZE_PERCENTILE) -> int:
    """The ``remove_small`` size for a class with true component ``areas``: their
    ``percentile``-th percentile, rounded down (0, removing nothing, without areas)."""
    if len(areas) == 0:
        return 0
    return int(math.floor(float(np.percentile(areas, percentile))))


def foreground_dice(cm: torch.Tensor) -> float:
    """Mean Dice of classes 1..K-1 of a (K, K) confusion matrix (classes absent from both
    prediction and truth left out); NaN when none is defined."""
    values = dice(cm)[1:]
    values = values[~torch.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


@dataclass(frozen=True)
class Trial:
    """One step tried by :func:`choose_postprocessing`: the metric with it, and whether kept."""

    step: Step
    score: float
    kept: bool


@dataclass(frozen=True)
class Selection:
    """The steps kept, the metric before (``baseline``) and after (``score``), every trial."""

    steps: tuple[Step, ...]
    baseline: float
    score: float
    trials: tuple[Trial, ...] = field(default_factory=tuple)

    def to_dict(self, names: Sequence[str]) -> dict[str, Any]:
        return {"metric": "mean foreground Dice (classes 1..K-1), pooled over the held-out"
                          " predictions of every fold",
                "before": _finite(self.baseline), "after": _finite(self.score),
                "trials": [{**t.step.to_dict(names), "score": _finite(t.score), "kept": t.kept}
                           for t in self.trials]}


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


def _confusion(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> torch.Tensor:
    return confusion_matrix(torch.from_numpy(np.ascontiguousarray(pred)),
                            torch.from_numpy(np.ascontiguousarray(truth)), num_classes)


def choose_postprocessing(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                          num_classes: int, min_sizes: Mapping[int, int]) -> Selection:
    """The steps that raise the cross-validated metric (see the module's text).

    Args:
        predictions: predicted class ids (H, W) per image, each from a model that did not
            train on it.
        truths: the true class ids, same shapes; :data:`~unetseg.data.classes.IGNORE_INDEX`
            pixels are not counted.
        num_classes: K.
        min_sizes: class id -> ``remove_small`` size; a class without one (or with a size
            of at most 1, which removes nothing) does not try the step.
    """
    current = list(predictions)
    confusions = [_confusion(p, t, num_classes) for p, t in zip(current, truths)]
    baseline = best = foreground_dice(sum(confusions, torch.zeros(num_classes, num_classes,
                                                                  dtype=torch.int64)))
    kept: list[Step] = []
    trials: list[Trial] = []
    for class_id in range(1, num_classes):
        for kind in STEP_KINDS:
            size = min_sizes.get(class_id, 0)
            if kind == "remove_small" and size <= 1:
                continue
            step = Step(kind, class_id, size if kind == "remove_small" else 0)
            trial = [apply_step(p, step) for p in current]
            trial_cms = [cm if np.array_equal(new, old) else _confusion(new, t, num_classes)
                         for new, old, t, cm in zip(trial, current, truths, confusions)]
            score = foreground_dice(sum(trial_cms, torch.zeros(num_classes, num_classes,
                                                               dtype=torch.int64)))
            better = score > best or (math.isnan(best) and not math.isnan(score))
            trials.append(Trial(step, score, better))
            if better:
                current, confusions, best = trial, trial_cms, score
                kept.append(step)
    return Selection(tuple(kept), baseline, best, tuple(trials))
