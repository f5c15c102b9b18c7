"""Scoring predictions against masks: the one routine behind validation during training and
``unetseg evaluate``.

Each image is predicted, its class ids taken (:func:`~unetseg.infer.predict.logits_to_labels`)
and counted against the truth in one (K, K) confusion matrix; every metric is a reduction of
those matrices (:mod:`unetseg.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from unetseg.infer.predict import logits_to_labels
from unetseg.metrics import confusion_matrix

Truth = tuple[str, np.ndarray | torch.Tensor, torch.Tensor]
"""(stem, image (C, H, W) in its read scale, class ids (H, W) with ignored pixels negative)."""


@dataclass(frozen=True)
class ImageScore:
    """One image's prediction and its confusion matrix.

    Attributes:
        stem: the image's name.
        logits: (K, H, W) float, on the CPU.
        labels: predicted class ids (H, W) int64.
        truth: true class ids (H, W) int64; ignored pixels are negative.
        confusion: (K, K) int64 pixel counts, rows = truth, columns = prediction.
    """

    stem: str
    logits: torch.Tensor
    labels: torch.Tensor
    truth: torch.Tensor
    confusion: torch.Tensor


def score_images(logits_of: Callable[[np.ndarray | torch.Tensor], torch.Tensor],
                 truths: Iterable[Truth], num_classes: int, *,
                 postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> Iterator[ImageScore]:
    """Predict and count each image of ``truths`` in turn (one image's logits held at a time).

    Args:
        logits_of: image (C, H, W) -> logits (K, H, W), e.g. ``ImagePredictor.logits``.
        truths: the images with their true class ids.
        num_classes: K.
        postprocess: applied to each image's labels (H, W) on the CPU before they are counted
            (a model set's post-processing).
    """
    for stem, image, truth in truths:
        logits = logits_of(image)
        labels = logits_to_labels(logits)
        if postprocess is not None:
            labels = postprocess(labels.cpu())
        truth = truth.to(labels.device).long()
        yield ImageScore(stem, logits, labels, truth,
                         confusion_matrix(labels, truth, num_classes))


def total_confusion(scores: Iterable[ImageScore], num_classes: int) -> torch.Tensor:
    """The (K, K) sum of the images' confusion matrices (zeros when there is none)."""
    total = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for score in scores:
        total += score.confusion.cpu()
    return total
