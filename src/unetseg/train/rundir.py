"""The run folder: refusing an unusable one, and writing an epoch's files in a crash-safe order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from unetseg.errors import UserError
from unetseg.files import write_csv_atomic, write_text_atomic
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


def save_epoch_files(out: Path, model: torch.nn.Module, card: ModelCard,
                     optimizer: torch.optim.Optimizer, history: list[dict[str, Any]],
                     row: dict[str, Any], improved: bool, loop_state: dict[str, Any],
                     report: Callable[[], str] | None = None) -> None:
    """Write the epoch's model files, metrics table, curves, ``report.html`` (the HTML that
    ``report`` renders, after the curves it shows) and resume state (each atomic).

    The model files' cards keep ``card.info`` (a volume run's spacing and patch) and add the
    epoch's metrics ``row`` (best) or its number (last).

    ``resume.safetensors`` (the model, ``optimizer`` and the JSON ``loop_state``) is written
    last: it is the commit point. A run killed before it is replaced redoes the epoch from the
    previous state and rewrites the other files with the same contents; killed after it, every
    file of the epoch is already complete.
    """
    if improved:
        save_model(out / "best.safetensors", model, replace(card, info={**card.info, **row}))
    save_model(out / "last.safetensors", model,
               replace(card, info={**card.info, "epoch": row["epoch"]}))
    write_csv_atomic(out / "metrics.csv", history)
    plot_curves(history, out / "curves.png")
    if report is not None:
        write_text_atomic(out / "report.html", report())
    save_training_state(out / "resume.safetensors", model, card, optimizer, loop_state)
