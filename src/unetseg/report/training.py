"""``report.html`` of a training run: the curves, the plan and its reasons, what the data
check found, the epochs, and a few validation images as the model saw them.

Everything comes from what the run already has: ``config.json`` and ``curves.png`` of the run
folder, the data check's :class:`~unetseg.data.report.Report` (kept when the data was read),
the metrics rows, and the predictions of the first validation images from the last validation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.data.classes import ClassTable
from unetseg.data.masks import class_colours
from unetseg.data.report import Report
from unetseg.report import page
from unetseg.viz import display_rgb, overlay

Example = tuple[str, np.ndarray, np.ndarray, np.ndarray]
"""(stem, image (C, H, W), true class ids (H, W), predicted class ids (H, W))."""


def _plan_section(manifest: Mapping[str, Any]) -> str:
    """The planned width and epochs with their reasons; the chosen settings beside them."""
    run = manifest.get("run", {})
    model, train = run.get("model", {}), run.get("train", {})
    epochs = manifest.get("planned_epochs") or {}
    why = {k: c.get("reason", "") for k, c in ((manifest.get("plan") or {}).get("plan")
                                               or {}).items()}
    rows: list[list[Any]] = [
        ["width", model.get("width"), "given" if not manifest.get("planned_width") else
         manifest["planned_width"].get("reason", "")],
        ["first-level width", model.get("top_width") or model.get("width"),
         why.get("model.top_width", "")],
        ["depth", model.get("depth"), why.get("model.depth", "")],
        ["epochs", epochs.get("epochs", train.get("epochs")),
         f"{epochs['reason']} (at most {train.get('epochs')})" if epochs else "as configured"],
        ["steps per epoch", manifest.get("steps_per_epoch"), ""],
        ["batch size", train.get("batch_size"), why.get("train.batch_size", "")],
        ["crop side (pixels)", manifest.get("patch_size"), why.get("data.patch_size", "")],
        ["normalisation", run.get("data", {}).get("normalization"),
         why.get("data.normalization", "")],
        ["loss", train.get("loss"), why.get("train.loss", "")],
        ["learning rate", train.get("lr"), ""],
        ["time limit (s)", train.get("time_limit_s"), ""],
        ["device", manifest.get("device"), f"{manifest.get('processes', 1)} process(es),"
                                           f" {manifest.get('torch_threads')} torch threads"],
    ]
    width_plan = manifest.get("planned_width")
    if width_plan:
        rows.append(["measured step (s)", width_plan.get("probe_step_s"),
                     f"one step of width {width_plan.get('probe_width')}"])
    return page.table(["setting", "value", "why"], rows)


def _data_section(manifest: Mapping[str, Any], check: Report | None) -> str:
    """Pairs, the split and the class balance with the suggested weights."""
    lines = (f"<p>Data <code>{page.text(manifest.get('data', ''))}</code>:"
             f" {len(manifest.get('train_stems', []))} training and"
             f" {len(manifest.get('val_stems', []))} validation pairs.</p>")
    if check is None:
        return lines + "<p>No data check report.</p>"
    rows = [[c.id, c.value, c.name, c.pixels, c.share, c.masks, c.weight] for c in check.counts]
    table = page.table(["id", "value", "name", "pixels", "share", "masks", "suggested weight"],
                       rows)
    problems = "".join(f"<li>{page.text(p.message)}</li>" for p in check.problems[:10])
    more = len(check.problems) - 10
    warnings = (f"<p>{len(check.problems)} warning(s):</p><ul>{problems}"
                + (f"<li>... and {more} more (<code>unetseg check</code> lists them)</li>"
                   if more > 0 else "") + "</ul>") if check.problems else "<p>No warnings.</p>"
    return (lines + f"<p>{check.pairs} pair(s), {check.encoding} masks.</p>" + table
            + '<p class="note">Suggested weights: median frequency balancing (median(f) / f[c],'
            " f[c] = pixels of c / labelled pixels of the masks holding c).</p>" + warnings)


def _examples_section(examples: Sequence[Example], classes: ClassTable, epoch: Any) -> str:
    if not examples:
        return "<p>No validation split.</p>"
    colours = class_colours(classes)
    rows = "".join(f"<h3>{page.text(stem)}</h3>" + page.picture_row(
        [("image", display_rgb(image)), ("truth", overlay(image, truth, colours)),
         ("prediction", overlay(image, pred, colours))])
        for stem, image, truth, pred in examples)
    return (f'<p class="note">Predicted by the model of epoch {page.text(epoch)} (the last).'
            "</p>" + page.legend(classes.names, colours) + rows)


def _curves(run_dir: Path) -> str:
    curves = run_dir / "curves.png"
    return page.image(curves.read_bytes(), "training curves") if curves.is_file() else ""


def training_report(run_dir: str | Path, history: Sequence[Mapping[str, Any]],
                    check: Report | None, examples: Sequence[Example],
                    classes: ClassTable) -> str:
    """The report's HTML for the run in ``run_dir`` (its ``config.json`` and ``curves.png``
    are read from there) after the epochs of ``history``."""
    run_dir = Path(run_dir)
    config = run_dir / "config.json"
    manifest = json.loads(config.read_text()) if config.is_file() else {}
    scored = [h for h in history if h.get("val_mean_iou") is not None]
    best = max(scored, key=lambda h: h["val_mean_iou"]) if scored else None
    intro = (f"<p>Run <code>{page.text(run_dir)}</code>: {len(history)} epoch(s)"
             + (f", best validation mean IoU {best['val_mean_iou']:.4f} at epoch"
                f" {best['epoch']}" if best else "") + ".</p>")
    columns = list(history[-1]) if history else []
    sections = [
        ("Curves", _curves(run_dir)),
        ("Plan", _plan_section(manifest)),
        ("Data", _data_section(manifest, check)),
        ("Epochs", page.table(columns, [[h.get(c) for c in columns] for h in history],
                              sortable=True, table_id="epochs")),
        ("Validation examples", _examples_section(
            examples, classes, history[-1]["epoch"] if history else "-")),
        ("config.json", "<details><summary>show</summary><pre>"
                        f"{page.text(json.dumps(manifest, indent=2))}</pre></details>"),
    ]
    return page.page("Training report", sections, intro=intro)
