"""What the data doctor found, as one :class:`Report`: its problems, the class balance, and
the two ways it is shown (:func:`format_report` for ``unetseg check``, :func:`require_clean`
for training, which stops at errors and logs warnings)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from unetseg.data.classes import RGB, ClassTable, MaskEncoding
from unetseg.data.instances import INSTANCES_FOLDER, ObjectSummary
from unetseg.errors import UserError

log = logging.getLogger(__name__)

Severity = Literal["error", "warning"]
_LOGGED = 3  # warnings of one kind logged before a summary line


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
    """What :func:`unetseg.data.doctor.check_data` found."""

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
    instances: int = 0  # instance images found (one per stem)
    objects: ObjectSummary | None = None  # when counted (unetseg check)

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
            "instances": self.instances,
            "objects": self.objects.to_dict() if self.objects is not None else None,
            "class_weights": self.class_weights,
            "class_weights_method": "median frequency balancing: median(f) / f[c], f[c] = "
                                    "pixels of c / labelled pixels of the masks holding c",
            "problems": [p.to_dict() for p in self.problems],
        }


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
    if report.objects is not None:
        lines += format_objects(report.objects)
    lines.append("")
    if report.clean:
        lines.append("no problems found")
    else:
        lines.append(f"{len(report.problems)} problem(s): {len(report.errors)} error(s),"
                     f" {len(report.warnings)} warning(s)")
        lines += [f"  {p.severity:<8}{p.kind:<12}{p.message}" for p in report.problems]
    return "\n".join(lines)


def format_objects(objects: ObjectSummary) -> list[str]:
    """The lines of :func:`format_report` about the objects."""
    if objects.from_instances == objects.images:
        source = f"from {INSTANCES_FOLDER}/"
    else:
        values = ",".join(map(str, objects.object_values or ()))
        source = (f"4-connected components of mask values {values}"
                  + (f"; {objects.from_instances} of {objects.images} images from"
                     f" {INSTANCES_FOLDER}/" if objects.from_instances else ""))
    low, median, high = objects.per_image
    lines = ["", f"  objects ({source}): {objects.objects} in {objects.images} image(s);"
                 f" per image min {low}, median {median:g}, max {high}"]
    if objects.area is not None:
        low, median, high = objects.area
        lines.append(f"    area (pixels): min {low}, median {median:g}, max {high}")
    lines.append(f"    touching pairs: {objects.touching_pairs_4} share an edge (4-adjacent),"
                 f" {objects.touching_pairs_8} an edge or a corner (8-adjacent)")
    lines.append(f"    objects touching another: {objects.touching_objects_8}; cut by the image"
                 f" border: {objects.border_objects}; in several pieces:"
                 f" {objects.fragmented_objects}")
    if objects.from_instances < objects.images:
        lines.append("    (touching objects of one class merge into one component of the mask;"
                     f" {INSTANCES_FOLDER}/<stem>.png label images keep them apart)")
    return lines
