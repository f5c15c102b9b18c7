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

``unetseg check DATA`` prints :func:`~unetseg.data.report.format_report` (or the report as
JSON with ``--json``) and exits 0 when there is no problem, 1 otherwise. Training runs the same
checks first (:func:`unetseg.data.dataset.load_data`: :func:`examine_data` with ``keep=True``,
then :func:`~unetseg.data.report.require_clean`) and keeps the decoded pairs, so nothing is
read twice.
"""

from __future__ import annotations

import logging
import os
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.config import DataConfig
from unetseg.data.classes import ClassTable, MaskEncoding, pack_rgb, unpack_rgb
from unetseg.data.fingerprint import Fingerprint, FingerprintBuilder, ignore_aware_ids
from unetseg.data.instances import (
    INSTANCES_FOLDER,
    ObjectTable,
    components_by_value,
    instance_files,
    object_table,
    read_instances,
    summarize_objects,
)
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
from unetseg.data.report import ClassCount, Report
from unetseg.errors import UserError
from unetseg.progress import progress as progress_bar

log = logging.getLogger(__name__)

_SHOWN = 10  # values listed in one message
_MANY_COLOURS = 64  # more discovered colours than this are probably blending artefacts
_GRAY = 0x010101  # packed colour of the gray level 1
_MISMATCH = 0.01  # share of object pixels where instances and mask may disagree unwarned


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


def _instance_files(root: Path, pairs: list[Pair], report: Report) -> dict[str, Path]:
    """The instance image of each pair's stem, from ``instances/`` when it exists; duplicate
    stems are errors, instance images without a pair and pairs without one warnings."""
    found = instance_files(root)
    if not found:
        return {}
    for stem, files in found.items():
        if len(files) > 1:
            report.add("error", "duplicate", files[0], duplicate_message("instance", stem, files))
    stems = {p.stem for p in pairs}
    for stem in sorted(set(found) - stems):
        f = found[stem][0]
        report.add("warning", "unpaired", f, f"{f}: instance image has no image/mask pair of"
                   " the same name; add them or move the instance image out")
    for pair in pairs:
        if pair.stem not in found:
            report.add("warning", "instances", pair.image,
                       f"{pair.image}: no {INSTANCES_FOLDER}/{pair.stem}.png (or .tif) while"
                       f" other images have one; its objects come from the mask, where touching"
                       " objects merge: add its instance image")
    return {stem: files[0] for stem, files in found.items() if len(files) == 1}


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
    instance_path: Path | None = None  # instances/<stem>.* when there is one
    instances: np.ndarray | None = None  # its labels (H, W) when kept and readable
    objects: ObjectTable | None = None  # when asked for: of the instances, else of the mask
    inside: dict[int, int] | None = None  # mask pixels per code under the instances' objects


def _read_pair(pair: Pair, report: Report, keep: bool, instance_path: Path | None = None,
               objects: bool = False, fingerprint: FingerprintBuilder | None = None
               ) -> PairRead | None:
    """Read one pair (and its instance image), noting each of its problems; None when the pair
    cannot be used. ``objects``: also list its objects (:class:`ObjectTable`): those of the
    instance image, or the components of every mask value (narrowed to the object classes
    once the class table is known). A ``fingerprint`` builder is given the pair's pixels
    before they are dropped."""
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
    codes = mask.codes("rgb") if mask.encoding == "rgb" else mask.data
    counts = value_counts(codes)
    if fingerprint is not None:
        fingerprint.add(pair.stem, image, codes, samples.dtype.name, pair.image)
    labels, table = None, None
    if instance_path is not None:
        try:
            labels = read_instances(instance_path, (samples.shape[1], samples.shape[2]))
        except UserError as exc:
            report.add("error", "instances", instance_path, str(exc))
    inside = None if labels is None else value_counts(codes[labels > 0])
    if objects and labels is not None:
        table = object_table(labels)
    elif objects and instance_path is None:
        table = components_by_value(codes)
    if not keep:  # checking only: hold the counts, not the pixels
        image, mask = np.empty((0, 0, 0), np.float32), replace(mask, data=np.empty((0, 0)))
        labels = None
    return PairRead(pair, np.ascontiguousarray(image), int(samples.shape[0]), samples.dtype.name,
                    (int(samples.shape[1]), int(samples.shape[2])), mask, counts,
                    instance_path, labels, table, inside)


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


def _colour_values(table: ClassTable) -> dict[int, int]:
    """Packed colour -> value of a colour table (the ignore colour included)."""
    lookup = {int(pack_rgb(np.array(c))): v for c, v in zip(table.colors, table.values)}
    if table.ignore_color is not None and table.ignore_value is not None:
        lookup[int(pack_rgb(np.array(table.ignore_color)))] = table.ignore_value
    return lookup


def _by_value(counts: dict[int, int], table: ClassTable) -> tuple[dict[int, int], list[int]]:
    """A mask's code counts keyed by the table's values (the ignore value included), and the
    codes the table does not know. Colour codes map through the table's colours."""
    known = {*table.values, *(() if table.ignore_value is None else (table.ignore_value,))}
    if table.encoding != "rgb":
        return ({c: n for c, n in counts.items() if c in known},
                sorted(c for c in counts if c not in known))
    lookup = _colour_values(table)
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


# --------------------------------------------------------------------------- objects


def _colours_to_values(codes: np.ndarray, colours: dict[int, int]) -> np.ndarray:
    """Packed colours -> the table's values; -1 for colours it does not hold."""
    keys = np.array(sorted(colours), np.int64)
    values = np.array([colours[k] for k in keys.tolist()], np.int64)
    where = np.clip(np.searchsorted(keys, codes), 0, max(0, keys.size - 1))
    found = keys.size > 0 and keys[where] == codes
    return np.where(found, values[where] if keys.size else -1, -1)


def _object_values(table: ClassTable, cfg: DataConfig) -> tuple[int, ...]:
    """Mask values of the object classes: ``cfg.weight_objects``, default every class but the
    first (as the border weight maps take them)."""
    if cfg.weight_objects is not None:
        return tuple(cfg.weight_objects)
    return tuple(table.values[1:])


def _check_instances(coded: list[tuple[PairRead, dict[int, int]]], table: ClassTable,
                     cfg: DataConfig, report: Report) -> None:
    """Warn where an instance image and its mask mark different pixels as objects: object
    pixels of the mask under no instance, or instance pixels on the mask's other classes
    (ignored pixels count as neither), more than 1% of the mask's object pixels."""
    objects = set(_object_values(table, cfg))
    for r, counts in coded:
        if r.inside is None or r.instance_path is None:
            continue
        gray_in_colour = table.encoding == "rgb" and r.mask.encoding != "rgb"
        inside, _ = _by_value({c * _GRAY: n for c, n in r.inside.items()} if gray_in_colour
                              else r.inside, table)
        in_mask = sum(n for v, n in counts.items() if v in objects)
        covered = sum(n for v, n in inside.items() if v in objects)
        extra = sum(n for v, n in inside.items() if v not in objects and v in table.values)
        missing = in_mask - covered
        if missing + extra > _MISMATCH * max(in_mask, 1):
            report.add("warning", "instances", r.instance_path,
                       f"{r.instance_path}: {missing} object pixels of the mask lie outside"
                       f" every instance and {extra} instance pixels on other classes (object"
                       f" values {','.join(map(str, sorted(objects)))}); instance images and"
                       " masks should mark the same objects")


def _summarize_objects(reads: list[PairRead], table: ClassTable, cfg: DataConfig,
                       report: Report) -> None:
    """The data set's objects: the instance images' objects, and for images without one the
    components of the object classes (:func:`_object_values`)."""
    values = _object_values(table, cfg)
    unknown = [v for v in values if v not in table.values]
    if unknown:
        report.add("error", "objects", report.root / "masks",
                   f"--weight-objects {unknown[0]}: not a class value of the masks"
                   f" ({', '.join(map(str, table.values[:_SHOWN]))}); give the values of the"
                   " object classes, e.g. 255 for the cells of ISBI 2012")
    colours = _colour_values(table) if table.encoding == "rgb" else None
    tables, from_instances = [], 0
    for r in reads:
        found = r.objects
        if found is None:
            continue
        if found.classes is None:
            from_instances += 1
        else:
            codes = found.classes
            if colours is not None:
                codes = _colours_to_values(codes * _GRAY if r.mask.encoding != "rgb" else codes,
                                           colours)
            found = found.subset(np.isin(codes, values))
        tables.append(found)
    if tables:
        report.objects = summarize_objects(
            tables, from_instances, values if from_instances < len(tables) else None)


# --------------------------------------------------------------------------- entry points


def examine_data(root: str | os.PathLike[str], cfg: DataConfig | None = None, *,
                 keep: bool = False, progress: bool = False,
                 objects: bool = False, fingerprint: FingerprintBuilder | None = None
                 ) -> tuple[Report, list[PairRead]]:
    """Read every pair of a data folder once, check it and collect every problem.

    Instance images (``instances/<stem>.*``, see :mod:`unetseg.data.instances`) are read and
    checked with their pairs when that folder exists.

    Args:
        root: folder with ``images/`` and ``masks/`` (and optionally ``instances/``).
        cfg: class options (``class_values``, ``class_names``, ``ignore_value``, ``palette``;
            ``weight_objects`` for the objects of masks).
        keep: keep the decoded image, mask and instance labels of every usable pair (for
            training); otherwise only their pixel counts are held.
        progress: show a progress bar.
        objects: count the objects, their sizes and contacts (``report.objects``).
        fingerprint: given, it collects the fingerprint's measurements from every pair as
            it is read (:func:`fingerprint_of` makes the fingerprint).

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
    instances = _instance_files(report.root, pairs, report)
    report.instances = len(instances)
    items = progress_bar(pairs, desc="checking data", unit="pair", leave=False,
                         disable=not progress)
    reads = [r for r in (_read_pair(p, report, keep, instances.get(p.stem), objects,
                                    fingerprint) for p in items) if r is not None]
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
    _check_instances(coded, report.classes, cfg, report)
    good = [r for r, _ in coded]
    if objects:
        _summarize_objects(good, report.classes, cfg, report)
    return report, good


def _class_ids_of_codes(read: PairRead, encoding: MaskEncoding, table: ClassTable
                        ) -> Callable[[np.ndarray], np.ndarray]:
    """The function from one mask's raw codes (values, palette indices or packed colours,
    as :meth:`MaskFile.codes` gives them for its own encoding) to class ids (the ignore value
    and anything unknown to ``IGNORE_INDEX``)."""
    scale = _GRAY if encoding == "rgb" and read.mask.encoding != "rgb" else 1
    if table.encoding == "rgb":
        lookup = {int(pack_rgb(np.array(c))): i for i, c in enumerate(table.colors)}
    else:
        lookup = {v: i for i, v in enumerate(table.values)}
    return ignore_aware_ids({code // scale: i for code, i in lookup.items()
                             if code % scale == 0})


def fingerprint_of(report: Report, reads: list[PairRead],
                   builder: FingerprintBuilder) -> Fingerprint:
    """The fingerprint of the usable pairs ``reads`` of a clean ``report``, from what
    ``builder`` collected while :func:`examine_data` read them."""
    assert report.classes is not None and report.encoding is not None
    table, encoding = report.classes, report.encoding
    return builder.finish(report.root, table, {
        r.pair.stem: _class_ids_of_codes(r, encoding, table) for r in reads})


def check_data(root: str | os.PathLike[str], cfg: DataConfig | None = None, *,
               progress: bool = False) -> Report:
    """What ``unetseg check`` reports: :func:`examine_data` with the objects counted, without
    keeping any pixels."""
    return examine_data(root, cfg, progress=progress, objects=True)[0]
