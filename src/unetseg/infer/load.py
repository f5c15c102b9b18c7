"""Model files to ready image predictors: the one place that loads a model for prediction.

Prediction, evaluation and the server all load their models here, so they check options and
pick backends, devices and memory layouts the same way. This module knows the floors below it
(the model file, the engine, the backends) and nothing above.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unetseg.config import PredictConfig, predict_config
from unetseg.errors import UserError
from unetseg.infer.engine import ImagePredictor, resolve_device
from unetseg.modelfile import ModelCard, load_model


def resolve_backend(model: str | Path, backend: str) -> str:
    """``auto``: ONNX Runtime for ``.onnx`` files, PyTorch for anything else."""
    if backend == "auto":
        return "onnxruntime" if Path(model).suffix.lower() == ".onnx" else "torch"
    return backend


def load_predictor(model: str | Path, config: PredictConfig | None = None, **options: Any
                   ) -> tuple[ImagePredictor, ModelCard]:
    """A ready PyTorch :class:`ImagePredictor` for a model file, with its card.

    ``config`` and ``options`` (its fields as keywords, on top) give the tiling, device and
    test-time augmentation; a tile and overlap left None are planned per image (see
    :class:`ImagePredictor`). The model runs in its fastest memory layout (channels-last for
    most) and in the number format ``config.precision`` asks for (``auto``: bf16 where the CPU
    has it natively and the model's labels agree, decided on the first image; see
    :mod:`unetseg.infer.precision`).
    """
    from unetseg.infer.tta import parse_tta

    cfg = predict_config(config, **options)
    try:
        parse_tta(cfg.tta)
    except ValueError as exc:
        raise UserError(f"--tta {cfg.tta}: {exc}") from None
    cfg.check()
    net, card = load_model(model, resolve_device(cfg.device))
    predictor = ImagePredictor(net, card.stats, tile=cfg.tile, overlap=cfg.overlap,
                               batch_size=cfg.batch_size, tta=cfg.tta, fast_layout=True,
                               precision=cfg.precision)
    return predictor, card


def load_image_predictor(model: str | Path, config: PredictConfig, *,
                         streamed: Sequence[Path] = ()) -> tuple[Any, ModelCard]:
    """The image predictor of ``config.backend`` for a model file, with its card: an
    :class:`ImagePredictor` (PyTorch) or an :class:`~unetseg.infer.backends.OnnxImagePredictor`.
    Both have ``check_channels`` and ``logits``.

    ``streamed`` are the images that will be streamed, which only the PyTorch backend can do.
    """
    config.check()
    backend = resolve_backend(model, config.backend)
    if backend == "torch":
        return load_predictor(model, config)
    from unetseg.infer.backends import load_backend_predictor

    return load_backend_predictor(model, backend, tile=config.tile, overlap=config.overlap,
                                  batch_size=config.batch_size, device=config.device,
                                  tta=config.tta, precision=config.precision,
                                  streamed=streamed)
