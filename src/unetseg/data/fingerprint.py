"""The dataset fingerprint: what a data set is like, measured once, for planning a run.

``unetseg plan DATA`` and ``train`` (when it plans) compute it while the data doctor reads
every pair (:func:`unetseg.data.doctor.examine_data` with a :class:`FingerprintBuilder`), so
nothing is read twice; it is written as ``fingerprint.json``. It holds:

* ``sizes``: image heights, widths and shorter sides (min, 5th percentile, median, max) and
  the distinct sizes; ``channels``; ``bit_depth`` (the sample types and their counts);
* ``pixel_size_um``: the physical pixel size, where the files carry it (OME-XML
  ``PhysicalSizeX/Y``, an ImageJ ``unit`` with the TIFF resolution tags, or the TIFF
  resolution tags in inches or centimetres; else null);
* ``intensity``: per channel, over all pixels and over the foreground (every class but the
  first; ignored pixels left out), the mean and sd (exact, over every pixel) and the 0.5, 5,
  50, 95 and 99.5th percentiles, min and max. Intensities are in the scale images are read in
  (integer samples divided by their type's maximum: 8-bit 0..255 -> 0..1). The percentiles
  are over a uniform random sample of :data:`SAMPLE_PIXELS` pixels per image (every pixel of
  a smaller image; the draw is seeded by the stem, so it does not depend on the order), so
  every image weighs about the same in them; min and max are exact. Also
  ``between_image_share`` (the share of the pixel variance that lies between the images'
  means, each image weighted equally: how much images differ in brightness), the spread of
  the images' means, and ``foreground_brighter`` (the share of images, among those with
  both, whose foreground is brighter than their background: near 0 or 1 for one modality);
* ``classes``: per class its pixels, share of the labelled pixels and number of images, and
  its connected components (8-connected): count, and area (pixels) and equivalent diameter
  (``sqrt(4 area / pi)``, pixels) percentiles;
* ``objects``: the same over the components of every foreground class together, which the
  plan sizes patches by.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unetseg.data.classes import IGNORE_INDEX, ClassTable

FORMAT = "unetseg-fingerprint"
VERSION = 1
SAMPLE_PIXELS = 4096
"""Pixels drawn per image for the intensity percentiles."""
INTENSITY_PERCENTILES = (0.5, 5.0, 50.0, 95.0, 99.5)
OBJECT_PERCENTILES = (5.0, 25.0, 50.0, 75.0, 90.0, 95.0)
SIZE_PERCENTILES = (5.0, 50.0)
_EIGHT = np.ones((3, 3), bool)  # 8-connectivity
_UM_PER = {"m": 1e6, "cm": 1e4, "mm": 1e3, "um": 1.0, "µm": 1.0, "micron": 1.0,
           "microns": 1.0, "nm": 1e-3, "inch": 25400.0}


def _key(q: float) -> str:
    return f"p{q:g}"


def percentile_summary(values: np.ndarray, qs: tuple[float, ...]) -> dict[str, float] | None:
    """``{"min", "p5", ..., "max"}`` of ``values`` (linear interpolation), None when empty."""
    if values.size == 0:
        return None
    v = values.astype(np.float64)
    out = {"min": float(v.min())}
    out.update({_key(q): float(p) for q, p in zip(qs, np.percentile(v, qs))})
    out["max"] = float(v.max())
    return out


# --------------------------------------------------------------------------- physical size


def pixel_size_um(path: Path) -> tuple[float, float, str] | None:
    """``(y, x, source)``: the physical pixel size in micrometres a TIFF states, else None.

    Read from the header only: OME-XML ``PhysicalSizeY/X`` (with their units, micrometres
    by default), else the TIFF ``YResolution``/``XResolution`` tags (pixels per unit) with an
    ImageJ ``unit`` or a ``ResolutionUnit`` of inch or centimetre. PNG and JPEG: None.
    """
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.ome_metadata:
                found = _ome_size(tif.ome_metadata)
                if found is not None:
                    return (*found, "ome")
            page = tif.pages.first
            tags = page.tags
            if "XResolution" not in tags or "YResolution" not in tags:
                return None
            per_x = _ratio(tags["XResolution"].value)
            per_y = _ratio(tags["YResolution"].value)
            if not per_x or not per_y:
                return None
            unit_um, source = None, "tiff-resolution"
            meta = tif.imagej_metadata or {}
            if meta.get("unit"):
                unit_um, source = _UM_PER.get(str(meta["unit"]).strip().lower()), "imagej"
            else:
                unit = int(getattr(tags.get("ResolutionUnit"), "value", 2))
                unit_um = {2: 25400.0, 3: 10000.0}.get(unit)
            if unit_um is None:
                return None
            return unit_um / per_y, unit_um / per_x, source
    except Exception:  # a header this cannot parse simply states no size
        return None


def _ratio(value: Any) -> float | None:
    if isinstance(value, tuple) and len(value) == 2:
        return value[0] / value[1] if value[1] else None
    return float(value) if value else None


def _ome_size(xml: str) -> tuple[float, float] | None:
    """(y, x) micrometres from an OME-XML Pixels element, or None."""
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml)
    if pixels is None:
        return None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0)))
    try:
        x, y = float(attrs["PhysicalSizeX"]), float(attrs["PhysicalSizeY"])
    except (KeyError, ValueError):
        return None
    ux = _UM_PER.get(attrs.get("PhysicalSizeXUnit", "µm").lower())
    uy = _UM_PER.get(attrs.get("PhysicalSizeYUnit", "µm").lower())
    if ux is None or uy is None:
        return None
    return y * uy, x * ux


# --------------------------------------------------------------------------- one image


@dataclass
class ImageEntry:
    """What one pair contributes, per distinct raw mask code ``codes[k]``: its pixel count,
    the image's per-channel mean and sum of squared deviations over those pixels, and the
    areas of its connected components; plus a pixel sample with each pixel's code index."""

    stem: str
    size: tuple[int, int]
    channels: int
    dtype: str
    pixel_size: tuple[float, float, str] | None
    codes: np.ndarray  # (K,) raw codes
    count: np.ndarray  # (K,) int64
    mean: np.ndarray  # (K, C) float64
    m2: np.ndarray  # (K, C) float64
    low: np.ndarray  # (K, C) minimum
    high: np.ndarray  # (K, C) maximum
    sample: np.ndarray  # (C, S) float32
    sample_code: np.ndarray  # (S,) index into codes
    areas: list[np.ndarray]  # per code: component areas in pixels


def _code_index(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct codes, index of each pixel's code) of a flat integer array."""
    if codes.dtype in (np.uint8, np.uint16, np.bool_):
        counts = np.bincount(codes)
        present = np.flatnonzero(counts)
        lookup = np.zeros(counts.size, np.int64)
        lookup[present] = np.arange(present.size)
        return present.astype(np.int64), lookup[codes]
    values, inverse = np.unique(codes, return_inverse=True)
    return values.astype(np.int64), inverse.ravel()


def image_entry(stem: str, image: np.ndarray, codes: np.ndarray, dtype: str,
                pixel_size: tuple[float, float, str] | None = None, *, seed: int = 0,
                sample_pixels: int = SAMPLE_PIXELS) -> ImageEntry:
    """The :class:`ImageEntry` of one pair: ``image`` float32 (C, H, W) in the read scale,
    ``codes`` (H, W) the mask's raw codes (values, palette indices or packed colours)."""
    c, h, w = image.shape
    values, index = _code_index(codes.reshape(-1))
    k = values.size
    count = np.bincount(index, minlength=k).astype(np.int64)
    x = image.reshape(c, -1).astype(np.float64)
    order = np.argsort(index, kind="stable")  # pixels grouped by code
    starts = np.concatenate([[0], np.cumsum(count)[:-1]])
    grouped = x[:, order]  # (C, N)
    mean = np.add.reduceat(grouped, starts, axis=1).T / count[:, None]  # (K, C)
    deviation = grouped - np.repeat(mean.T, count, axis=1)
    m2 = np.add.reduceat(np.square(deviation), starts, axis=1).T
    low = np.minimum.reduceat(grouped, starts, axis=1).T
    high = np.maximum.reduceat(grouped, starts, axis=1).T
    rng = np.random.default_rng([seed, zlib.crc32(stem.encode("utf-8"))])
    n = h * w
    picked = (np.arange(n) if n <= sample_pixels
              else np.sort(rng.choice(n, sample_pixels, replace=False)))
    grid = index.reshape(h, w)
    areas = []
    for j in range(k):
        labels, found = ndimage.label(grid == j, structure=_EIGHT)
        areas.append(np.bincount(labels.ravel(), minlength=found + 1)[1:].astype(np.int64))
    return ImageEntry(stem, (h, w), c, dtype, pixel_size, values, count, mean, m2, low, high,
                      image.reshape(c, -1)[:, picked].copy(), index[picked].astype(np.int32),
                      areas)


# --------------------------------------------------------------------------- merging


def _merge(count: np.ndarray, mean: np.ndarray, m2: np.ndarray
           ) -> tuple[int, np.ndarray, np.ndarray]:
    """Pool groups (G,), (G, C), (G, C) of (count, mean, sum of squared deviations) into one
    (exactly: the parallel-variance formula); returns (n, mean (C,), m2 (C,))."""
    n = int(count.sum())
    if n == 0:
        return 0, np.full(mean.shape[1], np.nan), np.full(mean.shape[1], np.nan)
    pooled = (count[:, None] * mean).sum(0) / n
    return n, pooled, m2.sum(0) + (count[:, None] * np.square(mean - pooled)).sum(0)


def _pooled_rows(parts: dict[str, list[np.ndarray]]) -> list[dict[str, float]]:
    """Per-channel rows (mean, sd, percentiles, min, max) of pooled code groups."""
    n, mean, m2 = _merge(np.concatenate(parts["count"]), np.concatenate(parts["mean"]),
                         np.concatenate(parts["m2"]))
    low = np.concatenate(parts["low"]).min(axis=0)
    high = np.concatenate(parts["high"]).max(axis=0)
    sample = np.concatenate(parts["sample"], axis=1)
    rows = []
    for i in range(mean.size):
        row = {"mean": float(mean[i]), "sd": float(math.sqrt(m2[i] / n)) if n else math.nan}
        summary = percentile_summary(sample[i], INTENSITY_PERCENTILES) or {}
        row.update({k: v for k, v in summary.items() if k not in ("min", "max")})
        row["min"], row["max"] = float(low[i]), float(high[i])
        rows.append(row)
    return rows


@dataclass
class FingerprintBuilder:
    """Collects :class:`ImageEntry` objects pair by pair (:meth:`add`), then makes the
    fingerprint once the class table is known (:meth:`finish`)."""

    seed: int = 0
    sample_pixels: int = SAMPLE_PIXELS
    entries: dict[str, ImageEntry] = field(default_factory=dict)

    def add(self, stem: str, image: np.ndarray, codes: np.ndarray, dtype: str,
            path: Path | None = None) -> None:
        size = pixel_size_um(path) if path is not None else None
        self.entries[stem] = image_entry(stem, image, codes, dtype, size, seed=self.seed,
                                         sample_pixels=self.sample_pixels)

    def finish(self, root: str | Path, table: ClassTable,
               class_ids: dict[str, Callable[[np.ndarray], np.ndarray]],
               ) -> Fingerprint:
        """The fingerprint of the pairs whose stems ``class_ids`` names: for each, the
        function mapping that pair's raw codes (K,) to class ids (``IGNORE_INDEX`` for the
        ignore value)."""
        entries = [self.entries[s] for s in class_ids]
        if not entries:
            raise ValueError("a fingerprint needs at least one pair")
        ids = [class_ids[e.stem](e.codes) for e in entries]
        return _fingerprint(str(root), table, entries, ids)


def _fingerprint(root: str, table: ClassTable, entries: list[ImageEntry],
                 ids: list[np.ndarray]) -> Fingerprint:
    heights = np.array([e.size[0] for e in entries])
    widths = np.array([e.size[1] for e in entries])
    sizes = {
        "height": percentile_summary(heights, SIZE_PERCENTILES),
        "width": percentile_summary(widths, SIZE_PERCENTILES),
        "min_side": percentile_summary(np.minimum(heights, widths), SIZE_PERCENTILES),
        "distinct": dict(Counter(f"{e.size[1]}x{e.size[0]}" for e in entries).most_common()),
    }
    channels = Counter(e.channels for e in entries).most_common(1)[0][0]
    entries_ids = [(e, i) for e, i in zip(entries, ids) if e.channels == channels]
    return Fingerprint(
        data=root, images=len(entries), channels=channels,
        bit_depth=dict(Counter(e.dtype for e in entries).most_common()), sizes=sizes,
        pixel_size_um=_pixel_sizes(entries),
        intensity=_intensity(entries_ids, channels),
        classes=_classes(entries, ids, table),
        objects=_objects(entries, ids, table),
    )


def _pixel_sizes(entries: list[ImageEntry]) -> dict[str, Any] | None:
    stated = Counter((round(e.pixel_size[0], 6), round(e.pixel_size[1], 6), e.pixel_size[2])
                     for e in entries if e.pixel_size is not None)
    if not stated:
        return None
    (y, x, source), n = stated.most_common(1)[0]
    return {"y": y, "x": x, "source": source, "images": n, "images_stating": sum(
        stated.values()), "distinct": len(stated)}


def _intensity(pairs: list[tuple[ImageEntry, np.ndarray]], channels: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "scale": "as read: integer samples divided by their type's maximum (8-bit: /255)",
        "sampling": f"percentiles over up to {SAMPLE_PIXELS} pixels drawn per image (every"
                    " pixel of smaller images); mean, sd, min and max over every pixel",
    }
    parts: dict[str, list[Any]] = {k: [] for k in ("count", "mean", "m2", "low", "high",
                                                     "sample")}
    fg: dict[str, list[Any]] = {k: [] for k in parts}
    image_means, image_vars, brighter = [], [], []
    for e, ids in pairs:
        for name, value in (("count", e.count), ("mean", e.mean), ("m2", e.m2),
                            ("low", e.low), ("high", e.high), ("sample", e.sample)):
            parts[name].append(value)
        n, m, m2 = _merge(e.count, e.mean, e.m2)
        image_means.append(m)
        image_vars.append(m2 / n)
        is_fg = ids >= 1
        if is_fg.any():
            for name, value in (("count", e.count), ("mean", e.mean), ("m2", e.m2),
                                ("low", e.low), ("high", e.high)):
                fg[name].append(value[is_fg])
            fg["sample"].append(e.sample[:, is_fg[e.sample_code]])
        is_bg = ids == 0
        if is_fg.any() and is_bg.any():
            _, m_fg, _ = _merge(e.count[is_fg], e.mean[is_fg], e.m2[is_fg])
            _, m_bg, _ = _merge(e.count[is_bg], e.mean[is_bg], e.m2[is_bg])
            brighter.append(float(m_fg.mean() > m_bg.mean()))
    out["all"] = _pooled_rows(parts)
    out["foreground"] = _pooled_rows(fg) if fg["count"] else None
    means, variances = np.array(image_means), np.array(image_vars)
    between, within = means.var(axis=0), variances.mean(axis=0)
    total = between + within
    out["between_image_share"] = [float(b / t) if t > 0 else 0.0
                                  for b, t in zip(between, total)]
    out["image_mean"] = [percentile_summary(means[:, i], SIZE_PERCENTILES)
                         for i in range(means.shape[1])]
    out["foreground_brighter"] = float(np.mean(brighter)) if brighter else None
    return out


def _areas_by_class(entries: list[ImageEntry], ids: list[np.ndarray], k: int
                    ) -> list[np.ndarray]:
    found: list[list[np.ndarray]] = [[] for _ in range(k)]
    for e, class_of in zip(entries, ids):
        for areas, c in zip(e.areas, class_of.tolist()):
            if 0 <= c < k:
                found[c].append(areas)
    return [np.concatenate(a) if a else np.zeros(0, np.int64) for a in found]


def _component_summary(areas: np.ndarray) -> dict[str, Any]:
    return {"count": int(areas.size),
            "area": percentile_summary(areas, OBJECT_PERCENTILES),
            "diameter": percentile_summary(np.sqrt(4 * areas / math.pi), OBJECT_PERCENTILES)}


def _classes(entries: list[ImageEntry], ids: list[np.ndarray], table: ClassTable
             ) -> list[dict[str, Any]]:
    k = table.num_classes
    pixels, images = np.zeros(k, np.int64), np.zeros(k, np.int64)
    for e, class_of in zip(entries, ids):
        per = np.zeros(k, np.int64)
        for c, n in zip(class_of.tolist(), e.count.tolist()):
            if 0 <= c < k:
                per[c] += n
        pixels += per
        images += per > 0
    labelled = max(1, int(pixels.sum()))
    areas = _areas_by_class(entries, ids, k)
    return [{"id": i, "value": table.values[i], "name": table.names[i],
             "pixels": int(pixels[i]), "share": float(pixels[i] / labelled),
             "images": int(images[i]), "components": _component_summary(areas[i])}
            for i in range(k)]


def _objects(entries: list[ImageEntry], ids: list[np.ndarray], table: ClassTable
             ) -> dict[str, Any]:
    areas = _areas_by_class(entries, ids, table.num_classes)[1:]
    pooled = np.concatenate(areas) if areas else np.zeros(0, np.int64)
    return {"classes": "every class but the first (id 0)", **_component_summary(pooled)}


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class Fingerprint:
    """A data set's fingerprint (the module docstring), as ``fingerprint.json`` holds it."""

    data: str
    images: int
    channels: int
    bit_depth: dict[str, int]
    sizes: dict[str, Any]
    pixel_size_um: dict[str, Any] | None
    intensity: dict[str, Any]
    classes: list[dict[str, Any]]
    objects: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "data": self.data, "images": self.images,
                "channels": self.channels, "bit_depth": self.bit_depth, "sizes": self.sizes,
                "pixel_size_um": self.pixel_size_um, "intensity": self.intensity,
                "classes": self.classes, "objects": self.objects}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a fingerprint: format {d.get('format')!r}")
        return cls(d["data"], d["images"], d["channels"], d["bit_depth"], d["sizes"],
                   d["pixel_size_um"], d["intensity"], d["classes"], d["objects"])


def ignore_aware_ids(lookup: dict[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    """A code -> class id function from a dict (codes it lacks map to ``IGNORE_INDEX``)."""
    def class_ids(codes: np.ndarray) -> np.ndarray:
        return np.array([lookup.get(int(c), IGNORE_INDEX) for c in codes], np.int64)
    return class_ids
