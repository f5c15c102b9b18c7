"""``config.json``: what a run was configured, planned and trained on, and with what software.

``data_sha256`` identifies the training files: the SHA-256 of the training and validation pairs
sorted by stem, each fed as its stem (UTF-8), its image file's bytes and its mask file's bytes,
every one of the three preceded by its length in bytes as an 8-byte big-endian integer (so that
no other set of files gives the same stream).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

import unetseg
from unetseg.config import to_dict
from unetseg.data.classes import ClassTable
from unetseg.data.dataset import LoadedPair
from unetseg.data.normalize import ChannelStats
from unetseg.files import write_text_atomic
from unetseg.train.plan import ResolvedConfig

CHUNK_BYTES = 1 << 20


def data_sha256(pairs: Iterable[LoadedPair]) -> str:
    """The hex SHA-256 of ``pairs`` as the module docstring defines it."""
    digest = hashlib.sha256()
    for pair in sorted(pairs, key=lambda p: p.stem):
        stem = pair.stem.encode("utf-8")
        digest.update(len(stem).to_bytes(8, "big") + stem)
        for path in (pair.image_path, pair.mask_path):
            digest.update(Path(path).stat().st_size.to_bytes(8, "big"))
            with open(path, "rb") as fh:
                while chunk := fh.read(CHUNK_BYTES):
                    digest.update(chunk)
    return digest.hexdigest()


def software_versions() -> dict[str, str]:
    """The unetseg (as installed; the package's own version when run from a source tree),
    torch and Python versions."""
    try:
        version = importlib.metadata.version("unetseg")
    except importlib.metadata.PackageNotFoundError:
        version = unetseg.__version__
    return {"unetseg": version, "torch": torch.__version__,
            "python": platform.python_version()}


def run_manifest(resolved: ResolvedConfig, data_root: str | Path, classes: ClassTable,
                 stats: ChannelStats, train: list[LoadedPair], val: list[LoadedPair], *,
                 patch_size: int, steps_per_epoch: int, processes: int,
                 device: torch.device) -> dict[str, Any]:
    """The JSON of ``config.json``: the resolved configuration with its plans, the class
    table and normalisation, the data folder, the stems of the training and validation pairs
    and their :func:`data_sha256`, the crop side (pixels), the steps per epoch, the number of
    processes, the training device, torch's intra-op thread count and the software versions."""
    return {
        "run": to_dict(resolved.cfg), "classes": classes.to_dict(), "stats": stats.to_dict(),
        "data": str(Path(data_root).resolve()), "patch_size": patch_size,
        "steps_per_epoch": steps_per_epoch, "processes": processes,
        "train_stems": [p.stem for p in train], "val_stems": [p.stem for p in val],
        "data_sha256": data_sha256([*train, *val]),
        "device": str(device), "torch_threads": torch.get_num_threads(),
        "versions": software_versions(),
        **resolved.plans_json(),
    }


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(manifest, indent=2))
