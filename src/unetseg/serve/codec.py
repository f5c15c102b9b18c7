"""Uploaded bytes to images and predictions to response bodies, for the HTTP service.

Uploads are recognised by their first bytes (never by the client's file name), measured from
their header before anything is decoded, and decoded by :func:`unetseg.data.io.read_image`, the
reader of the command line, so the service accepts exactly the files ``unetseg predict`` does.
Volumes (NIfTI, optionally gzipped; NumPy ``.npy``; multi-page TIFF stacks) are measured from
their header too (:func:`sniff_volume`; a gzipped NIfTI decompresses its first 540 bytes only),
decoded by :func:`unetseg.data.volumes.read_volume` and answered in their own format
(:func:`volume_labels`).
"""

from __future__ import annotations

import gzip
import io
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import tifffile
from PIL import Image

from unetseg.data.classes import ClassTable
from unetseg.data.io import read_image
from unetseg.data.volumes import Volume, read_volume, write_volume
from unetseg.errors import UserError

#: Leading bytes of the accepted formats -> the suffix the readers expect.
MAGIC = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"II+\x00", ".tif"),  # BigTIFF
    (b"MM\x00+", ".tif"),
    (b"\x93NUMPY", ".npy"),
    (b"\x1f\x8b", ".nii.gz"),  # gzip: a NIfTI inside, or refused by sniff_volume
    (struct.pack("<i", 348), ".nii"),  # NIfTI-1: the header size leads the file
    (struct.pack(">i", 348), ".nii"),
    (struct.pack("<i", 540), ".nii"),  # NIfTI-2
    (struct.pack(">i", 540), ".nii"),
)
VOLUME_ONLY = (".nii", ".nii.gz", ".npy")
"""Upload formats that are always volumes (a TIFF is one when it is a stack and asked to be)."""
VOLUME_MEDIA = {".nii": "application/octet-stream", ".nii.gz": "application/gzip",
                ".npy": "application/octet-stream", ".tif": "image/tiff"}


class BadUpload(Exception):
    """The upload cannot be used; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def upload_format(data: bytes, name: str) -> str:
    """The suffix of an upload's format, from its leading bytes.

    Raises:
        BadUpload: 400 for an empty upload or unknown leading bytes.
    """
    if not data:
        raise BadUpload(400, f"{name}: the upload is empty; send a PNG, TIFF or JPEG image")
    suffix = next((s for magic, s in MAGIC if data.startswith(magic)), None)
    if suffix is None:
        raise BadUpload(400, f"{name}: not a PNG, TIFF or JPEG image, nor a NIfTI or NumPy"
                             f" volume (unknown leading bytes {data[:8].hex()})")
    return suffix


def sniff(data: bytes, name: str) -> tuple[str, int, int]:
    """The suffix, height and width of an uploaded image, from its header only.

    Raises:
        BadUpload: 400 for an empty file, an unknown format or an unreadable header.
    """
    suffix = upload_format(data, name)
    if suffix in VOLUME_ONLY:
        raise BadUpload(400, f"{name}: a {suffix} volume; the served model takes 2-D images"
                             " here, send a PNG, TIFF or JPEG")
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


def sniff_volume(data: bytes, suffix: str, name: str) -> tuple[int, int, int]:
    """``(D, H, W)`` of an uploaded volume of format ``suffix`` (:func:`upload_format`), read
    from its header without decoding the voxels; a TIFF of one page is ``(1, H, W)``.

    Raises:
        BadUpload: 400 for an unreadable header or one that is not a volume's.
    """
    try:
        if suffix == ".npy":
            shape = _npy_shape(data)
        elif suffix in (".nii", ".nii.gz"):
            shape = _nifti_shape(data, suffix)
        elif suffix == ".tif":
            shape = _tiff_stack_shape(data)
        else:
            raise BadUpload(400, f"{name}: a 2-D image, not a volume; send a NIfTI, NumPy or"
                                 " multi-page TIFF volume")
    except (BadUpload, UserError):
        raise
    except Exception as exc:  # header readers raise many types for damaged files
        raise BadUpload(400, f"{name}: cannot read the volume header ({_one_line(exc)});"
                             " check that the file is complete") from None
    if len(shape) < 3 or min(shape) < 1:
        raise BadUpload(400, f"{name}: shape {tuple(shape)} is not a volume; send (D, H, W) or"
                             " (C, D, H, W) voxels")
    d, h, w = shape[-3:]
    return int(d), int(h), int(w)


def _npy_shape(data: bytes) -> tuple[int, ...]:
    """The array shape in a ``.npy`` header (versions 1 and 2): ``(D, H, W)`` or
    ``(C, D, H, W)``."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    read = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f".npy format version {version[0]}.{version[1]}; save with numpy.save")
    shape, _, _ = read(stream)
    return tuple(int(v) for v in shape)


def _nifti_shape(data: bytes, suffix: str) -> tuple[int, ...]:
    """The voxel grid of a NIfTI-1/2 header as ``(z, y, x)``, or ``(c, z, y, x)`` for four
    dimensions, as :func:`~unetseg.data.volumes.read_volume` orders it."""
    from unetseg.data.volumes import _nibabel

    nib = _nibabel()
    if suffix == ".nii.gz":
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            head = stream.read(540)
    else:
        head = data[:540]
    size = next((n for n in (348, 540) for order in "<>"
                 if head[:4] == struct.pack(f"{order}i", n)), None)
    if size is None:
        raise ValueError("no NIfTI header inside; send a .nii or .nii.gz file")
    header_class = nib.Nifti1Header if size == 348 else nib.Nifti2Header
    shape = tuple(int(v) for v in header_class.from_fileobj(io.BytesIO(head)).get_data_shape())
    return tuple(reversed(shape[:3])) if len(shape) <= 3 else (shape[3], *reversed(shape[:3]))


def _tiff_stack_shape(data: bytes) -> tuple[int, ...]:
    """``(D, H, W)`` of the first series of a TIFF from its page headers (channel axes and a
    single time point dropped, as the volume reader does)."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        series = tif.series[0]
        shape, axes = series.shape, series.axes.upper()
    spatial = [n for n, a in zip(shape, axes, strict=True) if a not in "CS" and not
               (a == "T" and n == 1)]
    if len(spatial) == 2:
        return (1, *spatial)
    return tuple(int(v) for v in spatial)


T = TypeVar("T")


def _read_upload(data: bytes, suffix: str, name: str, read: Callable[[Path], T]) -> T:
    """``read`` an upload from a temporary ``upload<suffix>`` file; a reader's
    :class:`UserError` becomes a 400 naming the upload instead of the temporary file."""
    with tempfile.TemporaryDirectory(prefix="unetseg-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return read(path)
        except UserError as exc:
            raise BadUpload(400, str(exc).replace(str(path), name)) from None


def decode_volume(data: bytes, suffix: str, name: str) -> Volume:
    """Decode an uploaded volume as :func:`~unetseg.data.volumes.read_volume` does: voxels
    ``(C, D, H, W)`` in the file's dtype, with the file's spacing and (NIfTI) affine.

    Raises:
        BadUpload: 400 with the reader's message, naming the upload instead of a temporary file.
    """
    return _read_upload(data, suffix, name, read_volume)


def volume_labels(labels: np.ndarray, like: Volume, suffix: str) -> tuple[bytes, str]:
    """Labels ``(D, H, W)`` written as :func:`~unetseg.data.volumes.write_volume` writes them,
    in the upload's format ``suffix`` with its spacing (NIfTI: its affine): ``(bytes, media
    type)``."""
    with tempfile.TemporaryDirectory(prefix="unetseg-labels-") as folder:
        path = write_volume(Path(folder) / f"labels{suffix}", labels, like)
        return path.read_bytes(), VOLUME_MEDIA[suffix]


def decode(data: bytes, suffix: str, name: str) -> np.ndarray:
    """Decode an upload as :func:`read_image` does: float32 ``(C, H, W)``.

    Raises:
        BadUpload: 400 with the reader's message, naming the upload instead of a temporary file.
    """
    return _read_upload(data, suffix, name, read_image)


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


def class_counts(ids: np.ndarray, classes: ClassTable, unit: str = "pixels"
                 ) -> list[dict[str, Any]]:
    """Per class: value, name, count (under the key ``unit``: pixels of an image, voxels of a
    volume) and fraction of the image or volume."""
    counts = np.bincount(ids.ravel(), minlength=classes.num_classes)
    total = max(int(ids.size), 1)
    return [{"id": i, "value": v, "name": n, unit: int(c), "fraction": int(c) / total}
            for i, (v, n, c) in enumerate(zip(classes.values, classes.names, counts.tolist()))]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__
