"""``report.html`` of ``unetseg evaluate``: the scores, the confusion matrix, per-class IoU,
the per-image table (sortable) and the worst images with their errors, in one file.

Only the few worst images are drawn: their images and masks are read again from disk, and
their predictions come from the evaluation, so no image's pixels are held for the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.data.classes import ClassTable
from unetseg.data.io import read_image
from unetseg.data.masks import class_colours, encode_mask
from unetseg.data.pairs import Pair, read_pair_mask
from unetseg.files import write_text_atomic
from unetseg.report import page
from unetseg.viz import class_bars_png, confusion_png, display_rgb, error_maps, overlay

WORST_IMAGES = 6


def worst_stems(rows: Sequence[Mapping[str, Any]], count: int = WORST_IMAGES) -> list[str]:
    """The stems of the ``count`` images with the lowest mean IoU, worst first (images whose
    mean IoU is undefined, i.e. without counted pixels, are left out)."""
    scored = [r for r in rows if r.get("mean_iou") is not None]
    return [r["image"] for r in sorted(scored, key=lambda r: r["mean_iou"])[:count]]


def _summary_section(summary: Mapping[str, Any]) -> str:
    rows = [("images", summary["images"]), ("pixel accuracy", summary["pixel_accuracy"]),
            ("mean IoU", summary["mean_iou"]), ("mean Dice", summary["mean_dice"]),
            ("mean HD95 (pixels)", summary.get("mean_hd95"))]
    return page.table(["", "value"], rows) + (
        f'<p class="note">{page.text(summary["absent_class_rule"])}. '
        f'{page.text(summary.get("hd95_rule", ""))}</p>')


def _class_section(summary: Mapping[str, Any]) -> str:
    names = ("iou", "dice", "precision", "recall", "hd95", "support")
    rows = [[name, *(m.get(k) for k in names)] for name, m in summary["per_class"].items()]
    return page.table(["class", "IoU", "Dice", "precision", "recall", "HD95 (px, mean over images)",
                       "support (pixels)"], rows, sortable=True, table_id="per-class")


def _worst_picture(stem: str, pair: Pair, pred: np.ndarray, classes: ClassTable,
                   colours: np.ndarray, row: Mapping[str, Any]) -> str:
    """One worst image: image, truth, prediction and the two error maps, side by side."""
    image = read_image(pair.image)
    truth = encode_mask(read_pair_mask(pair), classes)
    false_pos, false_neg = error_maps(image, truth, pred, colours)
    title = (f"{stem}: mean IoU {page.number(row.get('mean_iou'), 3)}, pixel accuracy"
             f" {page.number(row.get('pixel_accuracy'), 3)}")
    return f"<h3>{title}</h3>" + page.picture_row([
        ("image", display_rgb(image)), ("truth", overlay(image, truth, colours)),
        ("prediction", overlay(image, pred, colours)),
        ("false positives (predicted class)", false_pos),
        ("false negatives (true class)", false_neg)])


def _worst_section(rows: Sequence[Mapping[str, Any]], pairs: Sequence[Pair],
                   predictions: Mapping[str, np.ndarray], classes: ClassTable) -> str:
    colours = class_colours(classes)
    by_stem = {p.stem: p for p in pairs}
    rows_by_stem = {r["image"]: r for r in rows}
    stems = [s for s in worst_stems(rows) if s in by_stem and s in predictions]
    if not stems:
        return "<p>no scored images</p>"
    note = ('<p class="note">Lowest mean IoU first. In the error maps the image is dimmed and'
            " every wrong pixel is coloured: by the class it was wrongly predicted as (false"
            " positives of that class), and by the class it truly is (false negatives of that"
            " class). Ignored pixels are not marked.</p>")
    return note + page.legend(classes.names, colours) + "".join(
        _worst_picture(s, by_stem[s], predictions[s], classes, colours, rows_by_stem[s])
        for s in stems)


def evaluation_report(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                      pairs: Sequence[Pair], predictions: Mapping[str, np.ndarray],
                      classes: ClassTable) -> str:
    """The report's HTML. ``summary`` and ``rows`` are :func:`unetseg.evaluate`'s (its
    ``metrics.json`` and ``per_image.csv``), ``predictions`` its class ids (H, W) per stem."""
    names = list(summary["per_class"])
    colours = class_colours(classes)
    cm = np.asarray(summary["confusion_matrix"])
    ious = [summary["per_class"][n]["iou"] for n in names]
    tta = f", test-time augmentation {page.text(summary['tta'])}" if summary.get("tta") else ""
    intro = (f"<p>Model <code>{page.text(summary['model'])}</code> on"
             f" <code>{page.text(summary['data'])}</code>{tta}.</p>")
    sections = [
        ("Summary", _summary_section(summary)),
        ("Per class", _class_section(summary)),
        ("Confusion matrix", page.image(confusion_png(cm, names), "confusion matrix")),
        ("IoU per class", page.image(class_bars_png(ious, names, colours), "IoU per class")),
        ("Per image", page.per_image_table(rows)),
        ("Worst images", _worst_section(rows, pairs, predictions, classes)),
    ]
    return page.page("Evaluation report", sections, intro=intro)


def write_evaluation_report(path: str | Path, summary: Mapping[str, Any],
                            rows: Sequence[Mapping[str, Any]], pairs: Sequence[Pair],
                            predictions: Mapping[str, np.ndarray], classes: ClassTable) -> Path:
    """Write :func:`evaluation_report` to ``path`` atomically; return the path."""
    path = Path(path)
    write_text_atomic(path, evaluation_report(summary, rows, pairs, predictions, classes))
    return path
