"""One epoch of training and one pass of validation, as plain functions."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from unetseg.data.dataset import LoadedPair
from unetseg.errors import UserError
from unetseg.infer.evaluate import ImageScore
from unetseg.losses import deep_supervision_loss
from unetseg.model.blocks import center_crop
from unetseg.progress import progress
from unetseg.report.training import Example
from unetseg.runtime import cpu_native_bf16

Batch = tuple[torch.Tensor, ...]  # (images, masks) or (images, masks, pixel weights)
LossFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class EpochStats:
    """Mean training loss over the epoch's steps, steps taken, images seen, wall seconds."""

    loss: float
    steps: int
    images: int
    seconds: float


CPU_BF16_TRAINING = False
"""Whether training autocasts to bf16 on CPUs with native bf16. Off: trained on the demo's
ISBI 2012 split for the same wall-clock on an AVX512-BF16 CPU (``benchmarks/bf16_training.py``,
2 shared cores, width 16), bf16 took fewer steps than fp32 (24 against 40 in 150 s, 16 against
32 in 120 s) and reached a lower validation mean IoU (0.700 against 0.744, 0.682 against
0.728); see the README's "Precision and backend"."""


@dataclass(frozen=True)
class Precision:
    """Mixed precision for one device: autocast dtype (None = fp32) and whether to scale grads."""

    dtype: torch.dtype | None
    scale_gradients: bool

    @classmethod
    def for_device(cls, device: torch.device, enabled: bool, *, cpu_bf16: bool | None = None
                   ) -> Precision:
        """bf16 on GPUs that support it, fp16 + gradient scaling on older ones. On a CPU, bf16
        only where ``cpu_bf16`` (default :data:`CPU_BF16_TRAINING`) and the CPU computes bf16
        natively (:func:`~unetseg.runtime.cpu_native_bf16`; CPUs without run autocast far
        slower than fp32), else fp32."""
        if not enabled:
            return cls(None, False)
        if device.type == "cpu":
            wanted = CPU_BF16_TRAINING if cpu_bf16 is None else cpu_bf16
            native = wanted and cpu_native_bf16() is not None
            return cls(torch.bfloat16 if native else None, False)
        if device.type != "cuda":
            return cls(None, False)
        if torch.cuda.is_bf16_supported():
            return cls(torch.bfloat16, False)
        return cls(torch.float16, True)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    prepare: Callable[..., Batch],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    steps: int,
    description: str = "train",
    show_progress: bool = True,
) -> EpochStats:
    """Run ``steps`` optimiser steps over ``batches``.

    ``prepare`` moves a CPU batch to the device and augments and normalises it; targets of
    valid-padding models are centre-cropped to the logits. A batch of three tensors carries
    per-pixel loss weights (the U-Net paper's weight map), cropped like the targets and passed
    to ``loss_fn`` as its third argument. A model that returns a list in training (deep
    supervision: main logits first, then auxiliary ones of the same size) is trained on the
    weighted sum of their losses (:func:`~unetseg.losses.deep_supervision_loss`). A non-finite
    loss stops training with a
    :class:`UserError` before the weights are touched; so do non-finite weights at the end of
    the epoch (checked before the caller saves them).
    """
    model.train()
    device = next(model.parameters()).device
    total, seen, start = 0.0, 0, time.perf_counter()
    bar = progress(total=steps, desc=description, unit="step", leave=False,
                   disable=not show_progress, every=100.0, dynamic_ncols=True)
    done = 0
    for batch in batches:
        if done == steps:
            break
        x, *targets = prepare(*batch)
        with torch.autocast(device.type, dtype=precision.dtype or torch.float32,
                            enabled=precision.dtype is not None):
            outputs = model(x)
        loss = supervised_loss(loss_fn, outputs, targets)
        value = float(loss.detach())
        if not math.isfinite(value):
            bar.close()
            raise UserError(
                f"training diverged: the loss became {value} at step {done + 1} of this epoch;"
                " lower --lr (the last good checkpoint is kept)"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += value
        seen += x.shape[0]
        done += 1
        bar.update(1)
        bar.set_postfix(loss=f"{total / done:.4f}")
    bar.close()
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise UserError("training diverged: the weights became NaN or infinite in this epoch;"
                        " lower --lr (the last good checkpoint is kept)")
    return EpochStats(total / max(done, 1), done, seen, time.perf_counter() - start)


def supervised_loss(loss_fn: LossFn, outputs: torch.Tensor | Sequence[torch.Tensor],
                    targets: list[torch.Tensor]) -> torch.Tensor:
    """The loss of a training forward's ``outputs``: one logit map, or a list under deep
    supervision; targets cropped to the logits, logits in float32."""
    if isinstance(outputs, torch.Tensor):
        return loss_fn(outputs.float(), *_crop_to(outputs, targets))
    return deep_supervision_loss(loss_fn, [o.float() for o in outputs],
                                 *_crop_to(outputs[0], targets))


def _crop_to(logits: torch.Tensor, targets: list[torch.Tensor]) -> list[torch.Tensor]:
    """The class ids ``(N, H, W)`` and any pixel weights, centre-cropped to the logits'
    ``(h, w)`` (smaller than the input with valid padding)."""
    h, w = logits.shape[-2:]
    return [t if t.shape[-2:] == (h, w) else center_crop(t, h, w) for t in targets]


def keep_examples(scores: Iterable[ImageScore], pairs: Sequence[LoadedPair],
                  examples: list[Example], count: int) -> Iterator[ImageScore]:
    """Pass validation ``scores`` on, appending the first ``count`` to ``examples`` for the
    run's report: the image and truth are the validation pair's own arrays (nothing copied),
    the prediction its class ids (H, W) as a numpy array."""
    by_stem = {p.stem: p for p in pairs}
    for score in scores:
        if len(examples) < count:
            pair = by_stem[score.stem]
            examples.append((score.stem, pair.image, pair.ids, score.labels.cpu().numpy()))
        yield score
