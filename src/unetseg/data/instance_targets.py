"""What an instance model learns: targets derived from instance labels, after augmentation.

An instance label image holds 0 for background and one id per object (``DATA/instances/``,
else the connected components of the object classes of the masks: :func:`attach_instances`).
Training crops and warps it with the image (nearest, one resampling: it travels as the mask of
:func:`~unetseg.data.augment.apply_params`) and only then derives the targets, so a boundary is
as wide and a distance as true after a rotation or an elastic warp as before:

* ``boundary`` (:func:`boundary_classes`): three classes, 0 background, 1 object interior,
  2 object boundary, the object pixels within ``width`` pixels (a square window of side
  ``2 * width + 1``) of a pixel of another object or of the background. Touching objects are
  separated by their boundaries; the interiors seed the watershed that splits them
  (:mod:`unetseg.infer.instances`), as in the 2018 Data Science Bowl's winning U-Nets.
* ``distance`` (:func:`normalized_distance`): two classes (background, object) and, in an extra
  output channel, each object pixel's Euclidean distance to the nearest pixel outside its
  object, divided by the object's largest, so every object peaks at 1 at its centre
  whatever its size; the peaks seed the watershed.

The image border is no boundary (an object cut by a crop goes on outside it). Ignored pixels
(label -1) stay ignored in the class target. With the loss ``weighted-ce`` each target also gets
the U-Net paper's border weight map (:func:`~unetseg.data.weights.border_weight_map`) computed
on the warped crop: for ``boundary`` around the object interiors, so that the boundary and
background pixels between two close interiors weigh most.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from unetseg.config import DataConfig, InstanceConfig
from unetseg.data.classes import IGNORE_INDEX, ClassTable
from unetseg.data.dataset import LoadedPair
from unetseg.data.instances import instance_mask_path, instances_from_mask, read_instances
from unetseg.data.weights import border_weight_map, object_class_ids
from unetseg.errors import UserError

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
"""Class ids of the ``boundary`` target."""
MAX_OBJECTS = 2**24
"""Most objects in one image: ids travel through augmentation as float32, exact below 2**24."""


def target_class_names(cfg: InstanceConfig) -> tuple[str, ...]:
    """Names of the target's classes, in channel order."""
    if cfg.target == "boundary":
        return ("background", "interior", "boundary")
    return ("background", "object")


def output_channels(cfg: InstanceConfig) -> int:
    """Output channels of an instance network: its classes, plus the distance map's channel."""
    return len(target_class_names(cfg)) + (cfg.target == "distance")


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Object ids -> ``1..n`` in the order of their values; 0 (and negatives) stay.

    Returns:
        ``(H, W)`` int32.
    """
    labels = np.asarray(labels)
    objects = labels > 0
    out = np.where(labels < 0, labels, 0).astype(np.int32)
    values, inverse = np.unique(labels[objects], return_inverse=True)
    if values.size >= MAX_OBJECTS:
        raise ValueError(f"{values.size} objects in one image; at most {MAX_OBJECTS - 1}")
    out[objects] = inverse.ravel() + 1
    return out


def boundary_classes(labels: np.ndarray, width: int) -> np.ndarray:
    """The ``boundary`` target of an instance label image (see the module's text).

    Args:
        labels: ``(H, W)`` integers: 0 background, > 0 objects, -1 ignored.
        width: boundary width in pixels, >= 1.

    Returns:
        ``(H, W)`` int64 class ids: 0 background, 1 interior, 2 boundary, -1 ignored.
    """
    if width < 1:
        raise ValueError(f"boundary width must be >= 1 pixel, got {width}")
    labels = np.asarray(labels)
    size = 2 * width + 1
    high = ndimage.maximum_filter(labels, size=size, mode="nearest")
    low = ndimage.minimum_filter(labels, size=size, mode="nearest")
    objects = labels > 0
    out = objects.astype(np.int64)
    out[objects & ((high != labels) | (low != labels))] = BOUNDARY
    out[labels < 0] = IGNORE_INDEX
    return out


def normalized_distance(labels: np.ndarray) -> np.ndarray:
    """Each object pixel's distance to the nearest pixel outside its object, over the object's
    largest; 0 outside objects.

    Distances are Euclidean between pixel centres (a one-pixel object is 1 before the
    division). The image border is no edge: an object cut by it keeps its distances to its
    other edges.

    Returns:
        ``(H, W)`` float32 in ``[0, 1]``.
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.float32)
    height, width = labels.shape
    for index, box in enumerate(ndimage.find_objects(np.maximum(labels, 0)), start=1):
        if box is None:
            continue
        window = (slice(max(0, box[0].start - 1), min(height, box[0].stop + 1)),
                  slice(max(0, box[1].start - 1), min(width, box[1].stop + 1)))
        inside = labels[window] == index
        if inside.all():  # the object fills the crop: no edge in sight
            out[window] = 1.0
            continue
        distance = ndimage.distance_transform_edt(inside)
        out[window][inside] = (distance[inside] / distance.max()).astype(np.float32)
    return out


def target_ids(labels: np.ndarray, cfg: InstanceConfig) -> np.ndarray:
    """The class ids of the target alone (the first of :func:`instance_targets`)."""
    if cfg.target == "boundary":
        return boundary_classes(labels, cfg.boundary_width)
    return np.where(np.asarray(labels) < 0, IGNORE_INDEX, np.asarray(labels) > 0).astype(np.int64)


def instance_targets(labels: np.ndarray, cfg: InstanceConfig, *, weighted: bool = False,
                     w0: float = 10.0, sigma: float = 5.0) -> list[np.ndarray]:
    """The training targets of one instance label image, in the order the loss takes them.

    Args:
        labels: ``(H, W)`` integers: 0 background, > 0 objects (any ids), -1 ignored.
        cfg: the target and its width.
        weighted: also the border weight map (the loss ``weighted-ce``), with ``w0`` and
            ``sigma`` (pixels) as in the U-Net paper.

    Returns:
        ``[class ids (H, W) int64]``, then for ``distance`` the map ``(H, W)`` float32, then
        with ``weighted`` the weights ``(H, W)`` float32.
    """
    labels = np.asarray(labels)
    if cfg.target == "boundary":
        ids = target_ids(labels, cfg)
        out = [ids]
        objects = np.where(ids == INTERIOR, labels, 0)  # the interiors, apart
    elif cfg.target == "distance":
        ids = target_ids(labels, cfg)
        out = [ids, normalized_distance(labels)]
        objects = np.maximum(labels, 0)
    else:
        raise ValueError(f"unknown instance target {cfg.target!r}; use boundary or distance")
    if weighted:
        out.append(border_weight_map(ids, len(target_class_names(cfg)), instances=objects,
                                     w0=w0, sigma=sigma))
    return out


def batch_targets(labels: torch.Tensor, cfg: InstanceConfig, *, weighted: bool = False,
                  w0: float = 10.0, sigma: float = 5.0) -> list[torch.Tensor]:
    """:func:`instance_targets` of a batch ``(N, H, W)`` of warped instance labels, computed
    on the CPU and returned on ``labels``' device: class ids ``(N, H, W)`` int64, then the
    distance map and the weights ``(N, H, W)`` float32 where the target has them."""
    arrays = labels.detach().cpu().numpy()
    parts = [instance_targets(a, cfg, weighted=weighted, w0=w0, sigma=sigma) for a in arrays]
    return [torch.from_numpy(np.stack(kind)).to(labels.device) for kind in zip(*parts)]


def pair_instances(mask_path: str | Path, stem: str, ids: np.ndarray,
                   object_classes: Sequence[int]) -> np.ndarray:
    """The instance labels of a pair: ``instances/<stem>.*`` beside its mask folder if there is
    one (:func:`~unetseg.data.instances.read_instances`), else the connected components
    (4-connected) of ``object_classes`` (class ids) in its class ids ``ids``; consecutive ids
    ``1..n`` as int32, 0 background (ignored pixels are not marked).

    Raises:
        UserError: an unreadable instance image, or one of another size than the mask.
    """
    path = instance_mask_path(mask_path, stem)
    if path is None:
        return instances_from_mask(ids, object_classes)
    labels = read_instances(path, ids.shape)
    try:
        return relabel_consecutive(labels)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}; split the image") from None


def attach_instances(pairs: Iterable[LoadedPair], classes: ClassTable, cfg: DataConfig) -> None:
    """Read or derive each pair's instance labels once (:func:`pair_instances`; the object
    classes are ``cfg.weight_objects``, default every class but the first) into
    ``pair.instances``; ignored pixels of the mask get -1."""
    objects = object_class_ids(classes, cfg.weight_objects)
    for pair in pairs:
        if pair.instances is None:
            labels = pair_instances(pair.mask_path, pair.stem, pair.ids, objects)
            pair.instances = np.where(pair.ids == IGNORE_INDEX, -1, labels).astype(np.int32)
