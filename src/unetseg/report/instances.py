"""``report.html`` of ``unetseg evaluate`` for an instance model: the object scores overall and
per IoU threshold, the per-image table (sortable) and the worst images with their objects
outlined, truth beside prediction.

As for semantic models, only the few worst images are drawn, their images and true objects
read again from disk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.data.io import read_image
from unetseg.data.pairs import Pair
from unetseg.files import write_text_atomic
from unetseg.report import page
from unetseg.viz import display_rgb, object_outlines

WORST_IMAGES = 6


def _summary_section(summary: Mapping[str, Any]) -> str:
    rows = [("images", summary["images"]), ("DSB 2018 score", summary["dsb_score"]),
            ("F1 at IoU 0.5", summary["f1_0.5"]),
            ("precision at IoU 0.5", summary["precision_0.5"]),
            ("recall at IoU 0.5", summary["recall_0.5"]), ("panoptic quality", summary["pq"]),
            ("segmentation quality", summary["sq"]), ("recognition quality", summary["rq"]),
            ("true objects", summary["n_true"]), ("predicted objects", summary["n_pred"]),
            ("count error (predicted - true)", summary["count_error"]),
            ("mean absolute count error per image", summary["mean_abs_count_error"])]
    return page.table(["", "value"], rows) + (
        f'<p class="note">{page.text(summary.get("instance_rule", ""))}</p>')


def _threshold_section(summary: Mapping[str, Any]) -> str:
    keys = ("tp", "fp", "fn", "precision", "recall", "f1", "dsb")
    rows = [[t, *(summary[k][i] for k in keys)] for i, t in enumerate(summary["thresholds"])]
    return page.table(["IoU threshold", "TP", "FP", "FN", "precision", "recall", "F1",
                       "TP / (TP + FP + FN), mean over images"], rows)


def _worst_section(rows: Sequence[Mapping[str, Any]], pairs: Sequence[Pair],
                   predictions: Mapping[str, np.ndarray],
                   truth_of: Callable[[Pair], np.ndarray]) -> str:
    by_stem = {p.stem: p for p in pairs}
    scored = [r for r in rows if r.get("dsb_score") is not None and r["image"] in predictions]
    worst = sorted(scored, key=lambda r: r["dsb_score"])[:WORST_IMAGES]
    if not worst:
        return "<p>no scored images</p>"
    parts = ['<p class="note">Lowest DSB score first; each object is outlined in its own'
             " colour.</p>"]
    for row in worst:
        pair = by_stem[row["image"]]
        image = read_image(pair.image)
        pred = predictions[row["image"]]
        parts.append(
            f"<h3>{page.text(row['image'])}: DSB score {page.number(row['dsb_score'], 3)},"
            f" {row['objects_true']} true and {row['objects_pred']} predicted objects</h3>"
            + page.picture_row([("image", display_rgb(image)),
                                ("true objects", object_outlines(image, truth_of(pair))),
                                ("predicted objects", object_outlines(image, pred))]))
    return "".join(parts)


def instance_report(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                    pairs: Sequence[Pair], predictions: Mapping[str, np.ndarray],
                    truth_of: Callable[[Pair], np.ndarray]) -> str:
    """The report's HTML. ``summary`` and ``rows`` are :func:`unetseg.evaluate`'s for an
    instance model, ``predictions`` its object labels per stem, ``truth_of`` reads a pair's
    true object labels."""
    tta = f", test-time augmentation {page.text(summary['tta'])}" if summary.get("tta") else ""
    intro = (f"<p>Instance model <code>{page.text(summary['model'])}</code> on"
             f" <code>{page.text(summary['data'])}</code>{tta}.</p>")
    sections = [
        ("Summary", _summary_section(summary)),
        ("Per IoU threshold", _threshold_section(summary)),
        ("Per image", page.per_image_table(rows)),
        ("Worst images", _worst_section(rows, pairs, predictions, truth_of)),
    ]
    return page.page("Evaluation report (objects)", sections, intro=intro)


def write_instance_report(path: str | Path, summary: Mapping[str, Any],
                          rows: Sequence[Mapping[str, Any]], pairs: Sequence[Pair],
                          predictions: Mapping[str, np.ndarray],
                          truth_of: Callable[[Pair], np.ndarray]) -> Path:
    """Write :func:`instance_report` to ``path`` atomically; return the path."""
    path = Path(path)
    write_text_atomic(path, instance_report(summary, rows, pairs, predictions, truth_of))
    return path
