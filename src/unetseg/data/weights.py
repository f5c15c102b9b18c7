"""The U-Net paper's per-pixel loss weights (Ronneberger et al. 2015, Sec. 3, eq. 2).

.. math::

    w(x) = w_c(x) + w_0 \\exp\\left(-\\frac{(d_1(x) + d_2(x))^2}{2\\sigma^2}\\right)

* ``w_c`` balances the class frequencies of the mask: class ``k`` gets
  ``n_valid / (K_present * n_k)``, so every class present carries the same total weight and the
  mean of ``w_c`` over the valid pixels is 1 (ignored pixels weigh 0).
* ``d1`` and ``d2`` are the Euclidean distances (pixel centre to pixel centre) from ``x`` to
  the nearest and the second-nearest *object*. For a pixel outside an object the nearest pixel
  of an object lies on its border, so this is the paper's "distance to the border of the
  nearest cell". The border term is added only to pixels outside every object (the separating
  background: membranes between cells in ISBI 2012); it is 0 on object pixels and where fewer
  than two objects exist.
* Objects are the non-zero labels of an instance mask when one is given, else the connected
  components (4-connected by default) of the ``object_classes``, each class on its own. The
  default object classes are all class ids but 0: for ISBI 2012 (0 = membrane, 255 = cell) the
  cells are the objects and the membranes the borders.

The defaults ``w0 = 10`` and ``sigma = 5`` pixels are the paper's.

Computing ``d1``/``d2`` takes one Euclidean distance transform per object. Beyond
:func:`cutoff_distance` the border term is below ``1e-9`` (absolute), so each object's transform
is computed only in its bounding box grown by that distance: the result equals the full
per-object computation to within ``1e-9`` while costing far less on images with many objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from unetseg.config import DataConfig
from unetseg.data.classes import IGNORE_INDEX, ClassTable
from unetseg.data.dataset import LoadedPair
from unetseg.data.instances import INSTANCES_FOLDER as INSTANCES_FOLDER  # re-exported
from unetseg.data.instances import (
    instance_mask_path,
    instances_from_mask,
    read_instances,
    relabel,
)
from unetseg.errors import UserError

DEFAULT_W0 = 10.0
"""Weight of the border term (the paper's ``w0``)."""
DEFAULT_SIGMA = 5.0
"""Width of the border term in pixels (the paper's ``sigma``)."""
TOLERANCE = 1e-9
"""Border-term values below this are dropped by the windowed distance computation."""

objects_from_classes = instances_from_mask
"""The connected components of each object class (kept under its former name)."""


def class_balance_weights(ids: np.ndarray, num_classes: int,
                          ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Per-class weights ``n_valid / (K_present * n_k)`` of one mask (0 for absent classes).

    Shape:
        ids: ``(H, W)`` class ids in ``[0, K)`` or ``ignore_index``. Returns ``(K,)`` float64.
    """
    valid = ids[ids != ignore_index].astype(np.int64)
    counts = np.bincount(valid, minlength=num_classes)[:num_classes].astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    if present.any():
        weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def cutoff_distance(w0: float, sigma: float, tolerance: float = TOLERANCE) -> float:
    """The ``d1 + d2`` beyond which ``w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) < tolerance``."""
    if w0 <= tolerance:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / tolerance))


def nearest_two_distances(labels: np.ndarray, *, max_distance: float | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Distances from every pixel to its nearest and second-nearest object.

    Object ``i`` is the set of pixels with label ``i`` (0 = no object). The distance of a pixel
    to an object is the Euclidean distance to the object's nearest pixel (0 inside it).

    Args:
        labels: ``(H, W)`` integer object labels.
        max_distance: if given, distances are only computed up to about this far from each
            object (in its bounding box grown by ``ceil(max_distance) + 1``); farther distances
            may come out as ``inf``. Exact everywhere when None.

    Returns:
        ``(d1, d2)``, each ``(H, W)`` float64, ``d1 <= d2``; ``inf`` where there is no such
        object.
    """
    height, width = labels.shape
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    margin = None if max_distance is None else math.ceil(max_distance) + 1
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        if margin is None:
            window: tuple[slice, slice] = (slice(0, height), slice(0, width))
        else:
            window = (slice(max(0, box[0].start - margin), min(height, box[0].stop + margin)),
                      slice(max(0, box[1].start - margin), min(width, box[1].stop + margin)))
        distance = ndimage.distance_transform_edt(labels[window] != index)
        near, second = d1[window], d2[window]
        second[...] = np.where(distance < near, near, np.minimum(second, distance))
        near[...] = np.minimum(near, distance)
    return d1, d2


def border_weight_map(
    ids: np.ndarray,
    num_classes: int,
    *,
    object_classes: Sequence[int] | None = None,
    instances: np.ndarray | None = None,
    w0: float = DEFAULT_W0,
    sigma: float = DEFAULT_SIGMA,
    connectivity: int = 4,
    balance: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """The paper's weight map ``w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` of one mask.

    Args:
        ids: class ids, ``ignore_index`` for ignored pixels.
        num_classes: ``K``.
        object_classes: class ids whose connected components are the objects; default every
            class id but 0. Unused when ``instances`` is given.
        instances: optional instance labels (0 = no object, each other value one object).
        w0: weight of the border term (paper: 10).
        sigma: width of the border term in pixels (paper: about 5).
        connectivity: 4 or 8, for the components of ``object_classes``.
        balance: class-frequency weights ``w_c`` (see :func:`class_balance_weights`); when
            False ``w_c`` is 1 on every valid pixel.
        ignore_index: class id of ignored pixels; their weight is 0.

    Returns:
        ``(H, W)`` float32 weights, >= 0.

    Shape:
        ids, instances: ``(H, W)``.
    """
    if sigma <= 0 or w0 < 0:
        raise ValueError(f"need sigma > 0 and w0 >= 0, got sigma={sigma}, w0={w0}")
    valid = ids != ignore_index
    if balance:
        per_class = class_balance_weights(ids, num_classes, ignore_index)
        weights = np.where(valid, per_class[np.where(valid, ids, 0)], 0.0)
    else:
        weights = valid.astype(np.float64)
    if instances is not None:
        if instances.shape != ids.shape:
            raise ValueError(f"instances {instances.shape} must have the mask's shape {ids.shape}")
        labels = relabel(instances)
    else:
        classes = range(1, num_classes) if object_classes is None else object_classes
        labels = objects_from_classes(ids, list(classes), connectivity=connectivity)
    cutoff = cutoff_distance(w0, sigma)
    if labels.max() >= 2 and cutoff > 0:
        d1, d2 = nearest_two_distances(labels, max_distance=cutoff)
        with np.errstate(over="ignore", invalid="ignore"):
            border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
        border = np.where((labels == 0) & np.isfinite(d2), border, 0.0)
        weights = weights + np.where(valid, border, 0.0)
    return weights.astype(np.float32)


def object_class_ids(classes: ClassTable, values: Sequence[int] | None) -> tuple[int, ...]:
    """Class ids of the object classes given by mask ``values`` (default: every id but 0)."""
    if values is None:
        return tuple(range(1, classes.num_classes))
    unknown = [v for v in values if v not in classes.values]
    if unknown:
        raise UserError(f"--weight-objects {unknown[0]}: not a class value of the masks"
                        f" ({', '.join(map(str, classes.values))}); give the values of the"
                        " object classes, e.g. 255 for the cells of ISBI 2012")
    return tuple(classes.values.index(v) for v in values)


def attach_weight_maps(pairs: Sequence[LoadedPair], classes: ClassTable, cfg: DataConfig, *,
                       progress: bool = False) -> None:
    """Compute each pair's :func:`border_weight_map` once and store it in ``pair.weights``.

    Objects come from ``<root>/instances/<stem>.*`` when that file exists (see
    :func:`instance_mask_path`), else from the connected components of ``cfg.weight_objects``.
    Pairs that already carry weights are left alone.

    Raises:
        UserError: a bad ``weight_*`` setting, or an instance mask of the wrong size.
    """
    if cfg.weight_sigma <= 0 or cfg.weight_w0 < 0:
        raise UserError(f"--weight-sigma {cfg.weight_sigma} / --weight-w0 {cfg.weight_w0}:"
                        " the border width must be > 0 pixels and its weight >= 0 (paper: 5, 10)")
    objects = object_class_ids(classes, cfg.weight_objects)
    items: Iterable[LoadedPair] = pairs
    if progress:
        from unetseg.progress import progress as progress_bar

        items = progress_bar(pairs, desc="weight maps", unit="mask", leave=False)
    for pair in items:
        if pair.weights is not None:
            continue
        instances = None
        path = instance_mask_path(pair.mask_path, pair.stem)
        if path is not None:
            instances = read_instances(path, pair.ids.shape)
        pair.weights = border_weight_map(pair.ids, classes.num_classes, object_classes=objects,
                                         instances=instances, w0=cfg.weight_w0,
                                         sigma=cfg.weight_sigma)
