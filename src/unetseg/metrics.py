"""Segmentation metrics: one counting step, then pure reductions of the confusion matrix.

:func:`confusion_matrix` (or :class:`ConfusionMatrixMeter` over many batches) counts pixels into a
``(K, K)`` int64 matrix, rows = truth, columns = prediction. Every score is a pure function of that
matrix, so per-image, per-dataset and distributed evaluation all reduce the same way.

Absent-class rule:
    A class that appears in neither the truth nor the prediction (``tp + fp + fn == 0``) has an
    *undefined* IoU and Dice: they are NaN, not 1, and :func:`mean_iou` / :func:`mean_dice` leave
    them out (NaN-mean). A class predicted but absent from the truth scores 0 and counts.
    Precision is NaN for a class never predicted (``tp + fp == 0``), recall is NaN for a class
    absent from the truth (``tp + fn == 0``). :func:`pixel_accuracy` is NaN for an empty matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

IGNORE_INDEX = -1
"""Target id of pixels that are neither counted by the metrics nor trained on by the losses."""


def _check_ids(pred: Tensor, target: Tensor, num_classes: int) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape;"
            " pass class ids (e.g. logits.argmax(1)), cropped to the same size"
        )
    for name, t in (("pred", pred), ("target", target)):
        if t.is_floating_point() or t.is_complex():
            raise TypeError(
                f"{name} must hold integer class ids, got dtype {t.dtype};"
                " convert logits with .argmax(1) and masks with .long()"
            )


def _count_bins(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Pixel counts of each (truth, prediction) pair plus one overflow bin; no host sync.

    Shape:
        pred, target: any matching shape, integer ids.
        Returns: ``(K * K + 1,)`` int64 on the inputs' device. Bin ``t * K + p`` counts pixels of
        truth ``t`` predicted ``p``; the last bin counts non-ignored pixels whose target or
        prediction lies outside ``[0, K)``. Ignored pixels are not counted.
    """
    k = num_classes
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long().to(target.device)
    ignored = target == ignore_index
    in_range = (target >= 0) & (target < k) & (pred >= 0) & (pred < k)
    overflow, dropped = k * k, k * k + 1
    index = torch.where(in_range, target * k + pred, overflow)
    index = torch.where(ignored, dropped, index)  # (P,)
    counts = _bincount(index, k * k + 2, sync_free=index.device.type != "cpu")
    return counts[: k * k + 1]


def _bincount(index: Tensor, bins: int, *, sync_free: bool) -> Tensor:
    """Counts of each value of ``index`` (all in ``[0, bins)``), shape ``(bins,)`` int64.

    ``torch.bincount`` sizes its output from the data, which waits for the device; the
    ``sync_free`` path scatters into a fixed-size tensor instead (used off the CPU).
    """
    if not sync_free:
        return torch.bincount(index, minlength=bins)
    counts = torch.zeros(bins, dtype=torch.int64, device=index.device)
    return counts.scatter_add_(0, index, torch.ones_like(index))


def _matrix_from_bins(counts: Tensor, num_classes: int) -> Tensor:
    """Raise on out-of-range ids (one host sync), else the ``(K, K)`` matrix of the bins."""
    invalid = int(counts[-1])
    if invalid:
        raise ValueError(
            f"{invalid} pixel(s) have a target or prediction outside [0, {num_classes}) that is"
            " not the ignore index; map mask values to class ids 0..K-1 (and ignored pixels to"
            f" {IGNORE_INDEX}) before computing metrics"
        )
    return counts[:-1].reshape(num_classes, num_classes)


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Count pixels by (true class, predicted class).

    Args:
        pred: Predicted class ids, any shape, any integer dtype.
        target: True class ids, same shape as ``pred``; ``ignore_index`` marks pixels to skip.
        num_classes: Number of classes ``K``.
        ignore_index: Target value of pixels that are not counted.

    Returns:
        ``(K, K)`` int64 matrix on ``target``'s device; ``cm[t, p]`` is the number of pixels of
        true class ``t`` predicted as ``p``.

    Raises:
        ValueError: If shapes differ, or a non-ignored pixel has a target or prediction outside
            ``[0, K)``.
        TypeError: If ``pred`` or ``target`` is floating point.

    Shape:
        pred, target: ``(*)``, e.g. ``(N, H, W)``.
        Returns: ``(K, K)``.
    """
    _check_ids(pred, target, num_classes)
    counts = _count_bins(pred, target, num_classes, ignore_index)
    return _matrix_from_bins(counts, num_classes)


def true_positives(cm: Tensor) -> Tensor:
    """Correctly predicted pixels per class. Shape: ``(..., K, K)`` -> ``(..., K)`` float64."""
    return cm.diagonal(dim1=-2, dim2=-1).double()


def false_positives(cm: Tensor) -> Tensor:
    """Pixels predicted as the class but of another class. ``(..., K, K)`` -> ``(..., K)``."""
    return cm.sum(dim=-2).double() - true_positives(cm)


def false_negatives(cm: Tensor) -> Tensor:
    """Pixels of the class predicted as another class. ``(..., K, K)`` -> ``(..., K)``."""
    return cm.sum(dim=-1).double() - true_positives(cm)


def iou(cm: Tensor) -> Tensor:
    """Per-class intersection over union ``tp / (tp + fp + fn)``; NaN for absent classes.

    Shape:
        cm: ``(..., K, K)`` rows = truth. Returns: ``(..., K)`` float64.
    """
    tp = true_positives(cm)
    return tp / (tp + false_positives(cm) + false_negatives(cm))


def dice(cm: Tensor) -> Tensor:
    """Per-class Dice (F1) ``2 tp / (2 tp + fp + fn)``; NaN for absent classes.

    Shape:
        cm: ``(..., K, K)`` rows = truth. Returns: ``(..., K)`` float64.
    """
    tp = true_positives(cm)
    return 2 * tp / (2 * tp + false_positives(cm) + false_negatives(cm))


def precision(cm: Tensor) -> Tensor:
    """Per-class ``tp / (tp + fp)``; NaN for a class never predicted.

    Shape:
        cm: ``(..., K, K)`` rows = truth. Returns: ``(..., K)`` float64.
    """
    tp = true_positives(cm)
    return tp / (tp + false_positives(cm))


def recall(cm: Tensor) -> Tensor:
    """Per-class ``tp / (tp + fn)``; NaN for a class absent from the truth.

    Shape:
        cm: ``(..., K, K)`` rows = truth. Returns: ``(..., K)`` float64.
    """
    tp = true_positives(cm)
    return tp / (tp + false_negatives(cm))


def pixel_accuracy(cm: Tensor) -> Tensor:
    """Share of counted pixels predicted correctly; NaN for an empty matrix.

    Shape:
        cm: ``(..., K, K)``. Returns: ``(...)`` float64.
    """
    return true_positives(cm).sum(dim=-1) / cm.sum(dim=(-2, -1)).double()


def mean_iou(cm: Tensor) -> Tensor:
    """Mean of :func:`iou` over the classes where it is defined (NaN if none is).

    Shape:
        cm: ``(..., K, K)``. Returns: ``(...)`` float64.
    """
    return torch.nanmean(iou(cm), dim=-1)


def mean_dice(cm: Tensor) -> Tensor:
    """Mean of :func:`dice` over the classes where it is defined (NaN if none is).

    Shape:
        cm: ``(..., K, K)``. Returns: ``(...)`` float64.
    """
    return torch.nanmean(dice(cm), dim=-1)


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else x


def summarize(cm: Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """A JSON-ready report of one confusion matrix; undefined scores (NaN) are ``None``.

    Args:
        cm: ``(K, K)`` confusion matrix, rows = truth.
        class_names: ``K`` names, in class-id order.

    Returns:
        ``{"pixel_accuracy", "mean_iou", "mean_dice", "per_class": {name: {"iou", "dice",
        "precision", "recall", "support"}}}`` where ``support`` is the class's number of truth
        pixels (an int).

    Raises:
        ValueError: If ``cm`` is not square or the names do not match its size.
    """
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"expected a (K, K) confusion matrix, got shape {tuple(cm.shape)}")
    if len(class_names) != cm.shape[0]:
        raise ValueError(
            f"got {len(class_names)} class names for a {cm.shape[0]}-class confusion matrix;"
            " pass one name per class id"
        )
    cm = cm.detach().cpu()
    columns = {
        "iou": iou(cm).tolist(),
        "dice": dice(cm).tolist(),
        "precision": precision(cm).tolist(),
        "recall": recall(cm).tolist(),
    }
    support = cm.sum(dim=1).tolist()
    per_class = {
        str(name): {
            **{key: _json_float(values[i]) for key, values in columns.items()},
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "pixel_accuracy": _json_float(float(pixel_accuracy(cm))),
        "mean_iou": _json_float(float(mean_iou(cm))),
        "mean_dice": _json_float(float(mean_dice(cm))),
        "per_class": per_class,
    }


class ConfusionMatrixMeter:
    """Accumulates a confusion matrix over batches, on the batches' device.

    :meth:`update` never waits for the device; out-of-range ids are counted aside and reported by
    :meth:`compute`, which is the only method that reads results back.

    Args:
        num_classes: Number of classes ``K``.
        ignore_index: Target value of pixels that are not counted.

    Example:
        >>> meter = ConfusionMatrixMeter(3)
        >>> for logits, target in batches:  # doctest: +SKIP
        ...     meter.update(logits.argmax(1), target)
        >>> mean_iou(meter.compute())  # doctest: +SKIP
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._counts: Tensor | None = None  # (K * K + 1,) int64, allocated on first update

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch.

        Shape:
            pred, target: ``(*)`` matching, integer class ids (e.g. ``(N, H, W)``).
        """
        _check_ids(pred, target, self.num_classes)
        counts = _count_bins(pred, target, self.num_classes, self.ignore_index)
        if self._counts is None:
            self._counts = counts
        else:
            self._counts += counts.to(self._counts.device, non_blocking=True)

    def compute(self) -> Tensor:
        """The ``(K, K)`` int64 matrix of everything added since the last :meth:`reset`.

        Raises:
            ValueError: If any added non-ignored pixel had an id outside ``[0, K)``.
        """
        if self._counts is None:
            k = self.num_classes
            return torch.zeros(k, k, dtype=torch.int64)
        return _matrix_from_bins(self._counts, self.num_classes).clone()

    def reset(self) -> None:
        """Forget everything added."""
        self._counts = None
