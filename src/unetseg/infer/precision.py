"""The number format a model predicts in: bf16 where the CPU computes it natively and the model's
labels survive it, fp32 otherwise.

bf16 keeps fp32's range with 8 bits of mantissa, so a U-Net's logits move by about 1e-2 and a
pixel whose two best classes are that close can change label. Whether that matters depends on
the model and the images, so ``auto`` does not assume it: on a sample of the first image it
predicts (:func:`sample_window`) it computes the labels in fp32 and in bf16 and keeps bf16 only
when they agree on at least :data:`MIN_LABEL_AGREEMENT` of the pixels and the mean IoU of the
bf16 labels against the fp32 labels is at least :data:`MIN_MEAN_IOU`
(:func:`agreement_check`). The decision is made once per loaded model (the
:class:`~unetseg.infer.engine.ImagePredictor` keeps it), never per image.

bf16 runs under ``torch.autocast``: convolutions and matrix products in bf16, normalisation and
reductions in fp32, weights kept in fp32. Only CPUs with AMX-BF16 or AVX512-BF16
(:func:`~unetseg.runtime.cpu_native_bf16`) are considered: elsewhere PyTorch emulates bf16 about
100 times slower than fp32. On CUDA ``auto`` keeps fp32, as before; ``bf16`` forces autocast
there too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from unetseg.metrics import confusion_matrix, mean_iou
from unetseg.runtime import cpu_native_bf16

log = logging.getLogger(__name__)

MIN_LABEL_AGREEMENT = 0.999
"""Least share of the sample's pixels whose bf16 label must equal the fp32 label."""
MIN_MEAN_IOU = 0.998
"""Least mean IoU (over the classes in either labelling) of the bf16 labels against the fp32
labels, taken as the truth."""
SAMPLE_SIDE = 512
"""Side in pixels of the centre crop of the first image on which the check runs: one planned
tile, so the check costs one fp32 and one bf16 pass of at most 512 x 512 pixels."""


@dataclass(frozen=True)
class PrecisionChoice:
    """The number format a predictor runs in and why.

    Attributes:
        dtype: the ``torch.autocast`` dtype (``torch.bfloat16``), or None for plain fp32.
        reason: one line for the log and the user.
    """

    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        """``"bf16"`` or ``"fp32"``."""
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"


def fp32(reason: str) -> PrecisionChoice:
    return PrecisionChoice(None, reason)


def bf16(reason: str) -> PrecisionChoice:
    return PrecisionChoice(torch.bfloat16, reason)


def choice_without_check(requested: str, device: torch.device,
                         native_bf16: Callable[[], str | None] | None = None
                         ) -> PrecisionChoice | None:
    """The choice where no agreement check is needed, else None (``auto`` on a CPU with
    native bf16: run :func:`check_bf16` on a sample).

    ``native_bf16`` tells the CPU's native bf16 instructions (default
    :func:`~unetseg.runtime.cpu_native_bf16`, looked up at each call so tests can fake a CPU
    without them).

    Raises:
        ValueError: ``bf16`` forced on a device that cannot run it.
    """
    if requested == "fp32":
        return fp32("--precision fp32")
    if device.type == "cuda":
        if requested == "bf16":
            if not torch.cuda.is_bf16_supported():
                raise ValueError("this GPU has no bf16; use --precision fp32 or auto")
            return bf16("--precision bf16")
        return fp32("auto on CUDA keeps fp32")
    if device.type != "cpu":
        if requested == "bf16":
            raise ValueError(f"bf16 prediction runs on CPUs and CUDA GPUs, not on {device}")
        return fp32(f"auto on {device.type} keeps fp32")
    if requested == "bf16":
        return bf16("--precision bf16")
    instructions = (native_bf16 or cpu_native_bf16)()
    if instructions is None:
        return fp32("this CPU has no native bf16 (AMX-BF16 or AVX512-BF16); emulated bf16 is"
                    " far slower than fp32")
    return None


def label_agreement(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Share of pixels (0..1) where the two (H, W) labellings are equal."""
    return float((reference == other).double().mean())


def labels_mean_iou(reference: torch.Tensor, other: torch.Tensor, num_classes: int) -> float:
    """Mean IoU (0..1) of ``other`` against ``reference`` as the truth, over the classes found in
    either (a class in neither is left out, as in :func:`~unetseg.metrics.mean_iou`). A
    single-logit model (``num_classes`` 1) labels 0 and 1, so it counts two classes."""
    matrix = confusion_matrix(other.flatten(), reference.flatten(), max(num_classes, 2))
    return float(mean_iou(matrix))


def agreement_check(fp32_labels: torch.Tensor, bf16_labels: torch.Tensor, num_classes: int
                    ) -> PrecisionChoice:
    """bf16 when its labels agree with the fp32 labels on at least :data:`MIN_LABEL_AGREEMENT`
    of the pixels and their mean IoU against them is at least :data:`MIN_MEAN_IOU`; fp32 with
    the figures otherwise."""
    agreement = label_agreement(fp32_labels, bf16_labels)
    miou = labels_mean_iou(fp32_labels, bf16_labels, num_classes)
    figures = (f"bf16 labels agree with fp32 on {agreement:.4%} of {fp32_labels.numel()} sample"
               f" pixels, mean IoU {miou:.4f}")
    if agreement >= MIN_LABEL_AGREEMENT and miou >= MIN_MEAN_IOU:
        return bf16(f"{figures} (needs >= {MIN_LABEL_AGREEMENT:.1%} and >= {MIN_MEAN_IOU})")
    return fp32(f"{figures}, below the {MIN_LABEL_AGREEMENT:.1%} and {MIN_MEAN_IOU} needed")


def sample_window(image: torch.Tensor, side: int = SAMPLE_SIDE) -> torch.Tensor:
    """The centre crop (C, <=side, <=side) of an image (C, H, W): the check's sample."""
    height, width = image.shape[-2:]
    top, left = max(0, (height - side) // 2), max(0, (width - side) // 2)
    return image[..., top:top + side, left:left + side]


def check_bf16(labels_in: Callable[[torch.Tensor, torch.dtype | None], torch.Tensor],
               sample: torch.Tensor, num_classes: int) -> PrecisionChoice:
    """Predict ``sample`` in fp32 and in bf16 with ``labels_in(sample, autocast dtype or None)``
    and keep bf16 if :func:`agreement_check` passes; the choice is logged (a failed check as a
    warning, since the user may have expected bf16's speed)."""
    choice = agreement_check(labels_in(sample, None), labels_in(sample, torch.bfloat16),
                             num_classes)
    if choice.dtype is None:
        log.warning("predicting in fp32: %s (--precision fp32 skips this check)", choice.reason)
    else:
        log.info("predicting in bf16: %s", choice.reason)
    return choice
