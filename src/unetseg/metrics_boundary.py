"""Boundary-aware metrics: the 95th-percentile Hausdorff distance (HD95) per class.

IoU counts pixels, so a prediction whose edges wander a few pixels from the truth's loses little
IoU on a large region; HD95 measures how far the edges are apart, in pixels.

Convention (that of MONAI's ``compute_hausdorff_distance(percentile=95)``):

* The **region** of class ``c`` is the set of pixels labelled ``c``; ignored pixels (a negative
  truth id) belong to no region on either side, whatever was predicted there.
* Its **boundary** is the region's pixels with a 4-neighbour outside the region; the outside of
  the image counts as outside, so every non-empty region has a boundary.
* Distances are Euclidean between pixel centres. For each boundary pixel of the prediction the
  distance to the nearest boundary pixel of the truth is taken, and the other way round; HD95 is
  the larger of the two sets' 95th percentiles (numpy's linear interpolation).
* A class absent from the truth or the prediction (or both) has no HD95: NaN, ``None`` in JSON,
  left out of means. Its IoU (0, or undefined) already says what went wrong.

:func:`hd95` is exact: a Euclidean distance transform of the complement of one boundary gives
every pixel's distance to its nearest pixel. The transform runs over the bounding box of both
boundaries only, which holds every boundary pixel, so the distances are the same.
"""

from __future__ import annotations

import math

import numpy as np

PERCENTILE = 95.0

_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def boundary(region: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of ``region`` (H, W) bool with a 4-neighbour outside it (or outside
    the image)."""
    from scipy import ndimage

    region = np.asarray(region, bool)
    return region & ~ndimage.binary_erosion(region, structure=_CROSS, border_value=0)


def _directed(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Distances (pixels, float64) from every ``True`` pixel of ``source`` to the nearest
    ``True`` pixel of ``target``; both (H, W) bool, ``target`` not empty."""
    from scipy import ndimage

    rows, cols = np.nonzero(source | target)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    distance = ndimage.distance_transform_edt(~target[box])
    return np.asarray(distance)[source[box]]


def hd95_regions(pred: np.ndarray, truth: np.ndarray, percentile: float = PERCENTILE) -> float:
    """HD95 (pixels) between two regions (H, W) bool; NaN when either is empty."""
    if not pred.any() or not truth.any():
        return math.nan
    edge_p, edge_t = boundary(pred), boundary(truth)
    return max(float(np.percentile(_directed(edge_p, edge_t), percentile)),
               float(np.percentile(_directed(edge_t, edge_p), percentile)))


def hd95(pred: np.ndarray, truth: np.ndarray, num_classes: int,
         percentile: float = PERCENTILE) -> np.ndarray:
    """Per-class HD95 of one image, as the module docstring defines it.

    Args:
        pred: predicted class ids (H, W), integers in ``[0, K)``.
        truth: true class ids (H, W); negative ids are ignored pixels.
        num_classes: K.
        percentile: 95 for HD95; 100 gives the plain Hausdorff distance.

    Returns:
        (K,) float64 distances in pixels, NaN where the class is absent from either side.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must be one (H, W) shape")
    counted = truth >= 0
    return np.array([hd95_regions((pred == c) & counted, truth == c, percentile)
                     for c in range(num_classes)], dtype=np.float64)


def mean_over_images(per_image: np.ndarray) -> tuple[np.ndarray, float]:
    """The summary of per-image HD95s (N, K): each class's mean over the images where it is
    defined (K,) (NaN where it is nowhere), and the mean of those over the classes (NaN if
    none is defined). Pixels, float64."""
    per_image = np.asarray(per_image, dtype=np.float64).reshape(len(per_image), -1)
    defined = ~np.isnan(per_image)
    counts = defined.sum(axis=0)
    sums = np.where(defined, per_image, 0.0).sum(axis=0)
    per_class = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    overall = float(np.mean(per_class[~np.isnan(per_class)])) if (counts > 0).any() else math.nan
    return per_class, overall
