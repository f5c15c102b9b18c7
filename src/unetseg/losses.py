"""Segmentation losses: pure functions of ``(logits, target)``, then :func:`build_loss`.

Conventions shared by every loss here:

- ``logits`` are raw scores ``(N, K, H, W)`` (any number of spatial dims works), ``K >= 2``;
  ``target`` holds class ids ``(N, H, W)`` in ``[0, K)`` or ``ignore_index``.
- Ignored pixels contribute nothing to the value or to any gradient.
- A batch with no valid pixel gives a loss of 0 that still has a (zero) gradient, so a training
  step on it is a no-op rather than NaN.
- Half-precision logits are computed in float32; other dtypes are kept.
- ``target`` must have exactly the logits' spatial size: for valid-padding models, centre-crop the
  target to the logits before calling.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from unetseg.config import LossName
from unetseg.metrics import IGNORE_INDEX

LOSS_NAMES: tuple[str, ...] = typing.get_args(LossName)

ClassWeights = Tensor | Sequence[float]


class LossFn(Protocol):
    """What :func:`build_loss` returns: ``loss_fn(logits, target, pixel_weights=None)``."""

    def __call__(
        self, logits: Tensor, target: Tensor, pixel_weights: Tensor | None = None
    ) -> Tensor: ...


def _check_inputs(logits: Tensor, target: Tensor) -> None:
    if logits.ndim < 3:
        raise ValueError(f"logits must be (N, K, H, W), got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(
            f"these losses need K >= 2 class channels, got {logits.shape[1]};"
            " model binary segmentation as 2 classes (background, foreground)"
        )
    if target.ndim != logits.ndim - 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"target {tuple(target.shape)} must be (N, H, W) for logits {tuple(logits.shape)}"
        )
    spatial, target_spatial = tuple(logits.shape[2:]), tuple(target.shape[1:])
    if target_spatial != spatial:
        raise ValueError(
            f"target size {target_spatial} != logits size {spatial}; crop both to one size before"
            " the loss (valid-padding models output less than their input: centre-crop the"
            " target to the logits)"
        )
    if target.is_floating_point():
        raise TypeError(f"target must hold integer class ids, got dtype {target.dtype}")


def _working_dtype(logits: Tensor) -> Tensor:
    """Half-precision logits are upcast to float32; float32/float64 are kept."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        return logits.float()
    return logits


def _class_weight_tensor(class_weights: ClassWeights | None, logits: Tensor) -> Tensor | None:
    if class_weights is None:
        return None
    weights = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
    if weights.shape != (logits.shape[1],):
        raise ValueError(
            f"class_weights has shape {tuple(weights.shape)} but the logits have"
            f" {logits.shape[1]} classes; give one weight per class"
        )
    return weights


def _safe_target(target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """``(target with ignored pixels set to class 0, valid mask)``, both ``(N, H, W)``."""
    target = target.long()
    valid = target != ignore_index
    return torch.where(valid, target, 0), valid


def _safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``; ``num`` (0 for the losses here) elsewhere."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    class_weights: ClassWeights | None = None,
    pixel_weights: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Softmax cross-entropy averaged over the non-ignored pixels.

    Without ``pixel_weights`` this is ``F.cross_entropy(..., weight=class_weights,
    ignore_index=ignore_index)``: with class weights ``w``, ``sum(w[t] * ce) / sum(w[t])`` over
    valid pixels. With ``pixel_weights`` (the U-Net paper's weight map) it is
    ``sum(pixel_weights * ce) / number_of_valid_pixels``: normalised by the pixel *count*, not by
    the weight sum, so the weight map sets how much each pixel matters relative to an unweighted
    pixel. Class weights, if also given, multiply ``ce`` inside that sum.

    Args:
        logits: Raw class scores.
        target: Class ids, or ``ignore_index``.
        class_weights: ``K`` per-class weights (tensor or sequence).
        pixel_weights: Non-negative per-pixel weights, same shape as ``target``.
        ignore_index: Target id of pixels left out.

    Returns:
        Scalar loss; 0 (with a zero gradient) if no pixel is valid.

    Shape:
        logits: ``(N, K, H, W)``; target, pixel_weights: ``(N, H, W)``.
    """
    _check_inputs(logits, target)
    logits = _working_dtype(logits)
    weights = _class_weight_tensor(class_weights, logits)
    safe, valid = _safe_target(target, ignore_index)
    ce = F.cross_entropy(logits, safe, weight=weights, reduction="none")  # (N, H, W)
    ce = ce * valid
    if pixel_weights is not None:
        if pixel_weights.shape != target.shape:
            raise ValueError(
                f"pixel_weights {tuple(pixel_weights.shape)} must match target"
                f" {tuple(target.shape)}"
            )
        pixel_weights = pixel_weights.to(device=ce.device, dtype=ce.dtype)
        return _safe_divide((pixel_weights * ce).sum(), valid.sum().to(ce.dtype))
    if weights is None:
        return _safe_divide(ce.sum(), valid.sum().to(ce.dtype))
    return _safe_divide(ce.sum(), (weights[safe] * valid).sum())


def soft_dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    smooth: float = 1e-5,
    include_background: bool = True,
) -> Tensor:
    """One minus the mean soft Dice over the classes present, computed over the whole batch.

    For class ``k`` with softmax probabilities ``p`` and one-hot truth ``g`` summed over every
    valid pixel of the batch, ``dice_k = (2 sum(p g) + smooth) / (sum(p) + sum(g) + smooth)``.
    The mean runs over the classes that are *present*: in the target or in the arg-max
    prediction at some valid pixel. A class absent from both contributes nothing (the same rule as
    :mod:`unetseg.metrics`, where its score is undefined), so perfect predictions give ~0 however
    many classes are missing from the batch.

    Args:
        logits: Raw class scores.
        target: Class ids, or ``ignore_index``.
        ignore_index: Target id of pixels masked out of both probabilities and truth.
        smooth: Added to numerator and denominator.
        include_background: If False, class 0 is left out of the mean.

    Returns:
        Scalar loss in ``[0, 1]``; 0 (with a zero gradient) if no class is present.

    Shape:
        logits: ``(N, K, H, W)``; target: ``(N, H, W)``.
    """
    _check_inputs(logits, target)
    logits = _working_dtype(logits)
    num_classes = logits.shape[1]
    safe, valid = _safe_target(target, ignore_index)
    mask = valid.unsqueeze(1).to(logits.dtype)  # (N, 1, H, W)
    probs = logits.softmax(dim=1) * mask  # (N, K, H, W)
    truth = F.one_hot(safe, num_classes).movedim(-1, 1).to(logits.dtype) * mask  # (N, K, H, W)
    dims = (0, *range(2, logits.ndim))
    intersection = (probs * truth).sum(dims)  # (K,)
    cardinality = probs.sum(dims) + truth.sum(dims)  # (K,)
    dice = (2 * intersection + smooth) / (cardinality + smooth)  # (K,)

    predicted = F.one_hot(logits.detach().argmax(dim=1), num_classes).movedim(-1, 1) * mask
    present = (truth.sum(dims) > 0) | (predicted.sum(dims) > 0)  # (K,)
    if not include_background:
        present[0] = False
    present = present.to(dice.dtype)
    return _safe_divide(((1 - dice) * present).sum(), present.sum())


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    class_weights: ClassWeights | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Focal loss (Lin et al. 2017), ``-w[t] (1 - p_t)^gamma log p_t``, mean over valid pixels.

    The mean divides by the number of valid pixels even with class weights (which act as the
    paper's ``alpha``), so with ``gamma=0`` it equals :func:`cross_entropy` only without class
    weights.

    Args:
        logits: Raw class scores.
        target: Class ids, or ``ignore_index``.
        gamma: Focusing parameter, ``>= 0``; 0 is cross-entropy.
        class_weights: ``K`` per-class weights (tensor or sequence).
        ignore_index: Target id of pixels left out.

    Returns:
        Scalar loss; 0 (with a zero gradient) if no pixel is valid.

    Shape:
        logits: ``(N, K, H, W)``; target: ``(N, H, W)``.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    _check_inputs(logits, target)
    logits = _working_dtype(logits)
    weights = _class_weight_tensor(class_weights, logits)
    safe, valid = _safe_target(target, ignore_index)
    log_pt = logits.log_softmax(dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)  # (N, H, W)
    # 1 - p_t without cancellation; the floor keeps the gradient of x**gamma finite at x = 0
    miss = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
    loss = -(miss**gamma) * log_pt
    if weights is not None:
        loss = loss * weights[safe]
    loss = loss * valid
    return _safe_divide(loss.sum(), valid.sum().to(loss.dtype))


def build_loss(
    name: str,
    *,
    class_weights: ClassWeights | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> LossFn:
    """The training loss called ``name``, as ``loss_fn(logits, target, pixel_weights=None)``.

    Names:
        ``"dice_ce"``: :func:`cross_entropy` + :func:`soft_dice_loss`, equal weights.
        ``"ce"``: :func:`cross_entropy`, weighted by ``pixel_weights`` when they are given.
        ``"dice"``: :func:`soft_dice_loss`.
        ``"focal"``: :func:`focal_loss` with ``gamma=2``.
        ``"weighted-ce"``: :func:`cross_entropy` with the required ``pixel_weights``.

    ``class_weights`` go to the cross-entropy and focal terms (Dice has none). ``pixel_weights``
    are ignored by ``"dice_ce"``, ``"dice"`` and ``"focal"``.

    Raises:
        ValueError: For an unknown name (the message lists the valid ones), or when
            ``"weighted-ce"`` is called without ``pixel_weights``.
    """
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    cw, ii = class_weights, ignore_index

    def ce(logits: Tensor, target: Tensor, pixel_weights: Tensor | None = None) -> Tensor:
        return cross_entropy(
            logits, target, class_weights=cw, pixel_weights=pixel_weights, ignore_index=ii
        )

    def weighted_ce(logits: Tensor, target: Tensor, pixel_weights: Tensor | None = None) -> Tensor:
        if pixel_weights is None:
            raise ValueError(
                "loss 'weighted-ce' needs a pixel weight map (N, H, W) as third argument;"
                " use loss 'ce' to train without one"
            )
        return ce(logits, target, pixel_weights)

    def dice(logits: Tensor, target: Tensor, pixel_weights: Tensor | None = None) -> Tensor:
        return soft_dice_loss(logits, target, ignore_index=ii)

    def dice_ce(logits: Tensor, target: Tensor, pixel_weights: Tensor | None = None) -> Tensor:
        return ce(logits, target) + dice(logits, target)

    def focal(logits: Tensor, target: Tensor, pixel_weights: Tensor | None = None) -> Tensor:
        return focal_loss(logits, target, class_weights=cw, ignore_index=ii)

    losses: dict[str, LossFn] = {
        "dice_ce": dice_ce,
        "ce": ce,
        "dice": dice,
        "focal": focal,
        "weighted-ce": weighted_ce,
    }
    return losses[name]


def distance_loss(distance_logits: Tensor, distance: Tensor, target: Tensor, *,
                  ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean squared error of ``sigmoid(distance_logits)`` against a distance map in [0, 1],
    over the pixels whose class id is not ``ignore_index``.

    Returns:
        Scalar loss; 0 (with a zero gradient) if no pixel is valid.

    Shape:
        distance_logits, distance, target: ``(N, H, W)``.
    """
    if distance_logits.shape != distance.shape or distance.shape != target.shape:
        raise ValueError(f"distance logits {tuple(distance_logits.shape)}, map"
                         f" {tuple(distance.shape)} and target {tuple(target.shape)} must match")
    predicted = torch.sigmoid(_working_dtype(distance_logits))
    valid = (target != ignore_index).to(predicted.dtype)
    squared = (predicted - distance.to(predicted.dtype)) ** 2 * valid
    return _safe_divide(squared.sum(), valid.sum())


def build_instance_loss(name: str, target: str, *, class_weights: ClassWeights | None = None,
                        distance_weight: float = 1.0,
                        ignore_index: int = IGNORE_INDEX) -> Callable[..., Tensor]:
    """The loss of an instance model (see :mod:`unetseg.data.instance_targets`).

    ``target="boundary"``: ``loss_fn(logits, ids, pixel_weights=None)``, the class loss
    ``name`` (:func:`build_loss`) over the three classes background / interior / boundary.
    ``target="distance"``: ``loss_fn(logits, ids, distance, pixel_weights=None)``: the class
    loss over the first two channels (background / object) plus ``distance_weight`` times
    :func:`distance_loss` of the third channel against the distance map.
    """
    class_loss = build_loss(name, class_weights=class_weights, ignore_index=ignore_index)
    if target == "boundary":
        return class_loss
    if target != "distance":
        raise ValueError(f"unknown instance target {target!r}; use boundary or distance")

    def with_distance(logits: Tensor, ids: Tensor, distance: Tensor,
                      pixel_weights: Tensor | None = None) -> Tensor:
        if logits.shape[1] != 3:
            raise ValueError(f"the distance target needs 3 output channels (background, object,"
                             f" distance), got {logits.shape[1]}")
        return (class_loss(logits[:, :2], ids, pixel_weights)
                + distance_weight * distance_loss(logits[:, 2], distance, ids,
                                                  ignore_index=ignore_index))

    return with_distance


def deep_supervision_weights(count: int) -> list[float]:
    """Loss weights of ``count`` outputs, the main one first: halving per output and summing to
    1, as nnU-Net weighs its deep supervision (Isensee et al., Nature Methods 2021): for 4
    outputs 8/15, 4/15, 2/15, 1/15."""
    raw = [0.5**i for i in range(count)]
    return [w / sum(raw) for w in raw]


def deep_supervision_loss(loss_fn: LossFn, outputs: Sequence[Tensor], target: Tensor,
                          *pixel_weights: Tensor) -> Tensor:
    """``sum_i w_i * loss_fn(outputs[i], target, ...)`` with :func:`deep_supervision_weights`:
    the main logits first, then the auxiliary ones of coarser decoder levels, each already at
    the target's size (:mod:`unetseg.model.segnet`). One output: ``loss_fn`` itself."""
    weights = deep_supervision_weights(len(outputs))
    terms = [w * loss_fn(o, target, *pixel_weights) for w, o in zip(weights, outputs)]
    return torch.stack(terms).sum()
