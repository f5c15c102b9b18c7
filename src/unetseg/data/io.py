"""Image and mask files to arrays.

Readers turn any supported file into a plain numpy array with a fixed layout, and turn every
problem with the file into a one-line :class:`~unetseg.errors.UserError` that names it:

* :func:`read_image` -> float32 ``(C, H, W)``, scaled to [0, 1] for integer files.
* :func:`read_mask` -> the raw integer label values ``(H, W)``.
* :func:`image_size` -> ``(H, W)`` from the header only.

The writers are in :mod:`unetseg.data.write`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageOps

from unetseg.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
MAX_PIXELS = 1 << 30
"""Largest image (height x width) that is read; bigger files are refused as likely bombs."""
MAX_PAGES = 16
"""Most pages of a multi-page TIFF that are read as the channels of one image."""
_PAGE_AXES = "IQZCTS"  # tifffile axis codes a page/plane axis can have

_PIL_LIMIT_LOCK = threading.Lock()
_ALPHA_EXTRASAMPLES = (1, 2)  # TIFF ExtraSamples: associated / unassociated alpha
_EXIF_ORIENTATION = 0x0112
_FORMATS_HINT = "check that it is a complete PNG, JPEG or TIFF file"

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- reading helpers


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _check_file(path: Path) -> None:
    """Raise a UserError unless ``path`` is a non-empty regular file."""
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path")
    if not path.is_file():
        raise UserError(f"{path}: is not a file; give an image file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty (0 bytes); replace it with a valid image")


def check_pixels(path: Path, height: int, width: int, *, limit: int | None = None,
                 fix: str = "split it into smaller tiles") -> None:
    """One-line :class:`UserError` for an empty image or one of more than ``limit`` pixels
    (``height * width``; default :data:`MAX_PIXELS`), checked from the header before anything
    is decoded; ``fix`` ends the message."""
    limit = MAX_PIXELS if limit is None else limit
    if height <= 0 or width <= 0:
        raise UserError(f"{path}: image has zero size ({width}x{height}); replace the file")
    if height * width > limit:
        raise UserError(
            f"{path}: image is {width}x{height} pixels, more than the limit of {limit}; {fix}"
        )


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


@contextlib.contextmanager
def _pil_limit() -> Iterator[None]:
    """Let PIL open images up to ``MAX_PIXELS`` for the duration of the block only.

    PIL checks its (global) bomb limit when a file is opened; it is raised here and restored
    afterwards, under a lock so concurrent threads never see or restore a wrong value.
    """
    with _PIL_LIMIT_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


@contextlib.contextmanager
def _decoding(path: Path, what: str) -> Iterator[None]:
    """Turn any decoder failure inside the block into a one-line UserError naming ``path``."""
    try:
        yield
    except UserError:
        raise
    except Image.DecompressionBombError:
        raise UserError(
            f"{path}: image is larger than {MAX_PIXELS} pixels; split it into smaller tiles"
        ) from None
    except MemoryError:
        raise UserError(f"{path}: not enough memory to decode this {what}") from None
    except Exception as exc:  # decoders raise many unrelated types for corrupt input
        raise UserError(f"{path}: cannot read {what} ({_one_line(exc)}); {_FORMATS_HINT}") from exc


def _load_pil(path: Path, to_array: Callable[[Path, Image.Image], np.ndarray]) -> np.ndarray:
    """Open with PIL, decode, apply the EXIF orientation and convert with ``to_array``."""
    with _pil_limit():
        im = Image.open(path)
    with im:
        width, height = im.size
        check_pixels(path, height, width)
        im.load()
        if im.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            return to_array(path, ImageOps.exif_transpose(im))
        return to_array(path, im)


def _tiff_channel_axis(shape: tuple[int, ...], axes: str) -> int | None:
    """The channel axis of a TIFF array, ``None`` for 2-D; -1 means "not a 2-D image".

    The TIFF's own samples axis (``S`` in tifffile's ``axes``) is used when it is first or
    last. Otherwise a 3-D array is channels-first or channels-last when its smallest axis
    (<= 4) is the first or the last one; last wins a tie (interleaved is the common layout).
    """
    if len(shape) == 2:
        return None
    if len(shape) != 3:
        return -1
    if len(axes) == 3 and "S" in (axes[0], axes[2]):
        return 2 if axes[2] == "S" else 0
    smallest = min(shape)
    if smallest <= 4 and shape[2] == smallest:
        return 2
    if smallest <= 4 and shape[0] == smallest:
        return 0
    if len(axes) == 3 and axes[0] in _PAGE_AXES and shape[0] <= MAX_PAGES:
        return 0  # a few pages of one shape: one channel each
    return -1


def _pages_as_channels(path: Path, tif: tifffile.TiffFile) -> np.ndarray | None:
    """Pages stored as separate series (one 2-D page each) of one shape and type, stacked as
    ``(pages, H, W)``; None when the file is not such a stack."""
    series = tif.series
    if len(series) < 2:
        return None
    shapes = {tuple(int(n) for n in s.shape) for s in series}
    if len(shapes) > 1 or len(next(iter(shapes))) != 2 or len({s.dtype for s in series}) > 1:
        log.warning("%s: TIFF holds %d images of different shapes; reading the first only",
                    path, len(series))
        return None
    height, width = next(iter(shapes))
    if len(series) > MAX_PAGES:
        raise UserError(
            f"{path}: multi-page TIFF with {len(series)} pages, more than the {MAX_PAGES} read "
            "as channels; save one 2-D image per file"
        )
    check_pixels(path, height, width)
    return np.stack([s.asarray() for s in series])


def _read_tiff(path: Path, what: str) -> tuple[np.ndarray, bool]:
    """Read a TIFF as ``(C, H, W)``; also says whether its last channel is alpha.

    Pages of one shape (up to :data:`MAX_PAGES`) become channels, whether tifffile groups them
    in one series or lists them as separate images.
    """
    with tifffile.TiffFile(path) as tif:
        pages = _pages_as_channels(path, tif)
        if pages is not None:
            return _native(pages), False
        series = tif.series[0]
        shape, axes = tuple(int(s) for s in series.shape), str(series.axes)
        if len(shape) > 3:  # drop length-1 axes (e.g. a single time point or page)
            kept = [i for i, n in enumerate(shape) if n != 1]
            shape, axes = tuple(shape[i] for i in kept), "".join(axes[i] for i in kept)
        axis = _tiff_channel_axis(shape, axes)
        if axis == -1:
            raise UserError(
                f"{path}: TIFF has shape {series.shape}, not a 2-D {what} or a multi-page stack "
                f"of at most {MAX_PAGES} pages (read as channels); save one 2-D {what} per file"
            )
        spatial = [n for i, n in enumerate(shape) if i != axis]
        check_pixels(path, spatial[0], spatial[1])
        extra = tuple(getattr(tif.pages.first, "extrasamples", ()) or ())
        data = series.asarray().reshape(shape)
    if axis is None:
        data = data[np.newaxis]
    elif axis == 2:
        data = np.moveaxis(data, 2, 0)
    has_alpha = data.shape[0] in (2, 4) and bool(extra) and extra[-1] in _ALPHA_EXTRASAMPLES
    return _native(data), has_alpha


def _native(data: np.ndarray) -> np.ndarray:
    """``data`` in native byte order (big-endian 16-bit files decode as ``>u2``)."""
    return data if data.dtype.isnative else data.astype(data.dtype.newbyteorder("="))


def _drop_alpha(path: Path, data: np.ndarray) -> np.ndarray:
    log.warning("%s: ignoring the alpha channel", path)
    return data[:-1]


# --------------------------------------------------------------------------- images


def scale_to_float(path: Path, data: np.ndarray) -> np.ndarray:
    """Map stored samples to float32: uint8 / 255, uint16 / 65535, bool 0/1, float as is."""
    if data.dtype == np.bool_:
        return data.astype(np.float32)
    if data.dtype == np.uint8:
        return data.astype(np.float32) / np.float32(255)
    if data.dtype == np.uint16:
        return data.astype(np.float32) / np.float32(65535)
    if np.issubdtype(data.dtype, np.floating):
        out = data.astype(np.float32)
        if not np.isfinite(out).all():
            raise UserError(
                f"{path}: image contains NaN or infinite values; replace them before use"
            )
        return out
    raise UserError(
        f"{path}: image samples of type {data.dtype} are not supported; "
        "save it as 8- or 16-bit unsigned or floating point"
    )


def _pil_image_array(path: Path, im: Image.Image) -> np.ndarray:
    """A PIL image as ``(C, H, W)`` in its stored dtype, palette expanded, alpha dropped."""
    mode = im.mode
    if mode in ("1", "L", "I;16", "I;16L", "I;16B", "I;16N", "F", "RGB"):
        data = np.asarray(im)
    elif mode == "I":
        data = np.asarray(im)
        if data.size and (data.min() < 0 or data.max() > 65535):
            raise UserError(
                f"{path}: 32-bit integer image has values outside 0..65535; "
                "save it as 8- or 16-bit or as a float TIFF"
            )
        data = data.astype(np.uint16)
    elif mode in ("LA", "La", "RGBA", "RGBa"):
        return _drop_alpha(path, np.moveaxis(np.asarray(im), -1, 0))
    else:  # palette ("P", "PA") and other colour spaces (CMYK, YCbCr, ...)
        data = np.asarray(im.convert("RGB"))
    data = _native(data)
    return data[np.newaxis] if data.ndim == 2 else np.moveaxis(data, -1, 0)


def _read_samples(path: Path, what: str,
                  pil_array: Callable[[Path, Image.Image], np.ndarray]) -> np.ndarray:
    """Decode a TIFF (tifffile) or another format (PIL) as stored, alpha dropped."""
    _check_file(path)
    with _decoding(path, what):
        if _is_tiff(path):
            data, has_alpha = _read_tiff(path, what)
            return _drop_alpha(path, data) if has_alpha else data
        return _load_pil(path, pil_array)


def read_image_samples(path: PathLike) -> np.ndarray:
    """Read an image file's samples as stored (uint8, uint16, float, ...), ``(C, H, W)``.

    Same files and rules as :func:`read_image`, without the scaling to float.
    """
    path = Path(path)
    return _read_samples(path, "image", _pil_image_array)


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as floats.

    PNG and JPEG are read with PIL (EXIF orientation applied, palettes expanded to RGB); TIFF
    with tifffile (8/16-bit, float, any channel count up to 4 for interleaved layouts; the
    pages of a multi-page TIFF, up to :data:`MAX_PAGES` of one shape, as channels). An alpha
    channel is dropped with a logged warning.

    Args:
        path: a ``.png``, ``.jpg``/``.jpeg`` or ``.tif``/``.tiff`` file.

    Returns:
        float32 array of shape ``(C, H, W)``: uint8 / 255, uint16 / 65535, bool as 0/1, float
        values unchanged.

    Raises:
        UserError: the file is missing, empty, corrupt, not an image, larger than
            ``MAX_PIXELS``, a stack of more than ``MAX_PAGES`` pages, or holds NaN/inf.
    """
    path = Path(path)
    return np.ascontiguousarray(scale_to_float(path, read_image_samples(path)))


# --------------------------------------------------------------------------- masks


def _narrow_int(data: np.ndarray) -> np.ndarray:
    """Cast non-negative integral values to the smallest of uint8, uint16 and int32."""
    top = int(data.max()) if data.size else 0
    for dtype in (np.uint8, np.uint16, np.int32):
        if top <= np.iinfo(dtype).max:
            return data.astype(dtype, copy=False)
    raise AssertionError("caller checks the range")


def _mask_values(path: Path, data: np.ndarray) -> np.ndarray:
    """Check and cast a 2-D mask of any numeric dtype to uint8/uint16/int32 label values."""
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if data.dtype in (np.uint8, np.uint16):
        return data
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
            raise UserError(
                f"{path}: mask has non-integer values; save it as an integer label image"
            )
    elif not np.issubdtype(data.dtype, np.integer):
        raise UserError(f"{path}: mask samples of type {data.dtype} are not supported")
    if data.size and (data.min() < 0 or data.max() > np.iinfo(np.int32).max):
        raise UserError(
            f"{path}: mask has values outside 0..{np.iinfo(np.int32).max}; "
            "label values must be non-negative integers"
        )
    return _narrow_int(data)


def _single_channel(path: Path, data: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` mask samples to ``(H, W)``: all channels must be equal."""
    if data.shape[0] > 1 and not (data == data[:1]).all():
        raise UserError(
            f"{path}: colour masks are not supported; convert to a single-channel label image"
        )
    return data[0]


def _pil_mask_array(path: Path, im: Image.Image) -> np.ndarray:
    """A PIL mask as ``(C, H, W)`` stored values; palette images give their indices."""
    mode = im.mode
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        return _drop_alpha(path, np.moveaxis(np.asarray(im), -1, 0))
    if mode in ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "RGB"):
        data = np.asarray(im)
    else:
        raise UserError(
            f"{path}: colour masks are not supported; convert to a single-channel label image"
        )
    data = _native(data)
    return data[np.newaxis] if data.ndim == 2 else np.moveaxis(data, -1, 0)


def read_mask_samples(path: PathLike) -> np.ndarray:
    """Read a mask file's samples as stored (any dtype), ``(C, H, W)``, alpha dropped.

    Same files as :func:`read_mask` (palette PNGs give their indices), without its checks of
    the values, for callers with their own rules (instance labels must be integers).
    """
    return _read_samples(Path(path), "mask", _pil_mask_array)


def read_mask(path: PathLike) -> np.ndarray:
    """Read a label image as its raw integer values.

    Palette PNGs give their palette indices (not colours). A mask with several channels is
    accepted only when all channels are equal (a gray mask saved as RGB); alpha is dropped with
    a logged warning. Float TIFFs are accepted when every value is an integer.

    Args:
        path: a ``.png``, ``.jpg``/``.jpeg`` or ``.tif``/``.tiff`` file.

    Returns:
        ``(H, W)`` array of dtype uint8, uint16 or int32 (the smallest that holds the values).

    Raises:
        UserError: unreadable file, colour mask, negative or non-integer values.
    """
    path = Path(path)
    values = _mask_values(path, _single_channel(path, read_mask_samples(path)))
    if not values.flags.writeable:  # arrays viewing PIL's buffer are read-only
        values = values.copy()
    return np.ascontiguousarray(values)


# --------------------------------------------------------------------------- header only


def _exif_swaps_axes(im: Image.Image) -> bool:
    """Whether the EXIF orientation is a 90/270-degree turn (read without decoding pixels)."""
    if im.format == "PNG" and "exif" not in im.info:
        return False  # PNG's getexif() would decode the whole image to look for a late chunk
    orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    return orientation in (5, 6, 7, 8)


def image_size(path: PathLike) -> tuple[int, int]:
    """The ``(H, W)`` that :func:`read_image` would return, read from the file header only.

    Raises:
        UserError: the file is missing, empty or not a readable image.
    """
    path = Path(path)
    _check_file(path)
    with _decoding(path, "image"):
        if _is_tiff(path):
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                return int(page.imagelength), int(page.imagewidth)
        with _pil_limit(), Image.open(path) as im:
            width, height = im.size
            if _exif_swaps_axes(im):
                width, height = height, width
    return height, width
