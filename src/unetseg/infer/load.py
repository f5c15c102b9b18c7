"""Model files to ready image predictors: the one place that loads a model for prediction.

Prediction, evaluation and the server all load their models here, so they check options and
pick devices and memory layouts the same way. This module knows the floors below it (the model
file, the engine) and nothing above.
"""

from __future__ import annotations

from pathlib import Path

from unetseg.errors import UserError
from unetseg.infer.engine import ImagePredictor, resolve_device
from unetseg.modelfile import ModelCard, load_model


def load_predictor(model: str | Path, *, tile: int | None = None, overlap: float | None = None,
                   batch_size: int = 4, device: str = "auto", tta: str | None = None
                   ) -> tuple[ImagePredictor, ModelCard]:
    """A ready :class:`ImagePredictor` for a model file, with its card.

    ``tile`` and ``overlap`` None plan the tiling per image (see :class:`ImagePredictor`);
    the model runs in its fastest memory layout (channels-last for most).

    ``tta`` is a test-time augmentation mode (``flip``, ``d4``, ``rot:N``; see
    :mod:`unetseg.infer.tta`) applied to every tile, or None.
    """
    from unetseg.infer.tta import parse_tta

    try:
        parse_tta(tta)
    except ValueError as exc:
        raise UserError(f"--tta {tta}: {exc}") from None
    check_prediction_options(tile, overlap, batch_size)
    net, card = load_model(model, resolve_device(device))
    predictor = ImagePredictor(net, card.stats, tile=tile, overlap=overlap,
                               batch_size=batch_size, tta=tta, fast_layout=True)
    return predictor, card


def check_prediction_options(tile: int | None, overlap: float | None, batch_size: int) -> None:
    """One-line :class:`UserError` for tiling options no prediction can use."""
    if tile is not None and tile < 16:
        raise UserError(f"--tile {tile}: tiles must be at least 16 pixels; e.g. --tile 512")
    if overlap is not None and not 0.0 <= overlap < 1.0:
        raise UserError(f"--overlap {overlap}: must be a fraction in [0, 1); e.g. 0.25")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: give at least 1 tile per batch")
