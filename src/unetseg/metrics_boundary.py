"""Boundary-aware metrics of images and volumes: the 95th-percentile Hausdorff distance (HD95)
and the normalised surface Dice (NSD) per class.

IoU counts pixels, so a prediction whose edges wander a few pixels from the truth's loses little
IoU on a large region; HD95 measures how far the edges are apart, and NSD (Nikolov et al. 2021,
"Clinically applicable segmentation of head and neck anatomy for radiotherapy") the share of
both boundaries that lies within a tolerance of the other.

Convention (that of MONAI's ``compute_hausdorff_distance(percentile=95)`` and
``compute_surface_dice`` without sub-voxels):

* The **region** of class ``c`` is the set of pixels (voxels) labelled ``c``; ignored pixels (a
  negative truth id) belong to no region on either side, whatever was predicted there.
* Its **boundary** is the region's pixels with a face neighbour (4 in 2D, 6 in 3D) outside the
  region; the outside of the array counts as outside, so every non-empty region has a boundary.
* Distances are Euclidean between pixel centres, in units of ``spacing`` (the size of a pixel
  along each axis; default 1, i.e. pixels). For each boundary pixel of the prediction the
  distance to the nearest boundary pixel of the truth is taken, and the other way round.
* HD95 is the larger of the two sets' 95th percentiles (numpy's linear interpolation). NSD at
  tolerance ``t`` is (prediction boundary pixels within ``t`` of the truth's boundary + truth
  boundary pixels within ``t`` of the prediction's) / (all boundary pixels of both).
* A class absent from the truth or the prediction (or both) has neither: NaN, ``None`` in JSON,
  left out of means. Its IoU (0, or undefined) already says what went wrong.

Both are exact: a Euclidean distance transform (with the spacing as its sampling) of the
complement of one boundary gives every pixel's distance to its nearest pixel. The transform
runs over the bounding box of both boundaries only, which holds every boundary pixel, so the
distances are the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

PERCENTILE = 95.0

Spacing = Sequence[float] | None
"""The size of a pixel (voxel) along each axis, in physical units; None: 1 along every axis."""


def boundary(region: np.ndarray) -> np.ndarray:
    """Bool array of ``region``'s shape (2-D or 3-D): its pixels with a face neighbour outside
    it (or outside the array)."""
    from scipy import ndimage

    region = np.asarray(region, bool)
    cross = ndimage.generate_binary_structure(region.ndim, 1)
    return region & ~ndimage.binary_erosion(region, structure=cross, border_value=0)


def _directed(source: np.ndarray, target: np.ndarray, spacing: Spacing = None) -> np.ndarray:
    """Distances (units of ``spacing``, float64) from every ``True`` pixel of ``source`` to the
    nearest ``True`` pixel of ``target``; both bool of one shape, ``target`` not empty."""
    from scipy import ndimage

    where = np.nonzero(source | target)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in where)
    distance = ndimage.distance_transform_edt(~target[box], sampling=spacing)
    return np.asarray(distance)[source[box]]


def _spacing(spacing: Spacing, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    spacing = tuple(float(v) for v in spacing)
    if len(spacing) != ndim or not all(v > 0 for v in spacing):
        raise ValueError(f"spacing {spacing} must give one positive size per axis ({ndim})")
    return spacing


def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing: Spacing = None
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """The two directed boundary distance sets of two regions (bool, one shape): from the
    prediction's boundary to the truth's, and back; None when either region is empty."""
    if not pred.any() or not truth.any():
        return None
    sampling = _spacing(spacing, pred.ndim)
    edge_p, edge_t = boundary(pred), boundary(truth)
    return _directed(edge_p, edge_t, sampling), _directed(edge_t, edge_p, sampling)


def hd95_regions(pred: np.ndarray, truth: np.ndarray, percentile: float = PERCENTILE,
                 spacing: Spacing = None) -> float:
    """HD95 (units of ``spacing``) between two regions (bool, one shape); NaN when either is
    empty."""
    both = surface_distances(pred, truth, spacing)
    if both is None:
        return math.nan
    return max(float(np.percentile(d, percentile)) for d in both)


def surface_dice_regions(pred: np.ndarray, truth: np.ndarray, tolerance: float,
                         spacing: Spacing = None) -> float:
    """NSD at ``tolerance`` (units of ``spacing``) between two regions; NaN when either is
    empty."""
    both = surface_distances(pred, truth, spacing)
    if both is None:
        return math.nan
    within = sum(int((d <= tolerance).sum()) for d in both)
    return within / sum(d.size for d in both)


def _per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int,
               score: object) -> np.ndarray:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim not in (2, 3):
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must be one (H, W) or"
                         " (D, H, W) shape")
    counted = truth >= 0
    return np.array([score((pred == c) & counted, truth == c)  # type: ignore[operator]
                     for c in range(num_classes)], dtype=np.float64)


def hd95(pred: np.ndarray, truth: np.ndarray, num_classes: int,
         percentile: float = PERCENTILE, spacing: Spacing = None) -> np.ndarray:
    """Per-class HD95 of one image or volume, as the module docstring defines it.

    Args:
        pred: predicted class ids (H, W) or (D, H, W), integers in ``[0, K)``.
        truth: true class ids of the same shape; negative ids are ignored pixels.
        num_classes: K.
        percentile: 95 for HD95; 100 gives the plain Hausdorff distance.
        spacing: pixel size per axis (e.g. millimetres as ``(z, y, x)``); None: pixels.

    Returns:
        (K,) float64 distances in units of ``spacing``, NaN where the class is absent from
        either side.
    """
    return _per_class(pred, truth, num_classes,
                      lambda p, t: hd95_regions(p, t, percentile, spacing))


def surface_dice(pred: np.ndarray, truth: np.ndarray, num_classes: int, tolerance: float,
                 spacing: Spacing = None) -> np.ndarray:
    """Per-class normalised surface Dice of one image or volume at ``tolerance`` (units of
    ``spacing``), as the module docstring defines it; arguments as for :func:`hd95`.

    Returns:
        (K,) float64 in [0, 1], NaN where the class is absent from either side.
    """
    return _per_class(pred, truth, num_classes,
                      lambda p, t: surface_dice_regions(p, t, tolerance, spacing))


def mean_over_images(per_image: np.ndarray) -> tuple[np.ndarray, float]:
    """The summary of per-image scores (N, K) such as HD95 or NSD: each class's mean over the
    images where it is defined (K,) (NaN where it is nowhere), and the mean of those over the
    classes (NaN if none is defined). Float64, in the scores' units."""
    per_image = np.asarray(per_image, dtype=np.float64).reshape(len(per_image), -1)
    defined = ~np.isnan(per_image)
    counts = defined.sum(axis=0)
    sums = np.where(defined, per_image, 0.0).sum(axis=0)
    per_class = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    overall = float(np.mean(per_class[~np.isnan(per_class)])) if (counts > 0).any() else math.nan
    return per_class, overall
