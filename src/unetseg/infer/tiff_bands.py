"""Horizontal bands of a TIFF read without decoding the whole image.

Streaming prediction (:mod:`unetseg.infer.stream`) holds one band of rows at a time, so its
memory grows with the image's width only if reading a band does too. Tiled TIFFs and TIFFs of
many strips are decoded chunk row by chunk row. An uncompressed strip, however large (many
writers store an uncompressed image as a single strip), is read row range by row range straight
from the file. A compressed strip or tile can only be decoded whole; one larger than
:data:`MAX_CHUNK_BYTES` is refused with a line that says how to re-save the image tiled. The
pixel count is checked from the header first, against :data:`~unetseg.data.io.MAX_PIXELS` or a
limit the user raised with ``--max-pixels``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from unetseg.data.io import check_pixels, scale_to_float
from unetseg.errors import UserError
from unetseg.infer.tiling import reflect_indices

MAX_CHUNK_BYTES = 64 * 2**20
"""Largest strip or tile, decoded bytes, that is decoded whole (all but uncompressed strips)."""


class TiffBandReader:
    """Horizontal bands of the first page of a TIFF, decoded on demand, in the read scale of
    :func:`~unetseg.data.io.read_image` (uint8 / 255, uint16 / 65535, float as is).

    Only the strips or tiles that a band touches are decoded, and the last decoded row of
    chunks is kept because neighbouring bands overlap; the rows of an uncompressed strip are
    read from the file without the rest of the strip.

    Args:
        path: the TIFF.
        max_pixels: largest ``height * width`` accepted (default
            :data:`~unetseg.data.io.MAX_PIXELS`).

    Raises:
        UserError: an unreadable TIFF, a layout that cannot be streamed, more than
            ``max_pixels`` pixels, or a compressed chunk over :data:`MAX_CHUNK_BYTES`.
    """

    def __init__(self, path: str | Path, *, max_pixels: int | None = None):
        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
            self._page = self._tif.pages.first
        except Exception as exc:  # tifffile raises many types for damaged files
            raise UserError(f"{self.path}: cannot read TIFF ({exc}); check the file") from None
        try:
            self._check_layout(max_pixels)
        except UserError:
            self._tif.close()
            raise
        page = self._page
        self.dtype = np.dtype(page.dtype)
        self._chunk_rows = int(page.chunks[0])
        self._chunks_per_row = int(page.chunked[1]) if len(page.chunked) > 1 else 1
        self._raw = _uncompressed_strips(page)
        self._cache: dict[int, np.ndarray] = {}

    def _check_layout(self, max_pixels: int | None) -> None:
        """Set ``height``, ``width``, ``channels`` from the header and refuse what cannot be
        streamed in bounded memory; nothing is decoded."""
        page = self._page
        shape = page.shape
        if len(shape) == 2:
            shape = (*shape, 1)
        if len(shape) != 3 or page.planarconfig != 1 and shape[2] > 1:
            raise UserError(f"{self.path}: only single-page gray or interleaved multi-channel"
                            " TIFFs can be streamed; save it as an interleaved (chunky) TIFF")
        self.height, self.width, self.channels = (int(s) for s in shape)
        check_pixels(self.path, self.height, self.width, limit=max_pixels,
                     fix="if the image is genuine, raise the limit with --max-pixels"
                         f" {self.height * self.width}")
        chunk_bytes = int(np.prod(page.chunks)) * np.dtype(page.dtype).itemsize
        if chunk_bytes > MAX_CHUNK_BYTES and not _uncompressed_strips(page):
            kind = ("compressed " if page.compression != 1 else "") + (
                "tile" if page.is_tiled else "strip")
            raise UserError(
                f"{self.path}: one {kind} holds {chunk_bytes / 2**20:.0f} MiB of"
                f" pixels, more than the {MAX_CHUNK_BYTES / 2**20:.0f} MiB decoded at a time;"
                " re-save the image tiled, e.g. in Python: tifffile.imwrite('tiled.tif',"
                f" tifffile.imread('{self.path}'), tile=(512, 512), compression='zlib'), or"
                f" with libvips: vips copy '{self.path}' 'tiled.tif[tile,compression=deflate]'")

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> TiffBandReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _chunk_row(self, index: int) -> np.ndarray:
        """Decoded chunk row ``index``: (rows, W, C) in the stored dtype."""
        if index in self._cache:
            return self._cache[index]
        page, fh = self._page, self._tif.filehandle
        rows = min(self._chunk_rows, self.height - index * self._chunk_rows)
        out = np.empty((rows, self.width, self.channels), self.dtype)
        for col in range(self._chunks_per_row):
            seg_index = index * self._chunks_per_row + col
            fh.seek(page.dataoffsets[seg_index])
            data = fh.read(page.databytecounts[seg_index])
            decoded, _, shape = page.decode(data, seg_index, jpegtables=page.jpegtables)
            x = col * shape[-2]
            w = min(shape[-2], self.width - x)
            if decoded is None:  # an empty segment: the TIFF leaves it to the reader
                out[:, x : x + w] = 0
                continue
            segment = np.asarray(decoded).reshape(tuple(shape[-3:]))
            out[:, x : x + w] = segment[:rows, :w]
        self._cache = {index: out}
        return out

    def _raw_rows(self, top: int, bottom: int) -> np.ndarray:
        """Rows ``[top, bottom)`` of uncompressed strips, (rows, W, C) in native byte order,
        read from the file strip by strip: only these rows' bytes are read."""
        page, fh = self._page, self._tif.filehandle
        stored = np.dtype(self.dtype).newbyteorder(self._tif.byteorder)
        row_bytes = self.width * self.channels * stored.itemsize
        out = np.empty((bottom - top, self.width, self.channels), self.dtype)
        row = top
        while row < bottom:
            strip, first = divmod(row, self._chunk_rows)
            end = min(bottom, (strip + 1) * self._chunk_rows)
            offset, size = page.dataoffsets[strip], page.databytecounts[strip]
            want = (end - row) * row_bytes
            fh.seek(offset + first * row_bytes)
            data = fh.read(want) if first * row_bytes + want <= size else b""
            if len(data) != want:
                raise UserError(f"{self.path}: strip {strip} ends early; the file is truncated,"
                                " replace it")
            rows = np.frombuffer(data, stored).reshape(end - row, self.width, self.channels)
            out[row - top : end - top] = rows
            row = end
        return out

    def rows(self, top: int, bottom: int) -> np.ndarray:
        """Rows ``[top, bottom)`` as float32 ``(C, bottom - top, W)``; 0 <= top < bottom <= H."""
        if self._raw:
            return scale_to_float(self.path, self._raw_rows(top, bottom).transpose(2, 0, 1))
        first, last = top // self._chunk_rows, (bottom - 1) // self._chunk_rows
        parts = [self._chunk_row(i) for i in range(first, last + 1)]
        block = np.concatenate(parts) if len(parts) > 1 else parts[0]
        offset = first * self._chunk_rows
        band = block[top - offset : bottom - offset].transpose(2, 0, 1)
        return scale_to_float(self.path, band)

    def mirrored_rows(self, top: int, bottom: int) -> np.ndarray:
        """Rows ``[top, bottom)`` where rows outside the image are mirrored (reflect)."""
        before, after = max(0, -top), max(0, bottom - self.height)
        idx = reflect_indices(self.height, before, after).numpy()[top + before : bottom + before]
        lo, hi = int(idx.min()), int(idx.max()) + 1
        return self.rows(lo, hi)[:, idx - lo]


def _uncompressed_strips(page: tifffile.TiffPage) -> bool:
    """Whether the page's rows can be read straight from the file: uncompressed, byte-aligned
    strips without a predictor, every row ``W x C`` samples in sequence."""
    dtype = np.dtype(page.dtype)
    return (not page.is_tiled and page.compression == 1 and page.predictor == 1
            and page.fillorder == 1 and dtype.kind in "uif"
            and page.bitspersample == 8 * dtype.itemsize)
