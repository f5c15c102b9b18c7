"""Horizontal bands of a TIFF read without decoding the whole image.

Streaming prediction (:mod:`unetseg.infer.stream`) holds one band of rows at a time; its
memory grows with the image's width only if reading a band does too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from unetseg.data.io import scale_to_float
from unetseg.errors import UserError
from unetseg.infer.tiling import reflect_indices


class TiffBandReader:
    """Horizontal bands of the first page of a TIFF, decoded on demand, in the read scale of
    :func:`~unetseg.data.io.read_image` (uint8 / 255, uint16 / 65535, float as is).

    Only the strips or tiles that a band touches are decoded; the last decoded row of chunks is
    kept because neighbouring bands overlap.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
            self._page = self._tif.pages.first
        except Exception as exc:  # tifffile raises many types for damaged files
            raise UserError(f"{self.path}: cannot read TIFF ({exc}); check the file") from None
        page = self._page
        shape = page.shape
        if len(shape) == 2:
            shape = (*shape, 1)
        if len(shape) != 3 or page.planarconfig != 1 and shape[2] > 1:
            raise UserError(f"{self.path}: only single-page gray or interleaved multi-channel"
                            " TIFFs can be streamed; save it as an interleaved (chunky) TIFF")
        self.height, self.width, self.channels = (int(s) for s in shape)
        self.dtype = np.dtype(page.dtype)
        self._chunk_rows = int(page.chunks[0])
        self._chunks_per_row = int(page.chunked[1]) if len(page.chunked) > 1 else 1
        self._cache: dict[int, np.ndarray] = {}

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

    def rows(self, top: int, bottom: int) -> np.ndarray:
        """Rows ``[top, bottom)`` as float32 ``(C, bottom - top, W)``; 0 <= top < bottom <= H."""
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
