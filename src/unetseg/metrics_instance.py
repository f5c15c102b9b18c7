"""Object-level scores: how many objects were found, split or merged, not only which pixels.

Inputs are integer label images of one shape: 0 is background, every other value one object
(ids need not be consecutive; a bool image is one object). The scores follow two conventions:

* **Matching.** A predicted object *hits* a true object when their IoU is **strictly greater**
  than the threshold, as in the 2018 Data Science Bowl ("a true positive is counted when a
  single predicted object matches a ground truth object with an IoU above the threshold"; its
  reference kernel tests ``iou > t``). At thresholds >= 0.5 strictness makes every hit unique:
  two objects with IoU > 0.5 to one object would each share more than half of its pixels. With
  ``>=`` an object split exactly in two halves would have two partners at 0.5. Below 0.5 one
  object can hit several, and :func:`matched_pairs` then takes a matching with the most pairs
  (ties broken towards the highest total IoU). TP = matched pairs, FP = unmatched predicted
  objects, FN = unmatched true objects.
* **The DSB 2018 score** of one image is the mean over the thresholds 0.5, 0.55, ..., 0.95 of
  ``TP / (TP + FP + FN)``; a data set's score is the mean over its images.
* **Panoptic quality** (Kirillov et al., CVPR 2019), always at IoU > 0.5:
  ``PQ = sum of the matches' IoU / (TP + FP/2 + FN/2) = SQ * RQ`` with ``SQ`` the mean IoU of
  the matches and ``RQ = TP / (TP + FP/2 + FN/2)`` (the F1 score at 0.5).

Undefined cases:

* **Both images empty** (no true and no predicted object): every ratio whose denominator
  counts both (F1, the DSB score, RQ, PQ) is 1.0, a perfect answer: nothing was to be found and
  nothing was found, so the image does not lower a data set's mean. The DSB reference kernel
  divides by zero here (its stage-1 test set had no empty image).
* Precision with no predicted object, recall with no true object and SQ without a match are
  NaN (``None`` in JSON) and left out of means.

:func:`overlaps` finds the IoU of every overlapping pair from one joint histogram of (true,
predicted) ids, so it costs a few passes over the pixels however many objects there are;
:func:`instance_scores` works from those pairs alone. :func:`instance_iou` spreads them into the
full ``(n_true, n_pred)`` matrix (``8 * n_true * n_pred`` bytes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DSB_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.arange(0.5, 1.0, 0.05).round(2))
"""IoU thresholds of the 2018 Data Science Bowl: 0.5, 0.55, ..., 0.95."""
PQ_THRESHOLD = 0.5
"""Panoptic quality matches objects at IoU > 0.5 (where matches are unique)."""


def _check_labels(truth: np.ndarray, pred: np.ndarray) -> None:
    for name, labels in (("truth", truth), ("pred", pred)):
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
            raise ValueError(f"{name} must be an integer label image, got dtype {labels.dtype}")
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and pred {pred.shape} must have one shape")


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Number the objects of a label image ``1..n`` in ascending id order.

    Returns:
        ``(ids, index, areas)``: the ``(n,)`` object ids (sorted, 0 left out), ``index`` of
        ``labels``' shape, int64 (0 = background, ``i + 1`` = the object ``ids[i]``), and the
        ``(n,)`` int64 areas in pixels. Ids in ``[0, 4 * size]`` are counted in one pass;
        others (negative or large) are sorted.
    """
    labels = np.asarray(labels)
    flat = labels.ravel()
    if labels.dtype == np.bool_:
        flat = flat.view(np.uint8)
    low = int(flat.min()) if flat.size else 0
    high = int(flat.max()) if flat.size else 0
    if low >= 0 and high <= 4 * flat.size + 255:
        flat = flat.astype(np.intp, copy=False)
        counts = np.bincount(flat, minlength=1)
        counts[0] = 0
        present = counts > 0
        lookup = np.cumsum(present)
        lookup[~present] = 0
        ids = np.flatnonzero(present)
        ids = ids if labels.dtype == np.bool_ else ids.astype(labels.dtype, copy=False)
        return ids, lookup[flat].reshape(labels.shape), counts[present].astype(np.int64)
    ids, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    objects = ids != 0
    index = np.zeros(ids.size, np.int64)
    index[objects] = np.arange(1, int(objects.sum()) + 1)
    return (ids[objects], index[inverse.ravel()].reshape(labels.shape),
            counts[objects].astype(np.int64))


@dataclass(frozen=True)
class Overlaps:
    """The pairs of objects that overlap, without the ``(n_true, n_pred)`` matrix.

    Attributes:
        true_ids, pred_ids: the object ids of each image, ascending.
        rows, cols: ``(m,)`` int64 indices into ``true_ids`` and ``pred_ids`` of the pairs that
            share at least one pixel, sorted.
        iou: ``(m,)`` float64 IoU of those pairs (every other pair has IoU 0).
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    iou: np.ndarray

    def dense(self) -> np.ndarray:
        """The ``(n_true, n_pred)`` IoU matrix."""
        out = np.zeros((self.true_ids.size, self.pred_ids.size))
        out[self.rows, self.cols] = self.iou
        return out


def overlaps(truth: np.ndarray, pred: np.ndarray) -> Overlaps:
    """The IoU of every pair of overlapping objects, from one joint histogram of (true,
    predicted) ids: counted in one pass when the pairs of ids are few, else over the pixels
    where both images hold an object. Memory grows with the pixels and the overlapping pairs,
    not with ``n_true * n_pred``.

    Args:
        truth: integer labels (any shape), 0 = background.
        pred: labels of the same shape.
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    _check_labels(truth, pred)
    true_ids, true_index, true_area = compact_labels(truth)
    pred_ids, pred_index, pred_area = compact_labels(pred)
    columns = pred_ids.size + 1
    if (true_ids.size + 1) * columns <= 4 * truth.size + 4096:
        joint = np.bincount((true_index * columns + pred_index).ravel(),
                            minlength=(true_ids.size + 1) * columns).reshape(-1, columns)
        rows, cols = np.nonzero(joint[1:, 1:])
        shared = joint[1:, 1:][rows, cols]
    else:
        both = (true_index > 0) & (pred_index > 0)
        codes, shared = np.unique(true_index[both] * columns + pred_index[both],
                                  return_counts=True)
        rows, cols = codes // columns - 1, codes % columns - 1
    rows, cols = rows.astype(np.int64), cols.astype(np.int64)
    intersection = shared.astype(np.float64)
    iou = intersection / (true_area[rows] + pred_area[cols] - intersection)
    return Overlaps(true_ids, pred_ids, rows, cols, iou)


def instance_iou(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every (true, predicted) pair of objects.

    Args:
        truth: ``(H, W)`` (any shape) integer labels, 0 = background.
        pred: labels of the same shape.

    Returns:
        ``(iou, true_ids, pred_ids)``: ``iou`` is ``(n_true, n_pred)`` float64 in ``[0, 1]``,
        row ``i`` for the object ``true_ids[i]`` and column ``j`` for ``pred_ids[j]`` (ids
        sorted ascending, their original values). It takes ``8 * n_true * n_pred`` bytes; for
        images with thousands of objects see :func:`overlaps`.
    """
    found = overlaps(truth, pred)
    return found.dense(), found.true_ids, found.pred_ids


def matched_pairs(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The matched (row, column) pairs of an IoU matrix: IoU strictly above ``threshold``.

    At ``threshold >= 0.5`` every object has at most one such partner, so the pairs are simply
    those above the threshold. Below 0.5 a matching with the most pairs is taken (Hungarian
    algorithm on the hits, ties towards the highest total IoU).

    Returns:
        ``(rows, cols)`` int64 arrays of equal length, sorted by row.
    """
    iou = np.asarray(iou, np.float64)
    hits = iou > threshold
    if threshold >= 0.5 or not hits.any():
        rows, cols = np.nonzero(hits)
        return rows.astype(np.int64), cols.astype(np.int64)
    from scipy.optimize import linear_sum_assignment

    # one hit outweighs any sum of IoU (< min(shape) / (2 * min(shape)) = 0.5)
    cost = -hits.astype(np.float64) - iou * hits / (2.0 * min(iou.shape))
    rows, cols = linear_sum_assignment(cost)
    keep = hits[rows, cols]
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


def match_instances(iou: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` of one image at one IoU threshold (a hit is IoU > threshold).

    Args:
        iou: ``(n_true, n_pred)`` from :func:`instance_iou`.
        threshold: in ``[0, 1)``; the DSB 2018 uses 0.5, 0.55, ..., 0.95.
    """
    n_true, n_pred = np.shape(iou)
    tp = int(matched_pairs(iou, threshold)[0].size)
    return tp, n_pred - tp, n_true - tp


def _ratio(num: float, den: float, empty: float = math.nan) -> float:
    return num / den if den > 0 else empty


def _json(x: float) -> float | None:
    return None if math.isnan(x) else x


@dataclass(frozen=True)
class InstanceScores:
    """Object-level scores of one image (see the module's conventions).

    Attributes:
        thresholds: the IoU thresholds, ascending.
        tp, fp, fn: matches, unmatched predicted and unmatched true objects, per threshold.
        n_true, n_pred: object counts.
        pq_tp: matches at IoU > 0.5 (the panoptic quality's TP).
        pq_iou_sum: the sum of those matches' IoU.
    """

    thresholds: tuple[float, ...]
    tp: tuple[int, ...]
    fp: tuple[int, ...]
    fn: tuple[int, ...]
    n_true: int
    n_pred: int
    pq_tp: int
    pq_iou_sum: float

    @property
    def empty(self) -> bool:
        """Neither image holds an object."""
        return self.n_true == 0 and self.n_pred == 0

    @property
    def precision(self) -> tuple[float, ...]:
        """``TP / (TP + FP)`` per threshold; NaN without predicted objects."""
        return tuple(_ratio(tp, tp + fp) for tp, fp in zip(self.tp, self.fp))

    @property
    def recall(self) -> tuple[float, ...]:
        """``TP / (TP + FN)`` per threshold; NaN without true objects."""
        return tuple(_ratio(tp, tp + fn) for tp, fn in zip(self.tp, self.fn))

    @property
    def f1(self) -> tuple[float, ...]:
        """``2 TP / (2 TP + FP + FN)`` per threshold; 1.0 when both images are empty."""
        return tuple(_ratio(2 * tp, 2 * tp + fp + fn, 1.0)
                     for tp, fp, fn in zip(self.tp, self.fp, self.fn))

    @property
    def dsb(self) -> tuple[float, ...]:
        """``TP / (TP + FP + FN)`` per threshold; 1.0 when both images are empty."""
        return tuple(_ratio(tp, tp + fp + fn, 1.0)
                     for tp, fp, fn in zip(self.tp, self.fp, self.fn))

    @property
    def dsb_score(self) -> float:
        """The 2018 Data Science Bowl score of the image: the mean of :attr:`dsb`."""
        return float(np.mean(self.dsb)) if self.thresholds else math.nan

    @property
    def pq_fp(self) -> int:
        return self.n_pred - self.pq_tp

    @property
    def pq_fn(self) -> int:
        return self.n_true - self.pq_tp

    @property
    def sq(self) -> float:
        """Segmentation quality: the mean IoU of the matches at IoU > 0.5; NaN without one."""
        return _ratio(self.pq_iou_sum, self.pq_tp)

    @property
    def rq(self) -> float:
        """Recognition quality ``TP / (TP + FP/2 + FN/2)`` at IoU > 0.5; 1.0 when empty."""
        return _ratio(self.pq_tp, self.pq_tp + 0.5 * (self.pq_fp + self.pq_fn), 1.0)

    @property
    def pq(self) -> float:
        """Panoptic quality ``sum IoU / (TP + FP/2 + FN/2)`` (= SQ * RQ); 1.0 when empty."""
        return _ratio(self.pq_iou_sum, self.pq_tp + 0.5 * (self.pq_fp + self.pq_fn), 1.0)

    @property
    def count_error(self) -> int:
        """Predicted minus true objects (negative: objects missed or merged)."""
        return self.n_pred - self.n_true

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; undefined scores (NaN) are ``None``."""
        return {
            "thresholds": list(self.thresholds), "tp": list(self.tp), "fp": list(self.fp),
            "fn": list(self.fn), "precision": [_json(x) for x in self.precision],
            "recall": [_json(x) for x in self.recall], "f1": list(self.f1),
            "dsb": list(self.dsb), "dsb_score": _json(self.dsb_score),
            "pq": self.pq, "sq": _json(self.sq), "rq": self.rq, "pq_tp": self.pq_tp,
            "pq_fp": self.pq_fp, "pq_fn": self.pq_fn, "pq_iou_sum": self.pq_iou_sum,
            "n_true": self.n_true, "n_pred": self.n_pred, "count_error": self.count_error,
        }


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(t) for t in thresholds)
    if any(not 0.0 <= t < 1.0 for t in out) or list(out) != sorted(out):
        raise ValueError(f"thresholds must be ascending in [0, 1), got {out}")
    return out


def _sparse_tp(found: Overlaps, threshold: float) -> int:
    """Matches at one threshold from the overlapping pairs: the pairs above it at >= 0.5, a
    maximum matching of them below."""
    hits = found.iou > threshold
    if threshold >= 0.5 or not hits.any():
        return int(hits.sum())
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    graph = csr_matrix((np.ones(int(hits.sum())), (found.rows[hits], found.cols[hits])),
                       shape=(found.true_ids.size, found.pred_ids.size))
    return int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())


def scores_from_overlaps(found: Overlaps,
                         thresholds: Sequence[float] = DSB_THRESHOLDS) -> InstanceScores:
    """:class:`InstanceScores` of one image from its :func:`overlaps`."""
    thresholds = _check_thresholds(thresholds)
    n_true, n_pred = int(found.true_ids.size), int(found.pred_ids.size)
    tp = tuple(_sparse_tp(found, t) for t in thresholds)
    matched = found.iou > PQ_THRESHOLD
    return InstanceScores(thresholds, tp, tuple(n_pred - k for k in tp),
                          tuple(n_true - k for k in tp), n_true=n_true, n_pred=n_pred,
                          pq_tp=int(matched.sum()), pq_iou_sum=float(found.iou[matched].sum()))


def scores_from_iou(iou: np.ndarray,
                    thresholds: Sequence[float] = DSB_THRESHOLDS) -> InstanceScores:
    """:class:`InstanceScores` of one image from its ``(n_true, n_pred)`` IoU matrix."""
    iou = np.asarray(iou, np.float64)
    thresholds = _check_thresholds(thresholds)
    counts = [match_instances(iou, t) for t in thresholds]
    rows, cols = matched_pairs(iou, PQ_THRESHOLD)
    return InstanceScores(thresholds, tuple(c[0] for c in counts), tuple(c[1] for c in counts),
                          tuple(c[2] for c in counts), n_true=int(iou.shape[0]),
                          n_pred=int(iou.shape[1]), pq_tp=int(rows.size),
                          pq_iou_sum=float(iou[rows, cols].sum()))


def instance_scores(truth: np.ndarray, pred: np.ndarray,
                    thresholds: Sequence[float] = DSB_THRESHOLDS) -> InstanceScores:
    """Object-level scores of one image: per threshold TP/FP/FN, precision, recall, F1 and the
    DSB 2018 score; PQ/SQ/RQ; object counts. Computed from the overlapping pairs only
    (:func:`overlaps`), so images with many objects need no ``n_true * n_pred`` matrix.

    Args:
        truth: true labels ``(H, W)``, 0 = background.
        pred: predicted labels of the same shape.
        thresholds: IoU thresholds, ascending in ``[0, 1)`` (default: the DSB 2018's).
    """
    return scores_from_overlaps(overlaps(truth, pred), thresholds)


def total_instance_scores(per_image: Sequence[InstanceScores]) -> dict[str, Any]:
    """A data set's scores from its images' :class:`InstanceScores`.

    Precision, recall, F1 and PQ/SQ/RQ come from the TP/FP/FN (and matched IoU) summed over the
    images, so every object weighs the same; the DSB 2018 score is the mean of the images'
    scores (the competition's rule), so every image weighs the same. NaN is ``None``.

    Returns:
        a JSON-ready dict: ``images``, ``thresholds``, summed ``tp``/``fp``/``fn`` and
        ``precision``/``recall``/``f1`` per threshold, ``dsb_score`` and ``dsb`` (the mean over
        images per threshold), ``pq``/``sq``/``rq`` with their summed parts, ``n_true``,
        ``n_pred``, ``count_error`` (summed) and ``mean_abs_count_error`` (per image).

    Raises:
        ValueError: no image, or images scored at different thresholds.
    """
    if not per_image:
        raise ValueError("no image to total")
    thresholds = per_image[0].thresholds
    if any(s.thresholds != thresholds for s in per_image):
        raise ValueError("every image must be scored at the same thresholds")
    tp = np.sum([s.tp for s in per_image], axis=0, dtype=np.int64).reshape(-1)
    fp = np.sum([s.fp for s in per_image], axis=0, dtype=np.int64).reshape(-1)
    fn = np.sum([s.fn for s in per_image], axis=0, dtype=np.int64).reshape(-1)
    total = InstanceScores(thresholds, tuple(int(x) for x in tp), tuple(int(x) for x in fp),
                           tuple(int(x) for x in fn),
                           n_true=sum(s.n_true for s in per_image),
                           n_pred=sum(s.n_pred for s in per_image),
                           pq_tp=sum(s.pq_tp for s in per_image),
                           pq_iou_sum=float(sum(s.pq_iou_sum for s in per_image)))
    dsb = np.mean([s.dsb for s in per_image], axis=0).reshape(-1)
    return {
        "images": len(per_image), "thresholds": list(thresholds), "tp": list(total.tp),
        "fp": list(total.fp), "fn": list(total.fn),
        "precision": [_json(x) for x in total.precision],
        "recall": [_json(x) for x in total.recall], "f1": list(total.f1),
        "dsb_score": _json(float(np.mean([s.dsb_score for s in per_image]))),
        "dsb": [float(x) for x in dsb],
        "pq": total.pq, "sq": _json(total.sq), "rq": total.rq, "pq_tp": total.pq_tp,
        "pq_fp": total.pq_fp, "pq_fn": total.pq_fn, "pq_iou_sum": total.pq_iou_sum,
        "n_true": total.n_true, "n_pred": total.n_pred, "count_error": total.count_error,
        "mean_abs_count_error": float(np.mean([abs(s.count_error) for s in per_image])),
    }
