"""Helpers for the report tests: a scored evaluation and a short training run, each with its
``report.html``, and what a self-contained page must not hold."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import write_dataset
from shipping import tiny_model

EXTERNAL = re.compile(r"""(?:src|href|action)\s*=\s*["']?\s*(?!data:|#)[^"'\s>]+|url\(\s*["']?"""
                      r"""\s*(?!data:)[^)]+\)|@import|https?://""", re.IGNORECASE)
"""Any reference a page could load: src/href/action other than data: URIs and in-page anchors,
CSS url() other than data:, @import, and any http(s) address at all."""


def evaluated(root: Path) -> Path:
    """``unetseg evaluate`` of a tiny random model on 8 disc images; the output folder."""
    import unetseg

    data = write_dataset(root / "data", 8, size=(48, 64))
    model = tiny_model(root / "tiny.safetensors")
    unetseg.evaluate(model, data, root / "evaluation", device="cpu", show_progress=False)
    return root / "evaluation"


def trained(root: Path) -> Path:
    """A two-epoch run of a width-4 U-Net on 6 disc images (3 validate); the run folder."""
    import unetseg
    from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    data = write_dataset(root / "data", 6, size=(48, 64))
    cfg = RunConfig(model=ModelConfig(width=4, depth=2),
                    data=DataConfig(patch_size=32, val_fraction=0.5),
                    train=TrainConfig(epochs=2, steps_per_epoch=2, device="cpu"))
    unetseg.fit(data, root / "run", cfg, show_progress=False)
    return root / "run"
