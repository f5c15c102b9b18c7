"""The ISBI 2012 EM segmentation challenge's metrics on binary object/boundary maps.

The challenge (Arganda-Carreras et al., *Crowdsourcing the creation of image segmentation
algorithms for connectomics*, Front. Neuroanat. 2015) scored a probability map of the *objects*
(cells; the boundaries are membranes) by thresholding it at 0.0, 0.1, ..., 0.9 (an object
pixel is ``p > t``) and reporting, for each metric, its best value over the thresholds.
(The challenge's script also stepped on to about 1.0; for probabilities in [0, 1] a threshold
of 1.0 turns every pixel into boundary, a degenerate map whose warping error is just the number
of true objects, so it is not a default threshold.)

* **pixel error**: the share of pixels whose binary label differs from the truth.
* **Rand error**: ``1 - V_rand``, the foreground-restricted Rand F-score. Segments are the
  4-connected components of the object pixels. Only pixels that are objects in the truth count;
  a predicted boundary pixel among them is a segment of its own. With ``n_ij`` the pixels of
  truth segment ``j`` in predicted segment ``i``, ``t_j`` and ``s_i`` the sums,
  ``V_rand = 2 sum n_ij^2 / (sum s_i^2 + sum t_j^2)`` (``sum n_ij^2 / sum t_j^2`` is the split
  score, ``sum n_ij^2 / sum s_i^2`` the merge score).
* **warping error** (Jain et al., *Boundary learning by optimization with topological
  constraints*, CVPR 2010): the truth is warped towards the prediction by flipping, one at a
  time, pixels where they disagree that are *simple* (flipping them changes no topology: no
  object split, merged, created or deleted, no hole made or filled); the pixels where the
  warped truth still disagrees are topological errors, counted and divided by the pixel count.
  Objects are 4-connected and boundaries 8-connected (the digital-topology pair that makes
  a one-pixel diagonal membrane a separating wall); outside the image is boundary, so an
  object touching the frame stays one object.

Every metric is a counting step (:func:`isbi_counts`, one image, all thresholds) and a pure
reduction (:func:`isbi_summary`), so the counts of many images add up (the Rand sums pool the
images' segments; their pixel errors pool their pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))
"""0.0, 0.1, ..., 0.9: the challenge's thresholds of the object probability."""

_FOUR = ndimage.generate_binary_structure(2, 1)
_EIGHT = ndimage.generate_binary_structure(2, 2)
# the 8 neighbours of a pixel, clockwise from the top-left; bit i of a code is neighbour i
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


# ----------------------------------------------------------------------------- pixel and Rand


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} must be equal 2-D"
                         " shapes (H, W)")


def pixel_error(pred_objects: np.ndarray, truth_objects: np.ndarray) -> float:
    """Share of pixels labelled differently (object vs boundary). Shape: (H, W) bool each."""
    _check_pair(pred_objects, truth_objects)
    return float(np.count_nonzero(pred_objects != truth_objects)) / pred_objects.size


def rand_sums(pred_objects: np.ndarray, truth_objects: np.ndarray) -> tuple[int, int, int]:
    """``(sum n_ij^2, sum s_i^2, sum t_j^2)`` of the foreground-restricted Rand index.

    Segments are 4-connected components of the object pixels; only pixels that are objects in
    the truth count, and a predicted boundary pixel among them is its own segment.
    """
    _check_pair(pred_objects, truth_objects)
    truth_labels, _ = ndimage.label(truth_objects, structure=_FOUR)
    pred_labels, _ = ndimage.label(pred_objects, structure=_FOUR)
    inside = truth_labels > 0
    t, s = truth_labels[inside].astype(np.int64), pred_labels[inside].astype(np.int64)
    singles = int(np.count_nonzero(s == 0))
    t, s = t[s > 0], s[s > 0]
    joint = np.unique(t * (int(s.max(initial=0)) + 1) + s, return_counts=True)[1]
    pred_sizes = np.bincount(s)[1:]
    truth_sizes = np.bincount(truth_labels[inside])[1:]
    sum_joint = int(np.sum(joint.astype(np.int64) ** 2)) + singles
    sum_pred = int(np.sum(pred_sizes.astype(np.int64) ** 2)) + singles
    return sum_joint, sum_pred, int(np.sum(truth_sizes.astype(np.int64) ** 2))


def rand_error(pred_objects: np.ndarray, truth_objects: np.ndarray) -> float:
    """``1 - V_rand``, the foreground-restricted Rand error (0 when the truth has no object)."""
    return _rand_error_of(*rand_sums(pred_objects, truth_objects))


def _rand_error_of(joint: float, pred: float, truth: float) -> float:
    return 1.0 - 2.0 * joint / (pred + truth) if pred + truth > 0 else 0.0


# ----------------------------------------------------------------------------- simple points


def _components_in_ring(ring: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Labels of ``ring`` (3x3 bool, centre False) under ``structure``."""
    labels, _ = ndimage.label(ring, structure=structure)
    return labels


@lru_cache(maxsize=1)
def simple_point_table() -> np.ndarray:
    """(256,) bool: whether a pixel whose 8 neighbours have the boundary pattern ``code`` is
    simple for (8-connected boundary, 4-connected objects).

    A pixel is simple iff the boundary pixels among its 8 neighbours form exactly one
    8-connected component and the object pixels among them exactly one 4-connected component
    that touches one of its 4 nearest neighbours (the topological numbers T8 = T4' = 1).
    Flipping it either way then changes no connectivity of either set.
    """
    table = np.zeros(256, bool)
    for code in range(256):
        boundary = np.zeros((3, 3), bool)
        for bit, (dy, dx) in enumerate(_OFFSETS):
            boundary[1 + dy, 1 + dx] = bool(code >> bit & 1)
        objects = ~boundary
        objects[1, 1] = False
        t8 = _components_in_ring(boundary, _EIGHT).max()
        obj_labels = _components_in_ring(objects, _FOUR)
        touching = {obj_labels[1 + dy, 1 + dx] for dy, dx in ((-1, 0), (0, 1), (1, 0), (0, -1))}
        touching.discard(0)
        table[code] = t8 == 1 and len(touching) == 1
    return table


def _codes(padded: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Boundary-pattern codes of pixels ``(ys, xs)`` of a boundary map padded by 1 pixel."""
    codes = np.zeros(ys.shape, np.int64)
    for bit, (dy, dx) in enumerate(_OFFSETS):
        codes |= padded[ys + 1 + dy, xs + 1 + dx].astype(np.int64) << bit
    return codes


def warp_truth(pred_objects: np.ndarray, truth_objects: np.ndarray) -> np.ndarray:
    """The truth warped towards the prediction by flipping simple points (Jain et al. 2010).

    Disagreeing pixels are visited in four interleaved phases (rows and columns of one parity
    each): pixels of one phase are at least 2 apart, so none is in another's neighbourhood and
    flipping all simple ones at once equals flipping them one after the other. Phases repeat
    until a full round flips nothing; every remaining disagreement is then a non-simple pixel.

    Returns:
        (H, W) bool object map with the truth's topology.
    """
    _check_pair(pred_objects, truth_objects)
    table = simple_point_table()
    boundary_pred = ~pred_objects.astype(bool)
    padded = np.pad(~truth_objects.astype(bool), 1, constant_values=True)  # outside = boundary
    inner = padded[1:-1, 1:-1]  # a view: flips land in `padded`
    ys, xs = np.nonzero(inner != boundary_pred)  # only these can flip; a flip resolves one
    phases = [(ys % 2 == py) & (xs % 2 == px) for py, px in _PHASES]
    pending = [(ys[p], xs[p]) for p in phases]
    while True:
        flipped = 0
        for i, (py, px) in enumerate(pending):
            simple = table[_codes(padded, py, px)]
            if simple.any():
                inner[py[simple], px[simple]] ^= True
                pending[i] = (py[~simple], px[~simple])
                flipped += int(simple.sum())
        if flipped == 0:
            return ~inner.copy()


def warping_error(pred_objects: np.ndarray, truth_objects: np.ndarray) -> float:
    """Share of pixels where the warped truth (:func:`warp_truth`) differs from the prediction."""
    warped = warp_truth(pred_objects, truth_objects)
    return float(np.count_nonzero(warped != pred_objects.astype(bool))) / warped.size


# ----------------------------------------------------------------------------- over thresholds


@dataclass
class IsbiCounts:
    """Counts of one or more images at each threshold; add them to pool images.

    Attributes:
        thresholds: (T,) object-probability thresholds.
        pixels: pixels counted.
        pixel_errors, warping_errors: (T,) mismatched pixels before / after warping.
        warping_clusters: (T,) 8-connected groups of pixels left after warping.
        rand_joint, rand_pred, rand_truth: (T,) ``sum n_ij^2``, ``sum s_i^2``, ``sum t_j^2``.
    """

    thresholds: tuple[float, ...]
    pixels: int = 0
    pixel_errors: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    warping_errors: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    warping_clusters: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rand_joint: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rand_pred: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rand_truth: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        n = len(self.thresholds)
        for name in ("pixel_errors", "warping_errors", "warping_clusters", "rand_joint",
                     "rand_pred", "rand_truth"):
            if getattr(self, name).shape != (n,):
                setattr(self, name, np.zeros(n, np.int64))

    def __add__(self, other: IsbiCounts) -> IsbiCounts:
        if tuple(other.thresholds) != tuple(self.thresholds):
            raise ValueError("cannot add ISBI counts over different thresholds")
        return IsbiCounts(
            self.thresholds, self.pixels + other.pixels,
            self.pixel_errors + other.pixel_errors, self.warping_errors + other.warping_errors,
            self.warping_clusters + other.warping_clusters, self.rand_joint + other.rand_joint,
            self.rand_pred + other.rand_pred, self.rand_truth + other.rand_truth)


def isbi_counts(object_probability: np.ndarray, truth_objects: np.ndarray,
                thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> IsbiCounts:
    """Count pixel, Rand and warping errors of one image at every threshold.

    Args:
        object_probability: (H, W) probability that a pixel is an object (e.g. a cell).
        truth_objects: (H, W) bool, True on objects, False on boundaries.
        thresholds: an object pixel is ``probability > t``.
    """
    truth = np.asarray(truth_objects, bool)
    prob = np.asarray(object_probability, np.float64)
    _check_pair(prob, truth)
    counts = IsbiCounts(tuple(float(t) for t in thresholds), truth.size)
    for i, t in enumerate(counts.thresholds):
        pred = prob > t
        counts.pixel_errors[i] = np.count_nonzero(pred != truth)
        left = warp_truth(pred, truth) != pred
        counts.warping_errors[i] = np.count_nonzero(left)
        counts.warping_clusters[i] = ndimage.label(left, structure=_EIGHT)[1]
        joint, by_pred, by_truth = rand_sums(pred, truth)
        counts.rand_joint[i], counts.rand_pred[i], counts.rand_truth[i] = joint, by_pred, by_truth
    return counts


def _best(values: Sequence[float], thresholds: Sequence[float]) -> dict[str, float]:
    i = int(np.argmin(values))
    return {"value": float(values[i]), "threshold": float(thresholds[i])}


def isbi_summary(counts: IsbiCounts) -> dict[str, Any]:
    """JSON-ready scores: per threshold, and the best (lowest) value of each metric with the
    threshold that reached it, as the challenge reported them."""
    n = max(counts.pixels, 1)
    pixel = (counts.pixel_errors / n).tolist()
    warping = (counts.warping_errors / n).tolist()
    rand = [_rand_error_of(float(j), float(p), float(t))
            for j, p, t in zip(counts.rand_joint, counts.rand_pred, counts.rand_truth)]
    split = [float(j) / float(t) if t else math.nan
             for j, t in zip(counts.rand_joint, counts.rand_truth)]
    merge = [float(j) / float(p) if p else math.nan
             for j, p in zip(counts.rand_joint, counts.rand_pred)]
    th = counts.thresholds
    return {
        "pixel_error": _best(pixel, th),
        "rand_error": _best(rand, th),
        "warping_error": _best(warping, th),
        "thresholds": list(th),
        "per_threshold": {
            "pixel_error": pixel, "rand_error": rand, "warping_error": warping,
            "rand_split_score": [None if math.isnan(v) else v for v in split],
            "rand_merge_score": [None if math.isnan(v) else v for v in merge],
            "warping_error_clusters": counts.warping_clusters.tolist(),
        },
        "pixels": counts.pixels,
        "definition": "Arganda-Carreras et al. 2015: best value over thresholds of the object"
                      " probability; Rand error = 1 - foreground-restricted V_rand; warping"
                      " error after Jain et al. 2010 (objects 4-, boundaries 8-connected)",
    }
