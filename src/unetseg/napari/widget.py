"""The dock widget: predict an image layer with a model file, off the viewer's thread.

Choose a model file (``best.safetensors``; a run folder picks its ``best.safetensors``) and an
image layer, press Predict: the model is loaded once (kept for the next image), every tile
goes through the tiling of ``unetseg predict`` (:meth:`~unetseg.infer.engine.ImagePredictor.
logits`) in a worker thread, the progress bar advances after each batch of tiles, and a
Labels layer named after the model and its classes appears, with the class values, colours
and names (:mod:`unetseg.napari.labels`). Cancel stops after the batch running. How the
layer's axes become model inputs (gray, RGB, channels first, stacks) is
:mod:`unetseg.napari.planes`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.data.masks import class_colours
from unetseg.errors import UserError
from unetseg.napari.labels import class_values, labels_kwargs, layer_name
from unetseg.napari.planes import model_planes
from unetseg.napari.predict import MODEL_SUFFIX, Cancelled, predict_planes, resolve_model_file

try:
    from magicgui.types import FileDialogMode
    from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
    from qtpy.QtCore import QObject, Signal
except ImportError as exc:  # napari brings them; this is for an import outside napari
    raise UserError(f"the napari plugin needs napari, magicgui, qtpy and a Qt binding ({exc});"
                    " install them with pip install 'unetseg[napari]' pyqt5") from None

log = logging.getLogger(__name__)

TTA_CHOICES = ("none", "flip", "d4")


@dataclass(frozen=True)
class _Job:
    """What Predict was pressed with, read on the viewer's thread."""

    model: Path
    data: Any
    rgb: bool
    layer: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    device: str
    tta: str | None


@dataclass(frozen=True)
class _Result:
    job: _Job
    model_file: Path
    note: str
    card: Any
    values: np.ndarray
    count: int
    seconds: float


class _Relay(QObject):
    """Carries progress from the worker thread to the viewer's (a queued Qt signal)."""

    progressed = Signal(int, int)


class PredictWidget(Container):
    """Predict the chosen image layer with a unetseg model file into a new Labels layer."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self.model_file = FileEdit(mode=FileDialogMode.EXISTING_FILE, filter=f"*{MODEL_SUFFIX}")
        self.model_file.label = "Model file"
        self.image_layer = ComboBox(label="Image", choices=self._image_choices)
        self.device = ComboBox(label="Device", choices=_devices(), value="auto")
        self.tta = ComboBox(label="Test-time aug.", choices=TTA_CHOICES, value="none")
        self.predict_button = PushButton(text="Predict")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Tiles", min=0, max=1, value=0)
        self.status = Label(value="Choose a model file and an image layer.")
        self.status.native.setWordWrap(True)
        self.extend([self.model_file, self.image_layer, self.device, self.tta,
                     self.predict_button, self.cancel_button, self.progress, self.status])
        self._relay = _Relay()
        self._relay.progressed.connect(self._show_progress)
        self._stop = threading.Event()
        self._loaded: tuple[tuple[Any, ...], Any, Any] | None = None
        self.worker: Any = None
        self.predict_button.changed.connect(self.predict)
        self.cancel_button.changed.connect(self.cancel)
        layers = napari_viewer.layers
        for event in (layers.events.inserted, layers.events.removed, layers.events.reordered):
            event.connect(self._refresh_layers)

    # ------------------------------------------------------------------ viewer thread

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _refresh_layers(self, _event: Any = None) -> None:
        self.image_layer.reset_choices()

    def predict(self, _value: Any = None) -> Any:
        """Start predicting the chosen layer; returns the worker (None when nothing to do)."""
        from napari.qt.threading import create_worker

        if self.worker is not None:
            return None
        layer = self.image_layer.value
        if layer is None:
            self._say("Add or open an image layer first.")
            return None
        data = layer.data[0] if layer.multiscale else layer.data
        job = _Job(model=Path(str(self.model_file.value or "")), data=data, rgb=bool(layer.rgb),
                   layer=layer.name, scale=tuple(layer.scale), translate=tuple(layer.translate),
                   device=str(self.device.value),
                   tta=None if self.tta.value == "none" else str(self.tta.value))
        self._stop.clear()
        worker = create_worker(self._run, job, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._add_labels)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._idle)
        self.worker = worker
        self.predict_button.enabled, self.cancel_button.enabled = False, True
        self.progress.value = 0
        self._say(f"Predicting '{layer.name}'...")
        worker.start()
        return worker

    def cancel(self, _value: Any = None) -> None:
        """Stop the running prediction after its current batch of tiles."""
        if self.worker is not None:
            self._stop.set()
            self._say("Cancelling...")

    def _show_progress(self, done: int, total: int) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = min(done, total)

    def _add_labels(self, result: _Result) -> None:
        classes = result.card.classes
        metadata = {"unetseg_classes": classes.to_dict(), "unetseg_model": str(result.model_file)}
        if result.card.instance is not None:  # object ids: napari's own colours, one per object
            kwargs: dict[str, Any] = {"name": f"{result.model_file.stem} objects"}
            metadata["unetseg_task"] = "instance"
        else:
            kwargs = labels_kwargs(class_values(classes), class_colours(classes), classes.names,
                                   name=layer_name(result.model_file.stem, classes.names))
        ndim, job = result.values.ndim, result.job
        self._viewer.add_labels(result.values, scale=job.scale[-ndim:],
                                translate=job.translate[-ndim:], metadata=metadata, **kwargs)
        images = "1 image" if result.count == 1 else f"{result.count} images"
        self._say(f"'{result.job.layer}': {images} predicted in {result.seconds:.1f} s with"
                  f" {result.model_file.name}{result.note}.")

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self._say("Cancelled.")
        elif isinstance(exc, UserError):
            self._say(str(exc), error=True)
        else:
            log.error("prediction failed", exc_info=(type(exc), exc, exc.__traceback__))
            self._say(f"Prediction failed: {type(exc).__name__}: {exc}", error=True)

    def _idle(self) -> None:
        self.worker = None
        self.predict_button.enabled, self.cancel_button.enabled = True, False

    def _say(self, message: str, *, error: bool = False) -> None:
        self.status.value = message
        if error:
            from napari.utils.notifications import show_error

            show_error(message)

    # ------------------------------------------------------------------ worker thread

    def _run(self, job: _Job) -> _Result:
        started = time.perf_counter()
        model_file, note = resolve_model_file(job.model)
        predictor, card = self._load_predictor(model_file, job.device, job.tta)
        planes = model_planes(job.data, rgb=job.rgb, in_channels=card.model.in_channels,
                              name=job.layer)
        values = predict_planes(predictor, card.classes, planes, name=job.layer,
                                on_progress=self._relay.progressed.emit,
                                should_stop=self._stop.is_set, instance=card.instance)
        return _Result(job, model_file, note, card, values, planes.count,
                       time.perf_counter() - started)

    def _load_predictor(self, model_file: Path, device: str, tta: str | None) -> tuple[Any, Any]:
        """The predictor of a model file, loaded once while the file and options stay."""
        from unetseg.infer.load import load_predictor

        try:
            stat = model_file.stat()
        except OSError:
            raise UserError(f"{model_file}: model file not found; choose the best.safetensors"
                            " of a training run") from None
        key = (model_file.resolve(), stat.st_mtime_ns, stat.st_size, device, tta)
        if self._loaded is None or self._loaded[0] != key:
            predictor, card = load_predictor(model_file, device=device, tta=tta)
            self._loaded = (key, predictor, card)
        return self._loaded[1], self._loaded[2]


def _devices() -> list[str]:
    import torch

    return ["auto", "cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
