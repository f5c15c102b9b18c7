"""``config.json``: what a run was configured, planned and trained on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unetseg.config import to_dict
from unetseg.data.classes import ClassTable
from unetseg.data.dataset import LoadedPair
from unetseg.data.normalize import ChannelStats
from unetseg.files import write_text_atomic
from unetseg.train.plan import ResolvedConfig


def run_manifest(resolved: ResolvedConfig, data_root: str | Path, classes: ClassTable,
                 stats: ChannelStats, train: list[LoadedPair], val: list[LoadedPair], *,
                 patch_size: int, steps_per_epoch: int, processes: int) -> dict[str, Any]:
    """The JSON of ``config.json``: the resolved configuration with its plans, the class
    table and normalisation, the data folder and the stems of the training and validation
    pairs, the crop side (pixels), the steps per epoch and the number of processes."""
    return {
        "run": to_dict(resolved.cfg), "classes": classes.to_dict(), "stats": stats.to_dict(),
        "data": str(Path(data_root).resolve()), "patch_size": patch_size,
        "steps_per_epoch": steps_per_epoch, "processes": processes,
        "train_stems": [p.stem for p in train], "val_stems": [p.stem for p in val],
        **resolved.plans_json(),
    }


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(manifest, indent=2))
