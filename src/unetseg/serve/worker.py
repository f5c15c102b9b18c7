"""The served model and its bounded inference queue.

Inference runs in worker threads, never on the event loop. At most ``workers + queue_size``
requests are admitted at a time (running or waiting); one more is refused at once with
:class:`QueueFull` (HTTP 503), so a burst never builds an unbounded backlog. A slot is freed
when its job has finished, not when its client goes away.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from unetseg.config import PredictConfig, predict_config
from unetseg.errors import UserError
from unetseg.modelfile import ModelCard

if TYPE_CHECKING:
    from unetseg.infer.modelset import ModelSpec
    from unetseg.infer.postprocess import Step

T = TypeVar("T")


class QueueFull(Exception):
    """Every inference slot is taken."""


class InferenceQueue:
    """A thread pool that admits at most ``workers + queue_size`` jobs at a time.

    Args:
        workers: threads running jobs (1 is right for one model on one device: the model
            itself uses all cores).
        queue_size: jobs that may wait for a thread; 0 admits only running jobs.
    """

    def __init__(self, workers: int = 1, queue_size: int = 8):
        if workers < 1 or queue_size < 0:
            raise ValueError(f"need workers >= 1 and queue_size >= 0, got {workers}, {queue_size}")
        self.capacity = workers + queue_size
        self._executor = ThreadPoolExecutor(max_workers=workers,
                                            thread_name_prefix="unetseg-infer")
        self._lock = threading.Lock()
        self._admitted = 0
        self.completed = 0
        self.rejected = 0

    @property
    def admitted(self) -> int:
        """Jobs running or waiting now."""
        return self._admitted

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a worker thread and await its result.

        Raises:
            QueueFull: ``capacity`` jobs are already admitted.
        """
        with self._lock:
            if self._admitted >= self.capacity:
                self.rejected += 1
                raise QueueFull
            self._admitted += 1

        def job() -> T:
            try:
                return fn()
            finally:
                with self._lock:
                    self._admitted -= 1
                    self.completed += 1

        return await asyncio.wrap_future(self._executor.submit(job))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class ServedModel:
    """A model loaded once: images (C, H, W) as read -> class ids (H, W); volumes
    (C, D, H, W) -> class ids (D, H, W).

    ``predictor`` is an :class:`~unetseg.infer.engine.ImagePredictor` (``torch`` backend) or an
    :class:`~unetseg.infer.backends.OnnxImagePredictor` (``onnxruntime``); ``postprocessing``
    is a model set's (:mod:`unetseg.infer.postprocess`), applied to every label image;
    ``config`` the options it was loaded with (the tiling of volumes).
    """

    path: Path
    backend: str
    predictor: Any
    card: ModelCard
    loaded_at: float = field(default_factory=time.time)
    postprocessing: tuple[Step, ...] = ()
    config: PredictConfig = field(default_factory=PredictConfig)

    def check_channels(self, image: np.ndarray, name: str) -> None:
        self.predictor.check_channels(image, name)

    def predict_ids(self, image: np.ndarray) -> np.ndarray:
        """Class ids ``(H, W)`` int64 (argmax of the tiled logits, then the
        post-processing)."""
        from unetseg.infer.postprocess import apply_postprocessing
        from unetseg.infer.predict import logits_to_labels

        ids = logits_to_labels(self.predictor.logits(image)).numpy()
        return apply_postprocessing(ids, self.postprocessing)

    @property
    def spatial_dims(self) -> int:
        """3 for a 3D network (it takes volumes only), else 2."""
        return self.card.model.spatial_dims

    def predict_volume_ids(self, volume: np.ndarray) -> np.ndarray:
        """Class ids ``(D, H, W)`` int64 of a volume ``(C, D, H, W)`` in its read scale
        (:func:`~unetseg.infer.volume.volume_to_float`).

        A 3D network runs the 3D sliding window as ``unetseg predict`` does (windows of
        :attr:`config`'s tile along each axis, else planned per volume; its overlap, else 0.5),
        on PyTorch or, for an exported ``.onnx``, on ONNX Runtime (the tiling stored in the
        file is for 2-D images and is not used); a 2D model predicts slice by slice as it
        predicts images, each slice's labels post-processed as an image's.

        Raises:
            UserError: an instance model, or a volume of the wrong channel count.
        """
        from unetseg.infer.postprocess import apply_postprocessing
        from unetseg.infer.predict import logits_to_labels
        from unetseg.infer.volume import slice_by_slice_logits, window_volume_logits

        if self.card.instance is not None:
            raise UserError("an instance model; volumes take a semantic model")
        want = self.card.model.in_channels
        if volume.shape[0] != want:
            raise UserError(f"the volume has {volume.shape[0]} channel(s); the model takes"
                            f" {want}")
        predictor = self.predictor
        if self.spatial_dims == 2:
            logits = slice_by_slice_logits(lambda image: predictor.logits(image.numpy()),
                                           torch.as_tensor(volume))
            ids = logits_to_labels(logits.transpose(0, 1)).numpy()
            return np.stack([apply_postprocessing(s, self.postprocessing) for s in ids])
        config = self.config
        tile = (config.tile,) * 3 if config.tile else None
        if self.backend == "torch":
            window, device = predictor.model, predictor.device
            multiple = predictor.model.size_multiple
        else:  # an exported 3D graph; its file states the size multiple per axis
            window, device = predictor.predictor, torch.device("cpu")
            multiple = predictor.info.size_multiple
        logits = window_volume_logits(window, self.card.stats, volume, multiple, tile=tile,
                                      overlap=config.overlap, batch_size=config.batch_size,
                                      device=device)
        return logits_to_labels(logits.transpose(0, 1)).numpy()

    def predict_objects(self, image: np.ndarray) -> np.ndarray:
        """Object labels ``(H, W)`` int32 of an instance model (0 background), split from its
        output over the whole image (:mod:`unetseg.infer.instances`)."""
        from unetseg.infer.instances import instances_from_logits

        assert self.card.instance is not None, "not an instance model"
        return instances_from_logits(self.predictor.logits(image), self.card.instance)


def load_served_model(path: ModelSpec, config: PredictConfig | None = None, **options: Any
                      ) -> ServedModel:
    """Load a model file once for serving, as ``config`` and ``options`` (its fields as
    keywords, on top) say: with the default backend ``auto``, ``.onnx`` files run on ONNX
    Runtime and a ``.safetensors`` model on the backend measured faster for it on this machine
    (:mod:`unetseg.export.fastest`). A model set (a run folder of ``train --folds``, or several
    model files; :mod:`unetseg.infer.modelset`) serves its members' mean probabilities with its
    post-processing."""
    from unetseg.export.fastest import load_fastest
    from unetseg.infer.modelset import model_name

    cfg = predict_config(config, **options)
    loaded = load_fastest(path, cfg)
    shown = Path(path) if isinstance(path, str | os.PathLike) else Path(model_name(path))
    return ServedModel(shown, loaded.backend, loaded.predictor, loaded.card,
                       postprocessing=loaded.postprocessing, config=cfg)
