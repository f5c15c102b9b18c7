"""The run folder: refusing an unusable one, and writing an epoch's files in a crash-safe order."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from unetseg.errors import UserError
from unetseg.files import write_text_atomic
from unetseg.modelfile import ModelCard, save_model
from unetseg.train.checkpoint import save_training_state
from unetseg.viz import plot_curves


def check_run_folder(out: Path, resume: bool) -> Path | None:
    """Refuse an unusable run folder before any work; return the resume file, if resuming."""
    state = out / "resume.safetensors"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another --out")
    if resume:
        if not state.is_file():
            raise UserError(f"{out}: nothing to resume (no resume.safetensors); drop --resume")
        return state
    if state.exists():
        raise UserError(f"{out}: holds a run already; pass --resume to continue it or choose"
                        " another --out")
    return None


def make_run_folder(out: Path) -> None:
    """Create ``out`` (and its parents), or end the run with one line saying why not."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create the run folder ({exc.strerror}); choose a"
                        " writable --out") from None


def write_metrics_csv(history: list[dict[str, Any]], path: Path) -> None:
    """All epochs so far, one row each, rewritten atomically."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(path, buf.getvalue())


def save_epoch_files(out: Path, model: torch.nn.Module, card: ModelCard,
                     optimizer: torch.optim.Optimizer, history: list[dict[str, Any]],
                     row: dict[str, Any], improved: bool, loop_state: dict[str, Any]) -> None:
    """Write the epoch's model files, metrics table, curves and resume state (each atomic).

    ``resume.safetensors`` (the model, ``optimizer`` and the JSON ``loop_state``) is written
    last: it is the commit point. A run killed before it is replaced redoes the epoch from the
    previous state and rewrites the other files with the same contents; killed after it, every
    file of the epoch is already complete.
    """
    if improved:
        save_model(out / "best.safetensors", model, replace(card, info=row))
    save_model(out / "last.safetensors", model, replace(card, info={"epoch": row["epoch"]}))
    write_metrics_csv(history, out / "metrics.csv")
    plot_curves(history, out / "curves.png")
    save_training_state(out / "resume.safetensors", model, card, optimizer, loop_state)
