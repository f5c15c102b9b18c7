"""Uploaded bytes to images and predictions to response bodies, for the HTTP service.

Uploads are recognised by their first bytes (never by the client's file name), measured from
their header before anything is decoded, and decoded by :func:`unetseg.data.io.read_image`, the
reader of the command line, so the service accepts exactly the files ``unetseg predict`` does.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from unetseg.data.classes import ClassTable
from unetseg.data.io import read_image
from unetseg.errors import UserError

#: Leading bytes of the accepted formats -> the suffix the readers expect.
MAGIC = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"II+\x00", ".tif"),  # BigTIFF
    (b"MM\x00+", ".tif"),
)


class BadUpload(Exception):
    """The upload cannot be used; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def sniff(data: bytes, name: str) -> tuple[str, int, int]:
    """The suffix, height and width of an uploaded image, from its header only.

    Raises:
        BadUpload: 400 for an empty file, an unknown format or an unreadable header.
    """
    if not data:
        raise BadUpload(400, f"{name}: the upload is empty; send a PNG, TIFF or JPEG image")
    suffix = next((s for magic, s in MAGIC if data.startswith(magic)), None)
    if suffix is None:
        raise BadUpload(400, f"{name}: not a PNG, TIFF or JPEG image (unknown leading bytes"
                             f" {data[:8].hex()})")
    try:
        if suffix == ".tif":
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages.first
                return suffix, int(page.imagelength), int(page.imagewidth)
        with Image.open(io.BytesIO(data)) as im:  # reads the header, not the pixels
            width, height = im.size
        return suffix, int(height), int(width)
    except Image.DecompressionBombError:
        raise BadUpload(413, f"{name}: the image has more pixels than the decoder allows;"
                             " send a smaller image") from None
    except Exception as exc:  # decoders raise many types for damaged headers
        raise BadUpload(400, f"{name}: cannot read the image header ({_one_line(exc)})") from None


def decode(data: bytes, suffix: str, name: str) -> np.ndarray:
    """Decode an upload as :func:`read_image` does: float32 ``(C, H, W)``.

    Raises:
        BadUpload: 400 with the reader's message, naming the upload instead of a temporary file.
    """
    with tempfile.TemporaryDirectory(prefix="unetseg-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return read_image(path)
        except UserError as exc:
            raise BadUpload(400, str(exc).replace(str(path), name)) from None


def label_png(ids: np.ndarray, classes: ClassTable) -> bytes:
    """Class ids ``(H, W)`` as PNG bytes in the training masks' encoding (gray values, colours
    or a palette), exactly as ``unetseg predict`` writes them."""
    from unetseg.data.masks import write_mask

    with tempfile.TemporaryDirectory(prefix="unetseg-mask-") as folder:
        path = Path(folder) / "mask.png"
        write_mask(path, ids, classes)
        return path.read_bytes()


def instance_image(labels: np.ndarray) -> tuple[bytes, str, str]:
    """Object labels ``(H, W)`` as ``unetseg predict`` writes them (a 16-bit PNG, a 32-bit TIFF
    above 65535 objects): ``(bytes, media type, file suffix)``."""
    from unetseg.data.write import write_instances

    with tempfile.TemporaryDirectory(prefix="unetseg-objects-") as folder:
        path = write_instances(folder, "upload", labels)
        media = "image/png" if path.suffix == ".png" else "image/tiff"
        return path.read_bytes(), media, path.suffix


def class_counts(ids: np.ndarray, classes: ClassTable) -> list[dict[str, Any]]:
    """Per class: value, name, pixel count and fraction of the image."""
    counts = np.bincount(ids.ravel(), minlength=classes.num_classes)
    total = max(int(ids.size), 1)
    return [{"id": i, "value": v, "name": n, "pixels": int(c), "fraction": int(c) / total}
            for i, (v, n, c) in enumerate(zip(classes.values, classes.names, counts.tolist()))]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__
