"""The HTTP service: ``POST /predict``, ``GET /health``, ``GET /model`` and a web page at ``/``.

Build it with :func:`create_app` (the model is loaded once, there) and run it with any ASGI
server; :func:`run_server` uses uvicorn. Limits:

* request bodies above ``max_upload_bytes`` -> 413 (refused from the ``Content-Length`` header
  before anything is read, or as soon as a streamed body crosses the limit);
* images above ``max_pixels`` (height x width, read from the header) -> 413;
* volumes above ``max_voxels`` (depth x height x width, read from the header) -> 413;
* anything that is not a readable PNG, TIFF or JPEG image or NIfTI, NumPy or TIFF-stack
  volume, or has the wrong channel count -> 400 with a message;
* more than ``workers + queue_size`` requests in inference -> 503 with ``Retry-After``.

Volumes (``.nii``, ``.nii.gz``, ``.npy``, and multi-page TIFF stacks when ``volume=true`` or
the served model is 3D) are predicted with the 3D sliding window (a 3D model) or slice by slice
(a 2D model) and answered in the upload's format: NIfTI with the input's affine, a TIFF stack
with its spacing; ``format=json`` gives the shape, spacing and class voxel counts.

An instance model (``train --task instance``) answers ``format=png`` with its object labels
(a 16-bit PNG, 0 background; a 32-bit TIFF above 65535 objects) and ``format=json`` with the
object table of ``unetseg predict``'s ``<stem>_objects.csv``.

Decoding, inference and encoding run in worker threads (:mod:`unetseg.serve.worker`), so the
event loop keeps answering ``/health`` while a large image is predicted.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations
# at run time, and ``Request`` is imported inside :func:`_add_routes` (fastapi is optional).
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from importlib import resources
from pathlib import Path
from typing import Any

from unetseg.config import PredictConfig, ServeLimits
from unetseg.data.volumes import is_volume_file, volume_stem
from unetseg.errors import UserError
from unetseg.serve.codec import (
    VOLUME_ONLY,
    BadUpload,
    class_counts,
    decode,
    decode_volume,
    instance_image,
    label_png,
    sniff,
    sniff_volume,
    upload_format,
    volume_labels,
)
from unetseg.serve.worker import InferenceQueue, QueueFull, ServedModel, load_served_model

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STATIC = resources.files("unetseg.serve") / "static"
INSTALL_HINT = "install the serve extra: pip install 'unetseg[serve]'"
LIMITS = ServeLimits()


class BodyTooLarge(Exception):
    """The request body crossed the upload limit while it was being read."""


class BodyLimit:
    """ASGI middleware: 413 for request bodies larger than ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            from fastapi.responses import JSONResponse

            response = JSONResponse({"detail": self._message(int(declared))}, status_code=413)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self._message(seen))
            return message

        await self.app(scope, limited, send)

    def _message(self, size: int) -> str:
        return (f"the upload is larger than the limit of {self.max_bytes} bytes ({size} bytes"
                " sent); send a smaller image")


def _mask_rgb(classes: Any) -> list[list[int] | None]:
    """The colour a browser shows for each class in the mask PNG (how the page reads it back):
    gray values (None above 255), the table's colours, or the palette's entries."""
    from unetseg.data.masks import mask_palette

    if classes.encoding == "rgb":
        return [list(c) for c in classes.colors]
    if classes.encoding == "palette":
        flat = mask_palette(classes)  # as write_mask writes it
        return [flat[3 * v : 3 * v + 3] if len(flat) >= 3 * v + 3 else None
                for v in classes.values]
    return [[v, v, v] if v <= 255 else None for v in classes.values]


def _model_info(served: ServedModel, limits: dict[str, int]) -> dict[str, Any]:
    from unetseg.config import to_dict
    from unetseg.data.masks import class_colours

    card, predictor = served.card, served.predictor
    colours = class_colours(card.classes).tolist()
    shown = _mask_rgb(card.classes)
    classes = [{"id": i, "value": v, "name": n, "color": colours[i], "mask_rgb": shown[i]}
               for i, (v, n) in enumerate(zip(card.classes.values, card.classes.names))]
    return {
        "model": served.path.name, "backend": served.backend,
        "classes": classes, "encoding": card.classes.encoding,
        "ignore_value": card.classes.ignore_value,
        "in_channels": card.model.in_channels, "config": to_dict(card.model),
        "normalization": card.stats.to_dict(),
        "tiling": {"tile": predictor.tile, "overlap": predictor.overlap,
                   "batch_size": predictor.batch_size},
        "limits": limits,
        "members": card.info.get("members", [served.path.name]),
        "postprocessing": [s.to_dict(card.classes.names) for s in served.postprocessing],
        "task": card.task,
        "instance": to_dict(card.instance) if card.instance is not None else None,
    }


async def _read_upload(request: Any) -> tuple[bytes, str]:
    """The image bytes and a name for messages: the ``file`` field of a multipart form, or the
    raw body of any other request."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return await request.body(), "upload"
    form = await request.form(max_files=1, max_fields=4)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise BadUpload(400, "no file in the form; send the image as the multipart field"
                             " 'file'")
    data = await upload.read()
    return data, Path(upload.filename or "upload").name


def _objects_job(served: ServedModel, image: Any, name: str, fmt: str) -> Any:
    """An instance model's answer: the object labels as ``unetseg predict`` writes them
    (``(bytes, media type, suffix)``), or JSON with the object table."""
    from unetseg.infer.instances import measure_objects

    labels = served.predict_objects(image)
    if fmt == "png":
        return instance_image(labels)
    table = measure_objects(labels, image)
    return {"image": name, "height": int(labels.shape[0]), "width": int(labels.shape[1]),
            "count": len(table), "objects": table}


def _inference_job(served: ServedModel, data: bytes, suffix: str, name: str,
                   fmt: str) -> tuple[Any, float]:
    """Decode, predict and encode one upload (runs in a worker thread)."""
    started = time.perf_counter()
    image = decode(data, suffix, name)
    try:
        served.check_channels(image, name)
    except UserError as exc:
        raise BadUpload(400, str(exc)) from None
    if served.card.instance is not None:
        return _objects_job(served, image, name, fmt), time.perf_counter() - started
    ids = served.predict_ids(image)
    if fmt == "png":
        body: Any = label_png(ids, served.card.classes)
    else:
        body = {"image": name, "height": int(ids.shape[0]), "width": int(ids.shape[1]),
                "classes": class_counts(ids, served.card.classes)}
    return body, time.perf_counter() - started


def _volume_job(served: ServedModel, data: bytes, suffix: str, name: str,
                fmt: str | None) -> tuple[Any, float]:
    """Decode, predict and encode one uploaded volume (runs in a worker thread): the labels
    in the upload's format (``(bytes, media type)``) or, for ``json``, their counts."""
    import numpy as np

    from unetseg.infer.volume import volume_to_float

    started = time.perf_counter()
    volume = decode_volume(data, suffix, name)
    try:
        ids = served.predict_volume_ids(volume_to_float(volume.array))
    except UserError as exc:
        raise BadUpload(400, f"{name}: {exc}") from None
    if fmt == "json":
        body: Any = {"volume": name, "shape": [int(v) for v in ids.shape],
                     "spacing": list(volume.spacing) if volume.spacing else None,
                     "classes": class_counts(ids, served.card.classes, unit="voxels")}
    else:  # the masks' values, as predict_volumes writes them
        body = volume_labels(np.asarray(served.card.classes.values)[ids], volume, suffix)
    return body, time.perf_counter() - started


def create_app(model_path: Any, config: PredictConfig | None = None, *,
               max_upload_bytes: int = LIMITS.max_upload_bytes,
               max_pixels: int = LIMITS.max_pixels, max_voxels: int = LIMITS.max_voxels,
               queue_size: int = LIMITS.queue_size, workers: int = LIMITS.workers,
               **options: Any) -> Any:
    """The FastAPI app serving one model file, loaded here, once.

    Args:
        model_path: a ``.safetensors`` model (PyTorch), an exported ``.onnx`` (ONNX Runtime),
            or a model set (a run folder of ``train --folds``, or several model files; see
            :mod:`unetseg.infer.modelset`).
        max_upload_bytes: largest request body; larger ones get 413.
        max_pixels: largest image height x width; larger ones get 413.
        max_voxels: largest volume depth x height x width; larger ones get 413.
        queue_size: requests that may wait for a worker; beyond them, 503.
        workers: inference threads.
        config: how to predict (:class:`~unetseg.config.PredictConfig`: tiling, device,
            test-time augmentation, backend; ``auto`` picks the backend by the file suffix).
        options: :class:`~unetseg.config.PredictConfig` fields as keywords, on top of
            ``config``.

    Raises:
        UserError: an unreadable model file, or fastapi missing.
    """
    try:
        from fastapi import FastAPI
    except ImportError:
        raise UserError(f"unetseg serve needs fastapi; {INSTALL_HINT}") from None
    if max_upload_bytes < 1 or max_pixels < 1 or max_voxels < 1:
        raise UserError("--max-upload-mb, --max-pixels and --max-voxels must be positive")
    if queue_size < 0:
        raise UserError(f"--queue-size {queue_size}: give 0 or more")
    served = load_served_model(model_path, config, **options)
    queue = InferenceQueue(workers=workers, queue_size=queue_size)
    limits = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels,
              "max_voxels": max_voxels, "queue_size": queue_size, "workers": workers}

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        queue.shutdown()

    app = FastAPI(title="unetseg", summary=f"U-Net segmentation: {served.path.name}",
                  lifespan=lifespan)
    app.state.served, app.state.queue = served, queue
    _add_routes(app, served, queue, limits)
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    return app


def _add_routes(app: Any, served: ServedModel, queue: InferenceQueue,
                limits: dict[str, int]) -> None:
    from fastapi import Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    static = Path(str(STATIC))
    info = _model_info(served, limits)

    @app.exception_handler(BodyTooLarge)
    async def too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(BadUpload)
    async def bad_upload(_: Request, exc: BadUpload) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(static / "index.html", media_type="text/html")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "backend": served.backend,
                "uptime_s": round(time.time() - served.loaded_at, 3),
                "queue": {"capacity": queue.capacity, "admitted": queue.admitted,
                          "completed": queue.completed, "rejected": queue.rejected}}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        return info

    @app.post("/predict")
    async def predict(request: Request, format: str | None = None,
                      volume: bool = False) -> Response:
        if format not in (None, "png", "json"):
            raise BadUpload(400, f"format={format}: use png (the label image) or json")
        data, name = await _read_upload(request)
        suffix = upload_format(data, name)
        if suffix in VOLUME_ONLY or (suffix == ".tif" and (volume or served.spatial_dims == 3)):
            return await _predict_volume(data, suffix, name, format)
        if volume:
            raise BadUpload(400, f"{name}: volume=true but this is a 2-D {suffix[1:].upper()}"
                                 " image; send a NIfTI, NumPy or multi-page TIFF volume")
        if served.spatial_dims == 3:
            raise BadUpload(400, f"{name}: the served model is 3D; send a volume (.nii,"
                                 " .nii.gz, .npy or a multi-page TIFF)")
        suffix, height, width = sniff(data, name)
        if height * width > limits["max_pixels"]:
            raise BadUpload(413, f"{name}: {width}x{height} pixels is more than the limit of"
                                 f" {limits['max_pixels']}; send a smaller image")
        fmt = format or "png"
        try:
            body, seconds = await queue.run(
                lambda: _inference_job(served, data, suffix, name, fmt))
        except QueueFull:
            return _queue_full()
        headers = {"X-Inference-Seconds": f"{seconds:.4f}"}
        if fmt == "json":
            return JSONResponse(body, headers=headers)
        if served.card.instance is not None:  # object labels: a 16-bit PNG or a TIFF
            content, media, suffix = body
            headers["Content-Disposition"] = (f'inline; filename="{Path(name).stem}_instances'
                                              f'{suffix}"')
            return Response(content, media_type=media, headers=headers)
        headers["Content-Disposition"] = f'inline; filename="{Path(name).stem}_mask.png"'
        return Response(body, media_type="image/png", headers=headers)

    async def _predict_volume(data: bytes, suffix: str, name: str,
                              fmt: str | None) -> Response:
        if fmt == "png":
            raise BadUpload(400, f"format=png: {name} is a volume, answered in its own format"
                                 f" ({suffix}); drop format or use json")
        depth, height, width = sniff_volume(data, suffix, name)
        if depth * height * width > limits["max_voxels"]:
            raise BadUpload(413, f"{name}: {depth}x{height}x{width} voxels is more than the"
                                 f" limit of {limits['max_voxels']}; send a smaller volume or"
                                 " raise --max-voxels")
        try:
            body, seconds = await queue.run(
                lambda: _volume_job(served, data, suffix, name, fmt))
        except QueueFull:
            return _queue_full()
        headers = {"X-Inference-Seconds": f"{seconds:.4f}"}
        if fmt == "json":
            return JSONResponse(body, headers=headers)
        content, media = body
        stem = volume_stem(name) if is_volume_file(name) else Path(name).stem
        headers["Content-Disposition"] = f'inline; filename="{stem}_labels{suffix}"'
        return Response(content, media_type=media, headers=headers)

    def _queue_full() -> Response:
        return JSONResponse({"detail": "the inference queue is full; retry shortly"},
                            status_code=503, headers={"Retry-After": "1"})

    app.mount("/static", StaticFiles(directory=static), name="static")


def served_name(model_path: Any) -> str:
    """The name of a model file, run folder or list of model files, for the banner."""
    from unetseg.infer.modelset import model_name

    return model_name(model_path)


def run_server(model_path: Any, config: PredictConfig | None = None, *,
               host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Load the model, build the app and serve it with uvicorn until interrupted; ``config``
    and ``options`` are those of :func:`create_app`."""
    try:
        import uvicorn
    except ImportError:
        raise UserError(f"unetseg serve needs uvicorn; {INSTALL_HINT}") from None
    app = create_app(model_path, config, **options)
    print(f"serving {served_name(model_path)} on http://{host}:{port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
