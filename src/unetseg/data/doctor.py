"""The dataset doctor: every problem of a data folder at once, the class balance, and weights.

:func:`check_data` reads every image and mask of ``DATA/images`` and ``DATA/masks`` once and
collects **all** problems instead of stopping at the first:

* errors (training refuses the data): duplicate stems, unreadable files (corrupt, empty, not
  an image, over the pixel limit, NaN/inf), a mask whose size differs from its image's, mask
  values or colours outside the class table, an image whose channel count differs from the
  others', no usable class table;
* warnings (training goes on): files without a partner, an image whose bit depth (sample type)
  differs from the others' (integer images are scaled by their type's range, so mixed depths
  change brightness), masks that hold a single class or only the ignore value, JPEG masks,
  palette PNGs whose palettes differ, and colour masks with so many colours that they were
  probably smoothed.

It also counts the pixels of every class and suggests class weights by **median frequency
balancing** (Eigen and Fergus, ICCV 2015): the frequency of class ``c`` is its pixel count
divided by the labelled (non-ignored) pixels of the masks in which ``c`` occurs, and its weight
is ``median(frequencies) / frequency(c)``; a class that never occurs gets no weight.

``unetseg check DATA`` prints :func:`format_report` (or the report as JSON with ``--json``) and
exits 0 when there is no problem, 1 otherwise. Training runs the same checks first
(:func:`unetseg.data.dataset.load_data`: :func:`examine_data` with ``keep=True``, then
:func:`require_clean`) and keeps the decoded pairs, so nothing is read twice.
"""

from __future__ import annotations

import logging
import os
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from unetseg.config import DataConfig
from unetseg.data.classes import RGB, ClassTable, MaskEncoding, pack_rgb, unpack_rgb
from unetseg.data.masks import (
    MaskFile,
    build_class_table,
    detect_encoding,
    value_counts,
)
from unetseg.data.pairs import (
    MASK_SUFFIX,
    Pair,
    PairScan,
    check_same_size,
    duplicate_message,
    no_pairs_message,
    read_pair_image,
    read_pair_mask,
    scan_pairs,
)
from unetseg.errors import UserError

log = logging.getLogger(__name__)

Severity = Literal["error", "warning"]
_SHOWN = 10  # values listed in one message
_LOGGED = 3  # warnings of one kind logged before a summary line
_MANY_COLOURS = 64  # more discovered colours than this are probably blending artefacts
_GRAY = 0x010101  # packed colour of the gray level 1


@dataclass(frozen=True)
class Problem:
    """One finding. ``message`` is one line: the file, what is wrong, and the fix."""

    severity: Severity
    kind: str
    path: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "kind": self.kind, "file": self.path,
                "message": self.message}


@dataclass(frozen=True)
class ClassCount:
    """Pixel statistics of one class over all checked masks."""

    id: int
    value: int
    name: str
    color: RGB | None
    pixels: int
    masks: int  # masks in which the class occurs
    share: float  # of all labelled (non-ignored) pixels
    weight: float | None  # median frequency balancing; None when the class never occurs


@dataclass
class Report:
    """What :func:`check_data` found."""

    root: Path
    pairs: int = 0
    images: int = 0
    masks: int = 0
    encoding: MaskEncoding | None = None
    classes: ClassTable | None = None
    channels: dict[int, int] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    counts: list[ClassCount] = field(default_factory=list)
    ignored_pixels: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def clean(self) -> bool:
        """No problem of either severity."""
        return not self.problems

    @property
    def class_weights(self) -> list[float] | None:
        """Suggested ``--class-weights`` (0 for classes that never occur), or None."""
        if not self.counts or all(c.weight is None for c in self.counts):
            return None
        return [round(c.weight, 4) if c.weight is not None else 0.0 for c in self.counts]

    def add(self, severity: Severity, kind: str, path: str | Path, message: str) -> None:
        self.problems.append(Problem(severity, kind, str(path), message))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        table = self.classes
        return {
            "root": str(self.root), "clean": self.clean, "errors": len(self.errors),
            "warnings": len(self.warnings), "pairs": self.pairs, "images": self.images,
            "masks": self.masks, "encoding": self.encoding,
            "channels": {str(k): v for k, v in self.channels.items()},
            "dtypes": self.dtypes, "sizes": self.sizes,
            "class_table": table.to_dict() if table is not None else None,
            "classes": [{"id": c.id, "value": c.value, "name": c.name,
                         "color": list(c.color) if c.color else None, "pixels": c.pixels,
                         "masks": c.masks, "share": c.share, "weight": c.weight}
                        for c in self.counts],
            "ignored_pixels": self.ignored_pixels,
            "class_weights": self.class_weights,
            "class_weights_method": "median frequency balancing: median(f) / f[c], f[c] = "
                                    "pixels of c / labelled pixels of the masks holding c",
            "problems": [p.to_dict() for p in self.problems],
        }


# --------------------------------------------------------------------------- pairing


def _pair_files(root: Path, report: Report) -> list[Pair]:
    """Pair ``images/`` and ``masks/`` (:func:`~unetseg.data.pairs.scan_pairs`), noting
    duplicates and unpaired files as problems."""
    scan = scan_pairs(root)
    report.images, report.masks = scan.images, scan.masks
    for (kind, stem), files in scan.duplicates.items():
        report.add("error", "duplicate", files[0], duplicate_message(kind, stem, files))
    for f in scan.unpaired_images:
        report.add("warning", "unpaired", f, f"{f}: image has no mask (looked for"
                   f" masks/{f.stem}.* and masks/{f.stem}{MASK_SUFFIX}.*); add it or move the"
                   " image out")
    for f in scan.unpaired_masks:
        report.add("warning", "unpaired", f, f"{f}: mask has no image of the same name; add it"
                   " or move the mask out")
    return scan.pairs


# --------------------------------------------------------------------------- reading


@dataclass
class PairRead:
    """One pair as the doctor read it; the pixels only when they are kept for training."""

    pair: Pair
    image: np.ndarray  # float32 (C, H, W) when kept, else an empty placeholder
    channels: int
    dtype: str
    size: tuple[int, int]
    mask: MaskFile  # its data only when kept
    counts: dict[int, int]  # pixels per label value, palette index or packed colour


def _read_pair(pair: Pair, report: Report, keep: bool) -> PairRead | None:
    """Read one pair, noting each of its problems; None when it cannot be used."""
    read: tuple[np.ndarray, np.ndarray] | None = None
    try:
        read = read_pair_image(pair)
    except UserError as exc:
        report.add("error", "unreadable", pair.image, str(exc))
    try:
        mask = read_pair_mask(pair)
    except UserError as exc:
        report.add("error", "unreadable", pair.mask, str(exc))
        return None
    if read is None:
        return None
    samples, image = read
    try:
        check_same_size(pair, samples.shape[1:], mask.shape)
    except UserError as exc:
        report.add("error", "size", pair.mask, str(exc))
        return None
    counts = value_counts(mask.codes("rgb") if mask.encoding == "rgb" else mask.data)
    if not keep:  # checking only: hold the counts, not the pixels
        image, mask = np.empty((0, 0, 0), np.float32), replace(mask, data=np.empty((0, 0)))
    return PairRead(pair, np.ascontiguousarray(image), int(samples.shape[0]), samples.dtype.name,
                    (int(samples.shape[1]), int(samples.shape[2])), mask, counts)


def _majority(values: list[Any]) -> Any:
    """The most common value; ties go to the one seen first."""
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)


def _check_consistency(reads: list[PairRead], report: Report) -> list[PairRead]:
    """Channel counts must agree (error); sample types should (warning)."""
    if not reads:
        return reads
    channels = _majority([r.channels for r in reads])
    dtype = _majority([r.dtype for r in reads])
    n = len(reads)
    for r in reads:
        if r.channels != channels:
            same = sum(x.channels == channels for x in reads)
            report.add("error", "channels", r.pair.image,
                       f"{r.pair.image}: image has {r.channels} channel(s) but {same} of {n}"
                       f" images have {channels}; convert all images to the same channels"
                       " (all gray or all RGB)")
        elif r.dtype != dtype:
            same = sum(x.dtype == dtype for x in reads)
            report.add("warning", "bit_depth", r.pair.image,
                       f"{r.pair.image}: image samples are {r.dtype} but {same} of {n} images"
                       f" are {dtype}; integer images are scaled by their type's range, so"
                       " convert all images to one bit depth")
    return [r for r in reads if r.channels == channels]


# --------------------------------------------------------------------------- classes


def _show_codes(codes: list[int], table: ClassTable) -> str:
    shown = [str(unpack_rgb(c)) if table.encoding == "rgb" else str(c) for c in codes[:_SHOWN]]
    more = f", ... ({len(codes)} values)" if len(codes) > _SHOWN else ""
    return ", ".join(shown) + more


def _mask_codes(reads: list[PairRead], encoding: MaskEncoding,
                report: Report) -> list[tuple[PairRead, dict[int, int]]]:
    """Each mask's counts keyed by codes of the data set's encoding (see MaskFile.codes):
    in a colour data set, gray label masks count as the colours ``(v, v, v)``."""
    out = []
    for r in reads:
        if encoding != "rgb" or r.mask.encoding == "rgb":
            out.append((r, r.counts))
        elif r.counts and max(r.counts) > 255:
            report.add("error", "encoding", r.pair.mask,
                       f"{r.pair.mask}: 16-bit label mask among colour masks; save every mask"
                       " the same way (all colour or all label)")
        else:
            out.append((r, {v * _GRAY: n for v, n in r.counts.items()}))
    return out


def _by_value(counts: dict[int, int], table: ClassTable) -> tuple[dict[int, int], list[int]]:
    """A mask's code counts keyed by the table's values (the ignore value included), and the
    codes the table does not know. Colour codes map through the table's colours."""
    known = {*table.values, *(() if table.ignore_value is None else (table.ignore_value,))}
    if table.encoding != "rgb":
        return ({c: n for c, n in counts.items() if c in known},
                sorted(c for c in counts if c not in known))
    lookup = {int(pack_rgb(np.array(c))): v for c, v in zip(table.colors, table.values)}
    if table.ignore_color is not None and table.ignore_value is not None:
        lookup[int(pack_rgb(np.array(table.ignore_color)))] = table.ignore_value
    return ({lookup[c]: n for c, n in counts.items() if c in lookup},
            sorted(c for c in counts if c not in lookup))


def _check_values(coded: list[tuple[PairRead, dict[int, int]]], table: ClassTable,
                  report: Report) -> list[tuple[PairRead, dict[int, int]]]:
    """Masks with values outside the table are errors; single-class masks warnings.
    Returns the good masks with their counts keyed by the table's values."""
    known = set(table.values)
    good = []
    for r, codes in coded:
        counts, bad = _by_value(codes, table)
        if bad:
            what = "colours" if table.encoding == "rgb" else "values"
            fix = ("list every colour in the --palette file" if table.encoding == "rgb"
                   else "pass --classes (or --ignore-value)")
            every = table.colors if table.encoding == "rgb" else table.values
            listed = ", ".join(str(v) for v in every[:_SHOWN])
            report.add("error", "values", r.pair.mask,
                       f"{r.pair.mask}: mask {what} [{_show_codes(bad, table)}] are not in the"
                       f" class table ({listed}{', ...' if len(known) > _SHOWN else ''});"
                       f" {fix} or fix the mask")
            continue
        present = [c for c in counts if c in known]
        if not present:
            report.add("warning", "empty_mask", r.pair.mask,
                       f"{r.pair.mask}: mask holds only the ignore value; it adds nothing to"
                       " training, check the mask or remove the pair")
        elif len(present) == 1:
            report.add("warning", "empty_mask", r.pair.mask,
                       f"{r.pair.mask}: mask holds a single class"
                       f" ({table.names[table.values.index(present[0])]}) everywhere; fine"
                       " for an image without objects, else check the mask export")
        good.append((r, counts))
    return good


def median_frequency_weights(pixels: list[int], labelled: list[int]) -> list[float | None]:
    """Median frequency balancing: ``median(f) / f[c]`` with ``f[c] = pixels[c] /
    labelled[c]`` (``labelled[c]``: labelled pixels of the masks in which class ``c`` occurs).
    Classes with no pixels get None."""
    freqs = [p / n if p > 0 and n > 0 else None for p, n in zip(pixels, labelled)]
    present = [f for f in freqs if f is not None]
    if not present:
        return [None] * len(pixels)
    median = statistics.median(present)
    return [median / f if f is not None else None for f in freqs]


def _count_classes(coded: list[tuple[PairRead, dict[int, int]]], table: ClassTable,
                   report: Report) -> None:
    k = table.num_classes
    pixels, masks, labelled = [0] * k, [0] * k, [0] * k
    index = {v: i for i, v in enumerate(table.values)}
    for _, counts in coded:
        in_mask = {index[c]: n for c, n in counts.items() if c in index}
        total = sum(in_mask.values())
        report.ignored_pixels += sum(n for c, n in counts.items() if c not in index)
        for i, n in in_mask.items():
            pixels[i] += n
            masks[i] += 1
            labelled[i] += total
    weights = median_frequency_weights(pixels, labelled)
    all_pixels = max(1, sum(pixels))
    report.counts = [
        ClassCount(i, table.values[i], table.names[i],
                   table.colors[i] if table.colors else None, pixels[i], masks[i],
                   pixels[i] / all_pixels, weights[i])
        for i in range(k)
    ]


def _check_mask_formats(coded: list[tuple[PairRead, dict[int, int]]], encoding: MaskEncoding,
                        cfg: DataConfig, report: Report) -> None:
    """Warnings for masks that are probably damaged by how they were saved."""
    for r, _ in coded:
        if r.pair.mask.suffix.lower() in (".jpg", ".jpeg"):
            report.add("warning", "lossy_mask", r.pair.mask,
                       f"{r.pair.mask}: mask saved as JPEG, whose lossy compression changes"
                       " labels at edges; save masks as PNG")
    palettes = [(r, r.mask.palette) for r, _ in coded if r.mask.palette]
    for r, palette in palettes[1:]:
        used = 3 * (max(r.counts, default=0) + 1)  # entries the mask's indices reach
        first = palettes[0][0].pair.mask
        if palette[:used] != palettes[0][1][:used]:
            report.add("warning", "palette", r.pair.mask,
                       f"{r.pair.mask}: palette differs from that of {first.name}; predictions"
                       " use the first, so give all masks one palette")
    colours = {c for _, counts in coded for c in counts}
    if encoding == "rgb" and cfg.palette is None and len(colours) > _MANY_COLOURS:
        report.add("warning", "colours", report.root / "masks",
                   f"{report.root / 'masks'}: masks hold {len(colours)} colours, each a class;"
                   " anti-aliased or JPEG masks blend colours, so save them as PNG without"
                   " smoothing or give a --palette")


def _class_table(coded: list[tuple[PairRead, dict[int, int]]], encoding: MaskEncoding,
                 cfg: DataConfig, report: Report) -> ClassTable | None:
    palette = next((r.mask.palette for r, _ in coded if r.mask.palette), ())
    found = [(str(r.pair.mask), list(counts)) for r, counts in coded]
    if cfg.palette is not None or cfg.class_values is not None:
        return build_class_table(found, encoding, cfg, palette)  # option errors end the run
    try:
        return build_class_table(found, encoding, cfg, palette)
    except UserError as exc:
        report.add("error", "classes", report.root / "masks", str(exc))
        return None


# --------------------------------------------------------------------------- entry points


def examine_data(root: str | os.PathLike[str], cfg: DataConfig | None = None, *,
                 keep: bool = False, progress: bool = False) -> tuple[Report, list[PairRead]]:
    """Read every pair of a data folder once, check it and collect every problem.

    Args:
        root: folder with ``images/`` and ``masks/``.
        cfg: class options (``class_values``, ``class_names``, ``ignore_value``, ``palette``).
        keep: keep the decoded image and mask of every usable pair (for training); otherwise
            only their pixel counts are held.
        progress: show a progress bar.

    Returns:
        the :class:`Report` and the usable pairs as read (with the mask values checked
        against the report's class table when it has one).

    Raises:
        UserError: problems with the request rather than the data: a missing folder, no image
            files at all, a bad palette file or conflicting class options.
    """
    cfg = cfg or DataConfig()
    report = Report(Path(root))
    pairs = _pair_files(report.root, report)
    report.pairs = len(pairs)
    items: Iterable[Pair] = pairs
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(pairs, desc="checking data", unit="pair", leave=False)
    reads = [r for r in (_read_pair(p, report, keep) for p in items) if r is not None]
    reads = _check_consistency(reads, report)
    report.channels = dict(Counter(r.channels for r in reads))
    report.dtypes = dict(Counter(r.dtype for r in reads))
    report.sizes = dict(Counter(f"{r.size[1]}x{r.size[0]}" for r in reads))
    report.encoding = detect_encoding(r.mask.encoding for r in reads) if reads else None
    if report.encoding is None:
        if not report.errors:
            scan = PairScan(report.root, images=report.images, masks=report.masks)
            report.add("error", "classes", report.root, no_pairs_message(scan))
        return report, reads
    coded = _mask_codes(reads, report.encoding, report)
    _check_mask_formats(coded, report.encoding, cfg, report)
    report.classes = _class_table(coded, report.encoding, cfg, report)
    if report.classes is None:
        return report, reads
    coded = _check_values(coded, report.classes, report)
    _count_classes(coded, report.classes, report)
    return report, [r for r, _ in coded]


def check_data(root: str | os.PathLike[str], cfg: DataConfig | None = None, *,
               progress: bool = False) -> Report:
    """What ``unetseg check`` reports: :func:`examine_data` without keeping any pixels."""
    return examine_data(root, cfg, progress=progress)[0]


def require_clean(report: Report) -> None:
    """Raise one :class:`UserError` line when there are errors, else log the warnings.

    One error gives its own message; several give the first with their count and a pointer to
    ``unetseg check``.
    """
    errors = report.errors
    if len(errors) == 1:
        raise UserError(errors[0].message)
    if errors:
        raise UserError(f"{errors[0].message} (and {len(errors) - 1} more problem(s) in the"
                        f" data; run `unetseg check {report.root}` to list them all)")
    by_kind: dict[str, list[Problem]] = {}
    for w in report.warnings:
        by_kind.setdefault(w.kind, []).append(w)
    for kind, found in by_kind.items():
        for w in found[:_LOGGED]:
            log.warning("%s", w.message)
        if len(found) > _LOGGED:
            log.warning("... and %d more %s warnings; run `unetseg check %s` to list them",
                        len(found) - _LOGGED, kind.replace("_", " "), report.root)


def format_report(report: Report) -> str:
    """The report as a human-readable table."""
    lines = [f"data: {report.root}",
             f"  {report.pairs} pair(s) from {report.images} image file(s) and {report.masks}"
             " mask file(s)"]
    if report.channels:
        channels = ", ".join(f"{n} with {c} channel(s)" for c, n in report.channels.items())
        dtypes = ", ".join(f"{n} {d}" for d, n in report.dtypes.items())
        sizes = ", ".join(f"{n} of {s}" for s, n in list(report.sizes.items())[:4])
        more = f" (+{len(report.sizes) - 4} more sizes)" if len(report.sizes) > 4 else ""
        lines.append(f"  images: {channels}; {dtypes}; {sizes}{more}")
    table = report.classes
    if table is not None:
        ignore = ("" if table.ignore_value is None else
                  f", ignore value {table.ignore_value}"
                  + (f" {table.ignore_color}" if table.ignore_color else ""))
        lines += [f"  masks: {table.encoding} encoding, {table.num_classes} classes{ignore}", ""]
        values = [str(c.color) if table.encoding == "rgb" and c.color else str(c.value)
                  for c in report.counts]
        wide = max(5, *(len(v) for v in values))
        head = "colour" if table.encoding == "rgb" else "value"
        lines.append(f"  {'id':>3}  {head:>{wide}}  {'name':<20}{'pixels':>14}{'share':>9}"
                     f"{'masks':>7}{'weight':>9}")
        for c, value in zip(report.counts, values):
            weight = f"{c.weight:.4f}" if c.weight is not None else "-"
            lines.append(f"  {c.id:>3}  {value:>{wide}}  {c.name[:19]:<20}{c.pixels:>14}"
                         f"{100 * c.share:>8.2f}%{c.masks:>7}{weight:>9}")
        if table.ignore_value is not None:
            lines.append(f"  ignored pixels: {report.ignored_pixels}")
        if report.class_weights:
            lines.append("  suggested class weights (median frequency balancing): "
                         f"--class-weights {','.join(f'{w:g}' for w in report.class_weights)}")
    lines.append("")
    if report.clean:
        lines.append("no problems found")
    else:
        lines.append(f"{len(report.problems)} problem(s): {len(report.errors)} error(s),"
                     f" {len(report.warnings)} warning(s)")
        lines += [f"  {p.severity:<8}{p.kind:<12}{p.message}" for p in report.problems]
    return "\n".join(lines)
