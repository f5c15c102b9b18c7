"""The default recipe against the U-Net paper's on ISBI 2012, under one wall-clock budget.

The 30 labelled slices of the ISBI 2012 training stack are split by a seeded permutation into
24 for training and 6 for testing. Each recipe (:mod:`unetseg.presets`) trains for the same
``--budget`` seconds (``TrainConfig.time_limit_s``: the run plans its epochs to end within the
budget; it validates each epoch on a seeded fifth of its 24 slices and keeps the best model).
The 6 test slices are then scored without and with test-time augmentation: the ISBI 2012
challenge's pixel, Rand and warping errors (best over thresholds of the cell probability,
:mod:`unetseg.metrics_isbi`) and the membrane IoU of the arg-max labels. The table is printed
as Markdown and written to ``OUT/results.md`` (with ``OUT/results.json``).

Both recipes use the same network width (``--width``, default 16: the paper's 64 channels make
a CPU step on a 572 x 572 tile take tens of seconds) and epochs of the same area
(``--epoch-slices``: the time budget is checked after each epoch, so short epochs keep both
runs close to it); everything else is each recipe's own.

Usage::

    python benchmarks/isbi2012.py --budget 600 --out isbi2012-bench
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetseg.api import evaluate
from unetseg.config import replace
from unetseg.presets import PRESETS, preset
from unetseg.runtime import tune_allocator
from unetseg.train.fit import fit, patch_size_for

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012" / "train"
TEST_SLICES = 6
SLICE_PIXELS = 512 * 512


@dataclass(frozen=True)
class Row:
    recipe: str
    tta: str
    train_s: float
    epochs: int
    images_seen: int
    pixel_error: float
    rand_error: float
    warping_error: float
    membrane_iou: float
    eval_s: float


def split(data: Path, out: Path, seed: int, fold: int = 0) -> tuple[Path, Path, list[str]]:
    """Copy a seeded 24/6 split of ``data`` into ``out/train`` and ``out/test``.

    ``fold`` k tests on the k-th run of six slices of the same seeded permutation, so folds
    0-4 of one seed are a 5-fold cross-validation of the 30 slices (fold 0 is the single split).
    """
    stems = sorted(p.stem for p in (data / "images").glob("*.png"))
    if len(stems) < (fold + 1) * TEST_SLICES or len(stems) <= TEST_SLICES:
        raise SystemExit(f"{data}: expected the 30 ISBI 2012 training slices, found {len(stems)}")
    order = np.random.default_rng(seed).permutation(len(stems))
    test = sorted(stems[i] for i in order[fold * TEST_SLICES:(fold + 1) * TEST_SLICES])
    for part in ("train", "test"):
        for sub in ("images", "masks"):
            (out / part / sub).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        part = "test" if stem in test else "train"
        for sub in ("images", "masks"):
            shutil.copyfile(data / sub / f"{stem}.png", out / part / sub / f"{stem}.png")
    return out / "train", out / "test", test


def run_recipe(name: str, train_dir: Path, test_dir: Path, out: Path, args: argparse.Namespace
               ) -> list[Row]:
    cfg = replace(preset(name), **{
        "train.time_limit_s": args.budget, "train.epochs": 100_000, "train.device": "cpu",
        "train.seed": args.seed, "data.class_values": (0, 255),
        "data.class_names": ("membrane", "cell")})
    if args.width:
        cfg = replace(cfg, **{"model.width": args.width})
    steps = args.steps_per_epoch or math.ceil(
        args.epoch_slices * SLICE_PIXELS / (patch_size_for(cfg) ** 2 * cfg.train.batch_size))
    cfg = replace(cfg, **{"train.steps_per_epoch": steps})
    started = time.perf_counter()
    result = fit(train_dir, out / name / "run", cfg, show_progress=not args.quiet,
                 plan="auto" if name == "default" else None)  # a preset is a whole recipe
    train_s = time.perf_counter() - started
    last = result.history[-1]
    rows = []
    for tta in (None, args.tta):
        began = time.perf_counter()
        ev = evaluate(result.best_model, test_dir, out / name / f"eval-{tta or 'plain'}",
                      device="cpu", tta=tta, isbi=True, show_progress=not args.quiet)
        s = ev.summary
        rows.append(Row(name, tta or "none", train_s, int(last["epoch"]),
                        int(last["images_seen"]), s["isbi"]["pixel_error"]["value"],
                        s["isbi"]["rand_error"]["value"], s["isbi"]["warping_error"]["value"],
                        s["per_class"]["membrane"]["iou"], time.perf_counter() - began))
    return rows


def table(rows: list[Row]) -> str:
    head = ("| recipe | TTA | train s | epochs | images seen | pixel error | Rand error |"
            " warping error | membrane IoU | eval s |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r.recipe} | {r.tta} | {r.train_s:.0f} | {r.epochs} | {r.images_seen} |"
                     f" {r.pixel_error:.4f} | {r.rand_error:.4f} | {r.warping_error:.6f} |"
                     f" {r.membrane_iou:.4f} | {r.eval_s:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help=f"ISBI 2012 train folder ({DATA})")
    p.add_argument("--out", type=Path, default=Path("isbi2012-bench"), help="output folder")
    p.add_argument("--budget", type=float, default=600.0, help="training seconds per recipe")
    p.add_argument("--seed", type=int, default=0, help="seed of split, training, augmentation")
    p.add_argument("--width", type=int, default=16, help="channels of the first level, both"
                   " recipes (0: each recipe's own, 64)")
    p.add_argument("--epoch-slices", type=float, default=4.0, help="training crops per epoch"
                   " cover this many slices' area (default 4), so both recipes see as many"
                   " pixels per epoch and the budget is met to within a short epoch")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="overrides --epoch-slices")
    p.add_argument("--tta", default="d4", help="test-time augmentation to compare (d4)")
    p.add_argument("--recipes", default="default,paper", help="comma-separated preset names")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    tune_allocator()  # as the command line does, for every model
    recipes = [r for r in args.recipes.split(",") if r]
    unknown = [r for r in recipes if r not in PRESETS]
    if unknown:
        raise SystemExit(f"unknown recipe {unknown[0]}; choose from {', '.join(PRESETS)}")
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out}: not empty; choose another --out")
    train_dir, test_dir, test_stems = split(args.data, args.out / "data", args.seed)
    rows: list[Row] = []
    for name in recipes:
        rows += run_recipe(name, train_dir, test_dir, args.out, args)
    settings: dict[str, Any] = {
        "budget_s": args.budget, "width": args.width or "recipe's own", "seed": args.seed,
        "tta": args.tta, "test_slices": test_stems, "torch_threads": torch.get_num_threads(),
        "epoch_slices": args.epoch_slices, "steps_per_epoch": args.steps_per_epoch}
    text = (f"ISBI 2012, 24 training / 6 test slices (test: {', '.join(test_stems)}), CPU,"
            f" {args.budget:.0f} s of training per recipe, width {settings['width']},"
            f" {settings['torch_threads']} torch threads. Errors: best over thresholds 0.0..0.9"
            " of the cell probability (lower is better).\n\n" + table(rows) + "\n")
    print(text)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(
        {"settings": settings, "rows": [r.__dict__ for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
