"""Objects, not only pixels: instance segmentation contenders under one wall-clock budget.

Every contender trains for the same ``--budget`` seconds (``TrainConfig.time_limit_s``, planned
width and epochs, the same seed) on the same seeded split, and is scored on the same held-out
images with the object-level scores of :mod:`unetseg.metrics_instance`: the 2018 Data Science
Bowl score (per image, the mean over IoU thresholds 0.5..0.95 of TP / (TP + FP + FN); then the
mean over images), the F1 score at IoU 0.5 (objects of all images pooled) and the error in the
object count. Contenders:

* ``semantic+cc``: the plain semantic model (``unetseg train``), its objects the connected
  components (4-connected) of the predicted object class, as they come (no hole filling, no
  minimum size);
* ``semantic+cc+size``: the same model, its object probability above 0.5 with holes filled,
  the components under a minimum size dropped (chosen on the validation images as for the
  instance models): the instance models' post-processing without the split, so the table
  separates what the targets bring from what the clean-up brings;
* ``boundary``: ``--task instance`` with the interior / boundary / background target, split by a
  seeded watershed from the interiors (post-processing chosen on the validation images);
* ``boundary+weights``: the same with the U-Net paper's border weight map (``--loss
  weighted-ce``) around the object interiors;
* ``distance``: ``--task instance --instance-target distance``: object classes plus the
  regressed normalised distance to the object's edge, whose peaks seed the watershed.

Datasets (``../shared/data``; each skipped with a note when absent):

* ``dsb2018``: the 506 DSB 2018 stage-1 training images (nuclei, 3 channels) with their
  instance label images; a seeded permutation holds out ``--test-fraction`` of them (after
  ``--max-images`` keeps the first images of that permutation).
* ``isbi2012``: the 30 ISBI 2012 slices split 24/6 as ``isbi2012.py`` splits them; each cell (a
  connected region of the cell class between membranes) is an object.

The budget covers training only; choosing the post-processing on the validation images
afterwards (a few seconds) and the test predictions are timed apart. Writes
``OUT/results.md`` and ``OUT/results.json`` and prints the tables.

Usage::

    python benchmarks/instances.py --budget 600 --out instances-bench
    python benchmarks/instances.py --budget 20 --max-images 40 --out instances-smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from isbi2012 import split as isbi_split
from scipy import ndimage

from unetseg.config import InstanceConfig, RunConfig, replace
from unetseg.data.classes import IGNORE_INDEX
from unetseg.data.instance_targets import pair_instances
from unetseg.data.io import read_image
from unetseg.data.masks import encode_mask
from unetseg.data.pairs import find_pairs, read_pair_mask
from unetseg.data.weights import object_class_ids
from unetseg.infer.instances import (
    InstanceMaps,
    choose_postprocess,
    instances_from_logits,
    instances_from_maps,
)
from unetseg.infer.load import load_predictor
from unetseg.infer.predict import logits_to_labels
from unetseg.metrics_instance import instance_scores, total_instance_scores
from unetseg.runtime import tune_allocator
from unetseg.train.fit import fit

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FOUR = ndimage.generate_binary_structure(2, 1)

CONTENDERS: dict[str, dict[str, Any]] = {
    "semantic+cc": {},
    "semantic+cc+size": {},
    "boundary": {"train.task": "instance", "instance.target": "boundary"},
    "boundary+weights": {"train.task": "instance", "instance.target": "boundary",
                         "train.loss": "weighted-ce"},
    "distance": {"train.task": "instance", "instance.target": "distance"},
}
"""Contender -> RunConfig fields changed from the default."""


TRAINED: dict[Path, tuple[Any, float]] = {}
"""Run folder -> (its fit result, training seconds), for contenders that share a run."""


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Path
    test: Path
    note: str
    overrides: tuple[tuple[str, Any], ...] = ()


def dsb_dataset(root: Path, out: Path, seed: int, test_fraction: float,
                max_images: int | None) -> Dataset:
    """A seeded split of DSB 2018, linked (not copied) into ``out/{train,test}``."""
    stems = sorted(p.stem for p in (root / "images").glob("*.png"))
    order = np.random.default_rng(seed).permutation(len(stems))
    chosen = [stems[i] for i in order[: max_images or len(stems)]]
    n_test = max(1, round(len(chosen) * test_fraction))
    parts = {"test": chosen[:n_test], "train": chosen[n_test:]}
    for part, names in parts.items():
        for sub in ("images", "masks", "instances"):
            folder = out / part / sub
            folder.mkdir(parents=True, exist_ok=True)
            for stem in names:
                link = folder / f"{stem}.png"
                if not link.exists():
                    os.symlink(root / sub / f"{stem}.png", link)
    note = (f"{len(parts['train'])} training and {len(parts['test'])} test images of"
            f" {len(stems)} (seeded split, seed {seed})")
    return Dataset("dsb2018", out / "train", out / "test", note)


def isbi_dataset(root: Path, out: Path, seed: int) -> Dataset:
    train, test, stems = isbi_split(root, out, seed)
    return Dataset("isbi2012", train, test, f"24/6 split (seed {seed}); test {', '.join(stems)}",
                   (("data.class_values", (0, 255)), ("data.class_names", ("membrane", "cell"))))


def objects_of(model: Path, device: str, cleanup: InstanceConfig | None = None
               ) -> tuple[Callable[[np.ndarray], np.ndarray], Any]:
    """(image -> object labels, model card): the watershed of an instance model, or the
    connected components of a semantic model's object classes, as they come or, with
    ``cleanup``, those of its object probability above ``cleanup.mask_threshold`` (holes
    filled, small ones dropped)."""
    predictor, card = load_predictor(model, device=device)
    if card.instance is not None:
        return lambda image: instances_from_logits(predictor.logits(image), card.instance), card
    objects = object_class_ids(card.classes, None)
    if cleanup is not None:
        return lambda image: instances_from_maps(semantic_maps(predictor, image, objects),
                                                 cleanup), card

    def components(image: np.ndarray) -> np.ndarray:
        ids = logits_to_labels(predictor.logits(image)).numpy()
        return ndimage.label(np.isin(ids, objects), structure=FOUR)[0]

    return components, card


def semantic_maps(predictor: Any, image: np.ndarray, objects: tuple[int, ...]) -> InstanceMaps:
    """A semantic model's object probability as both maps: every mask component is its own
    seed, so the post-processing keeps the components whole."""
    probs = torch.softmax(predictor.logits(image), 0)[list(objects)].sum(0).numpy()
    return InstanceMaps(probs.astype(np.float32), probs.astype(np.float32))


def choose_cleanup(run: Path, data: Dataset, device: str) -> tuple[InstanceConfig, dict[str, Any]]:
    """The minimum size of the semantic model's components, chosen on its validation images
    (``config.json``'s ``val_stems``) by the DSB score, as for the instance models."""
    predictor, card = load_predictor(run / "best.safetensors", device=device)
    objects = object_class_ids(card.classes, None)
    val = set(json.loads((run / "config.json").read_text())["val_stems"])
    examples = []
    for pair in find_pairs(data.train):
        if pair.stem in val:
            ids = encode_mask(read_pair_mask(pair), card.classes)
            truth = pair_instances(pair.mask, pair.stem, ids, objects)
            maps = semantic_maps(predictor, read_image(pair.image), objects)
            ignored = ids == IGNORE_INDEX
            truth[ignored], maps.foreground[ignored] = 0, 0.0
            examples.append((maps, truth))
    return choose_postprocess(examples, InstanceConfig(), seed_thresholds=(0.5,),
                              mask_thresholds=(0.5,))


def score(model: Path, test: Path, device: str, cleanup: InstanceConfig | None = None
          ) -> tuple[dict[str, Any], float]:
    """The pooled object scores of ``model`` on ``test`` and the seconds they took."""
    started = time.perf_counter()
    predict_objects, card = objects_of(model, device, cleanup)
    objects = object_class_ids(card.classes, None)
    per_image = []
    for pair in find_pairs(test):
        image = read_image(pair.image)
        ids = encode_mask(read_pair_mask(pair), card.classes)
        truth = pair_instances(pair.mask, pair.stem, ids, objects)
        pred = predict_objects(image)
        ignored = ids == IGNORE_INDEX
        truth[ignored], pred[ignored] = 0, 0
        per_image.append(instance_scores(truth, pred))
    return total_instance_scores(per_image), time.perf_counter() - started


def run_contender(name: str, data: Dataset, out: Path, args: argparse.Namespace
                  ) -> dict[str, Any]:
    cfg = replace(RunConfig(), **{
        "train.time_limit_s": args.budget, "train.epochs": 100_000, "train.device": args.device,
        "train.seed": args.seed, **dict(data.overrides), **CONTENDERS[name]})
    run = out / data.name / ("semantic" if name.startswith("semantic") else name)
    if run not in TRAINED:  # the two semantic contenders share one training run
        started = time.perf_counter()
        result = fit(data.train, run, cfg, show_progress=not args.quiet)
        TRAINED[run] = (result, time.perf_counter() - started)
    result, train_s = TRAINED[run]
    last = result.history[-1]
    post, cleanup = None, None
    if cfg.train.task == "instance":
        from unetseg.modelfile import read_card

        post = read_card(result.best_model).info.get("instance_postprocess")
    elif name == "semantic+cc+size":
        cleanup, post = choose_cleanup(run, data, args.device)
    totals, eval_s = score(result.best_model, data.test, args.device, cleanup)
    return {"contender": name, "dsb_score": totals["dsb_score"], "f1_0.5": totals["f1"][0],
            "precision_0.5": totals["precision"][0], "recall_0.5": totals["recall"][0],
            "pq": totals["pq"], "n_true": totals["n_true"], "n_pred": totals["n_pred"],
            "count_error": totals["count_error"],
            "mean_abs_count_error": totals["mean_abs_count_error"],
            "train_s": train_s, "epochs": int(last["epoch"]), "steps": int(last["step"]),
            "width": _width(result.best_model), "eval_s": eval_s,
            "postprocess": post}


def _width(model: Path) -> int | None:
    from unetseg.modelfile import read_card

    return read_card(model).model.width


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f"{value:.{digits}f}")


def table(data: Dataset, rows: list[dict[str, Any]], budget: float) -> str:
    lines = [f"### {data.name}, {budget:.0f} s of training each", "", data.note, "",
             "| contender | DSB score | F1 @0.5 | precision @0.5 | recall @0.5 | PQ |"
             " objects true / predicted | count error | mean abs. count error per image |"
             " width | epochs | steps | train s | test s |",
             "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['contender']} | {_f(r['dsb_score'])} | {_f(r['f1_0.5'])} |"
            f" {_f(r['precision_0.5'])} | {_f(r['recall_0.5'])} | {_f(r['pq'])} |"
            f" {r['n_true']} / {r['n_pred']} | {r['count_error']:+d} |"
            f" {_f(r['mean_abs_count_error'], 2)} | {r['width']} | {r['epochs']} | {r['steps']} |"
            f" {r['train_s']:.0f} | {r['eval_s']:.0f} |")
    chosen = [r for r in rows if r["postprocess"]]
    if chosen:
        lines += ["", "Post-processing chosen on the validation images: " + "; ".join(
            f"{r['contender']}: mask > {r['postprocess']['mask_threshold']}, seeds >"
            f" {r['postprocess']['seed_threshold']}, min size {r['postprocess']['min_size']}"
            f" (validation DSB {_f(r['postprocess']['dsb_score'])})" for r in chosen) + "."]
    best = max(rows, key=lambda r: r["dsb_score"] if r["dsb_score"] is not None else -1)
    lines += ["", f"Highest DSB score: **{best['contender']}**."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("instances-bench"), help="output folder")
    p.add_argument("--budget", type=float, default=600.0, help="training seconds per contender")
    p.add_argument("--datasets", default="dsb2018", help="comma-separated: dsb2018, isbi2012")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help=f"comma-separated, of {', '.join(CONTENDERS)}")
    p.add_argument("--max-images", type=int, default=None,
                   help="DSB 2018: use only this many images (of a seeded permutation)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="DSB 2018: held out")
    p.add_argument("--seed", type=int, default=0, help="seed of split, training, augmentation")
    p.add_argument("--device", default="cpu", help="training and prediction device")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    tune_allocator()
    contenders = [c for c in args.contenders.split(",") if c]
    unknown = [c for c in contenders if c not in CONTENDERS]
    if unknown:
        raise SystemExit(f"unknown contender {unknown[0]}; choose from {', '.join(CONTENDERS)}")
    sections, results = [], {}
    for name in [d for d in args.datasets.split(",") if d]:
        if name == "dsb2018":
            root = SHARED / "dsb2018"
            if not (root / "instances").is_dir():
                sections.append(f"### dsb2018\n\nskipped: {root} is not present")
                print(sections[-1], flush=True)
                continue
            data = dsb_dataset(root, args.out / "data" / name, args.seed, args.test_fraction,
                               args.max_images)
        elif name == "isbi2012":
            root = SHARED / "isbi2012" / "train"
            if not (root / "images").is_dir():
                sections.append(f"### isbi2012\n\nskipped: {root} is not present")
                print(sections[-1], flush=True)
                continue
            data = isbi_dataset(root, args.out / "data" / name, args.seed)
        else:
            raise SystemExit(f"unknown dataset {name}; use dsb2018 or isbi2012")
        rows = [run_contender(c, data, args.out / "runs", args) for c in contenders]
        results[name] = rows
        sections.append(table(data, rows, args.budget))
        print(sections[-1], flush=True)
    text = "\n\n".join(sections) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(
        {"budget_s": args.budget, "seed": args.seed, "max_images": args.max_images,
         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
