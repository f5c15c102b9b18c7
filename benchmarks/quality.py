"""Segmentation quality against the peers, each trained for the same wall-clock budget.

One command trains and evaluates, under the same budget, data split, augmentation, schedule
and seed (the only differences are named in the model column):

* ``unetseg-default``: ``unetseg train`` with zero flags but the budget (its width is planned
  from the budget and the device, :mod:`unetseg.train.plan`).
* ``unetseg-best``: the same model, predicted with dihedral test-time augmentation
  (``--tta d4``), which is what unetseg recommends when quality matters more than speed.
* ``monai-basicunet``: MONAI's BasicUNet in unetseg's pipeline (unetseg's Dice + CE loss).
* ``monai-basicunet+dicece``: the same with MONAI's own ``DiceCELoss`` (:mod:`peers`).
* ``fepegar-unet2d``: fepegar's ``UNet2D`` (64 channels first, batch norm) in unetseg's pipeline.
* ``monai-basicunet-plain`` (not run unless named): BasicUNet trained the plain way, outside
  unetseg's pipeline (:mod:`plain_peer`: random crops, flips and quarter turns, DiceCELoss,
  AdamW at 1e-3, input / 255, no validation, last weights), the reference of DSB 2018.

Not run unless named in ``--models``: ``unetseg-batch`` and ``unetseg-group``, the default with
batch norm (the default before instance norm) or group norm, and ``unetseg-dataset-norm``, the
default with one z-score for the data set whatever the plan says (on DSB 2018 the plan picks
per-image normalisation). A contender's set fields are kept by the plan.

The built-in variants (``--arch``, :mod:`unetseg.model.variants`), each in the default's
pipeline with its own default or planned width, are named ``unetseg-residual``,
``unetseg-attention``, ``unetseg-nested`` (U-Net++ with its deep supervision),
``unetseg-resnet18``, ``unetseg-resnet34``, ``unetseg-resnet50`` (encoders trained from
scratch: nothing is downloaded) and ``unetseg-ds`` (the default with deep supervision);
``--models variants`` names them all, ``--models default,variants`` adds the default.

The automated recipe (``--models automation``, with the default beside it):
``unetseg-5fold`` (``train --folds 5`` under the same total budget, so each fold gets about a
fifth, scored as the ensemble of the five fold models), ``unetseg-5fold+post`` (the same
ensemble with the post-processing the run chose on its held-out folds), and each of the three
at five times the budget (``unetseg-default-5x``, ``unetseg-5fold-5x``,
``unetseg-5fold+post-5x``).

Datasets (``../shared/data``; each skipped with a note when absent):

* ISBI 2012: a seeded 24/6 split of the 30 labelled slices (the split of ``isbi2012.py``);
  membrane IoU, mean IoU, and the challenge's pixel, Rand and warping errors (best over
  thresholds of the cell probability).
* CamVid (11 classes, void ignored): train on ``train/`` (367), evaluate on ``val/`` (81):
  mean IoU over the 11 classes, per-class IoU and pixel accuracy.
* DSB 2018 (nuclei, semantic masks): a split of the 506 images seeded by the training seed,
  405 to train and 101 to test; nuclei IoU and Dice, mean IoU and pixel accuracy.

Each training run validates on a seeded fifth of its training images and keeps the best
epoch; the test images are seen only by the final evaluation. Writes ``OUT/results.md`` (one
table per dataset and run), ``OUT/results.json`` and ``OUT/curves-<dataset>.png`` (validation
mean IoU against training seconds), and prints the tables.

One run is noisy: under a time budget the number of steps follows from a timed step, so the
crops, augmentation draws and schedule differ between two runs of the same seed. ``--seeds``
repeats every model with several training seeds, and ``--folds 5`` turns ISBI 2012's single
24/6 split into a 5-fold cross-validation (CamVid keeps its fixed train/val split). With more
than one run, a summary table gives each model's mean and sample standard deviation over the
runs, every run's headline figure, and in how many runs the model led it.

Usage::

    python benchmarks/quality.py --budget 600 --out quality-bench
    python benchmarks/quality.py --datasets camvid --seeds 1,2,3 --out quality-seeds
    python benchmarks/quality.py --models default,variants --folds 5 --datasets isbi2012 \
        --out variants-isbi
    python benchmarks/quality.py --models unetseg-default,monai-basicunet --datasets dsb2018 \
        --seeds 0,1,2 --out dsb-seeds
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from isbi2012 import split as isbi_split
from peers import monai_dice_ce, register_peers
from plain_peer import score_plain, train_plain_basicunet

from unetseg.api import evaluate
from unetseg.config import RunConfig, replace
from unetseg.runtime import tune_allocator
from unetseg.train.fit import fit

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
                  "Car", "Pedestrian", "Bicyclist")


@dataclass(frozen=True)
class Model:
    """One contender: architecture, loss override, and test-time augmentation."""

    name: str
    arch: str = "unet"
    loss: Callable[[], Any] | None = None
    tta: str | None = None
    trained_as: str | None = None  # reuse the run of another contender (same training)
    overrides: tuple[tuple[str, Any], ...] = ()  # config fields set, kept by the plan
    folds: int | None = None  # train --folds K: scored as the ensemble of the fold models
    postprocess: bool = False  # with folds: apply the post-processing the run chose
    budget_scale: float = 1.0  # this many times --budget (of the whole run, folds included)
    plain: bool = False  # trained and scored by plain_peer, outside unetseg's pipeline


MODELS = {m.name: m for m in (
    Model("unetseg-default"),
    Model("unetseg-best", tta="d4", trained_as="unetseg-default"),
    Model("monai-basicunet", arch="monai-basicunet"),
    Model("monai-basicunet+dicece", arch="monai-basicunet", loss=monai_dice_ce),
    Model("fepegar-unet2d", arch="fepegar-unet2d"),
)}
EXTRA_MODELS = {m.name: m for m in (
    Model("unetseg-batch", overrides=(("model.norm", "batch"),)),
    Model("unetseg-group", overrides=(("model.norm", "group"),)),
    Model("monai-basicunet-plain", arch="monai-basicunet", plain=True),
    Model("unetseg-dataset-norm", overrides=(("data.normalization", "dataset"),)),
)}
VARIANT_MODELS = {m.name: m for m in (
    Model("unetseg-residual", arch="residual"),
    Model("unetseg-attention", arch="attention"),
    Model("unetseg-nested", arch="nested", overrides=(("model.deep_supervision", True),)),
    Model("unetseg-resnet18", arch="resnet18"),
    Model("unetseg-resnet34", arch="resnet34"),
    Model("unetseg-resnet50", arch="resnet50"),
    Model("unetseg-ds", overrides=(("model.deep_supervision", True),)),
)}
AUTOMATION_MODELS = {m.name: m for m in (
    Model("unetseg-5fold", folds=5),
    Model("unetseg-5fold+post", folds=5, postprocess=True, trained_as="unetseg-5fold"),
    Model("unetseg-default-5x", budget_scale=5.0),
    Model("unetseg-5fold-5x", folds=5, budget_scale=5.0),
    Model("unetseg-5fold+post-5x", folds=5, postprocess=True, budget_scale=5.0,
          trained_as="unetseg-5fold-5x"),
)}
GROUPS = {"default": ["unetseg-default"], "variants": list(VARIANT_MODELS),
          "automation": ["unetseg-default", *AUTOMATION_MODELS]}
"""Names that ``--models`` expands to several contenders."""


def model_names(text: str) -> list[str]:
    """The contenders ``--models`` names, groups expanded, each once in order."""
    names: list[str] = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        names += [m for m in GROUPS.get(name, [name]) if m not in names]
    return names


@dataclass
class Dataset:
    name: str
    train: Path
    test: Path
    config: RunConfig
    kind: str  # "isbi2012", "camvid" or "dsb2018": which metrics the tables show
    seed: int = 0
    fold: int | None = None  # ISBI 2012 cross-validation fold; None for a fixed split
    notes: list[str] = field(default_factory=list)

    @property
    def isbi(self) -> bool:
        return self.kind == "isbi2012"

    @property
    def run_name(self) -> str:
        """The run's folder and label: ``seed0`` or ``seed0-fold3``."""
        return f"seed{self.seed}" + ("" if self.fold is None else f"-fold{self.fold}")


def isbi_dataset(root: Path, out: Path, split_seed: int, seed: int, fold: int | None
                 ) -> Dataset:
    train, test, stems = isbi_split(root / "train", out / f"isbi2012-data-fold{fold or 0}",
                                    split_seed, fold or 0)
    cfg = replace(RunConfig(), **{"data.class_values": (0, 255),
                                  "data.class_names": ("membrane", "cell")})
    where = "seeded 24/6 split" if fold is None else f"fold {fold} of a seeded 5-fold split"
    return Dataset("isbi2012", train, test, cfg, "isbi2012", seed, fold,
                   [f"{where}, test slices {', '.join(stems)}"])


def camvid_dataset(root: Path, seed: int) -> Dataset:
    cfg = replace(RunConfig(), **{"data.class_values": tuple(range(11)),
                                  "data.class_names": CAMVID_CLASSES, "data.ignore_value": 11})
    return Dataset("camvid", root / "train", root / "val", cfg, "camvid", seed, None,
                   ["train 367, evaluated on val (81), class 11 (void) ignored"])


def dsb_dataset(root: Path, out: Path, seed: int, test_fraction: float = 0.2) -> Dataset:
    """DSB 2018 nuclei (semantic masks): a split seeded by ``seed``, linked into ``out``."""
    stems = sorted(p.stem for p in (root / "images").glob("*.png"))
    order = np.random.default_rng(seed).permutation(len(stems))
    n_test = max(1, round(len(stems) * test_fraction))
    test = {stems[i] for i in order[:n_test]}
    base = out / f"dsb2018-data-seed{seed}"
    for stem in stems:
        part = "test" if stem in test else "train"
        for sub in ("images", "masks"):
            link = base / part / sub / f"{stem}.png"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(root / sub / f"{stem}.png", link)
    cfg = replace(RunConfig(), **{"data.class_values": (0, 1),
                                  "data.class_names": ("background", "nuclei")})
    return Dataset("dsb2018", base / "train", base / "test", cfg, "dsb2018", seed, None,
                   [f"{len(stems) - n_test} training and {n_test} test images of {len(stems)},"
                    f" split seeded by the seed"])


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def plain_row(model: Model, data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Train and score :mod:`plain_peer`'s BasicUNet (DSB 2018 only): a row of the table."""
    if data.kind != "dsb2018":
        raise SystemExit(f"{model.name}: DSB 2018 only (its masks are 0/1 foreground)")
    cpu = cpu_seconds()
    run = train_plain_basicunet(data.train, args.budget * model.budget_scale, data.seed)
    cpu = cpu_seconds() - cpu
    began = time.perf_counter()
    s = score_plain(run["model"], data.test, data.config.data.class_names)
    return {"model": model.name, "seed": data.seed, "fold": data.fold,
            "train_s": round(run["train_s"], 1), "cpu_util": round(cpu / run["train_s"], 2),
            "epochs": 1, "steps": run["steps"], "images_seen": run["images_seen"],
            "best_epoch": 1, "width": 32, "top_width": None, "mean_iou": s["mean_iou"],
            "pixel_accuracy": s["pixel_accuracy"],
            "per_class_iou": {k: v["iou"] for k, v in s["per_class"].items()},
            "nuclei_iou": s["per_class"]["nuclei"]["iou"],
            "nuclei_dice": s["per_class"]["nuclei"]["dice"],
            "eval_s": round(time.perf_counter() - began, 1), "tta": None, "history": [],
            "postprocessing": None}


def train_and_score(model: Model, data: Dataset, out: Path, args: argparse.Namespace,
                    runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if model.plain:
        return plain_row(model, data, args)
    source = model.trained_as or model.name
    if source not in runs:
        cfg = replace(data.config, **{"train.time_limit_s": args.budget * model.budget_scale,
                                      "train.epochs": 100_000, "train.seed": data.seed,
                                      "train.device": "cpu", "model.arch": model.arch,
                                      **dict(model.overrides)})
        wall, cpu = time.perf_counter(), cpu_seconds()
        result = fit(data.train, out / source, cfg, show_progress=not args.quiet,
                     loss_fn=model.loss() if model.loss else None, folds=model.folds,
                     fixed=[k for k, _ in model.overrides])
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        first = out / source / ("fold-0" if model.folds else "")
        model_cfg = json.loads((first / "config.json").read_text())["run"]["model"]
        runs[source] = {"result": result, "wall_s": wall, "cpu_util": cpu / wall,
                        "width": model_cfg["width"], "top_width": model_cfg.get("top_width"),
                        "history": _histories(out / source, model.folds)}
    run = runs[source]
    if model.folds:  # the fold models' average; with their chosen post-processing or without
        members = [out / source / f"fold-{k}" / "best.safetensors" for k in range(model.folds)]
        predicted: Any = out / source if model.postprocess else members
    else:
        predicted = run["result"].best_model
    began = time.perf_counter()
    ev = evaluate(predicted, data.test, out / f"eval-{model.name}", device="cpu",
                  tta=model.tta, isbi=data.isbi, show_progress=not args.quiet)
    s = ev.summary
    histories = run["history"]
    last = [h[-1] for h in histories]
    best = max(histories[0], key=lambda r: r["val_mean_iou"] or -1.0)
    row: dict[str, Any] = {
        "model": model.name, "seed": data.seed, "fold": data.fold,
        "train_s": round(run["wall_s"], 1), "cpu_util": round(run["cpu_util"], 2),
        "epochs": sum(int(r["epoch"]) for r in last),
        "steps": sum(int(r["step"]) for r in last),
        "images_seen": sum(int(r["images_seen"]) for r in last),
        "best_epoch": int(best["epoch"]), "width": run["width"], "top_width": run["top_width"],
        "mean_iou": s["mean_iou"], "pixel_accuracy": s["pixel_accuracy"],
        "per_class_iou": {k: v["iou"] for k, v in s["per_class"].items()},
        "eval_s": round(time.perf_counter() - began, 1), "tta": model.tta,
        "history": [{"elapsed_s": r["elapsed_s"], "val_mean_iou": r["val_mean_iou"]}
                    for r in histories[0]],
        "postprocessing": s.get("postprocessing"),
    }
    if data.kind == "dsb2018":
        row.update(nuclei_iou=s["per_class"]["nuclei"]["iou"],
                   nuclei_dice=s["per_class"]["nuclei"]["dice"])
    if data.isbi:
        row.update(membrane_iou=s["per_class"]["membrane"]["iou"],
                   pixel_error=s["isbi"]["pixel_error"]["value"],
                   rand_error=s["isbi"]["rand_error"]["value"],
                   warping_error=s["isbi"]["warping_error"]["value"])
    return row


def _histories(run_dir: Path, folds: int | None) -> list[list[dict[str, Any]]]:
    """Each training run's metrics rows (one run, or one per fold), numbers as numbers."""
    def number(v: str) -> Any:
        try:
            return float(v)
        except ValueError:
            return None
    dirs = [run_dir] if not folds else [run_dir / f"fold-{k}" for k in range(folds)]
    out = []
    for d in dirs:
        with open(d / "metrics.csv", newline="") as f:
            out.append([{k: number(v) for k, v in row.items()} for row in csv.DictReader(f)])
    return out


def _f(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _widths(row: dict[str, Any]) -> str:
    if not row["width"]:
        return ""
    top = row.get("top_width")
    return f" (w{row['width']}" + (f", first level {top})" if top else ")")


def table(data: Dataset, rows: list[dict[str, Any]], budget: float) -> str:
    head = ["model", "train s (CPU util)", "epochs", "images seen"]
    if data.kind == "isbi2012":
        head += ["membrane IoU", "mean IoU", "pixel error", "Rand error", "warping error"]
    elif data.kind == "dsb2018":
        head += ["nuclei IoU", "nuclei Dice", "mean IoU", "pixel acc"]
    else:
        head += ["mean IoU (11)", "pixel acc", *CAMVID_CLASSES]
    notes = "; ".join([f"training seed {data.seed}", *data.notes])
    lines = [f"### {data.name}: {budget:.0f} s of training per model ({notes})",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"] + _widths(r),
                 f"{r['train_s']:.0f} ({r['cpu_util']:.2f})", str(r["epochs"]),
                 str(r["images_seen"])]
        if data.kind == "isbi2012":
            cells += [_f(r["membrane_iou"]), _f(r["mean_iou"]), _f(r["pixel_error"]),
                      _f(r["rand_error"]), _f(r["warping_error"], 6)]
        elif data.kind == "dsb2018":
            cells += [_f(r["nuclei_iou"]), _f(r["nuclei_dice"]), _f(r["mean_iou"]),
                      _f(r["pixel_accuracy"])]
        else:
            cells += [_f(r["mean_iou"]), _f(r["pixel_accuracy"]),
                      *(_f(r["per_class_iou"][c], 3) for c in CAMVID_CLASSES)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


HEADLINES = {  # dataset kind -> (row key, column title); the first is higher-is-better
    "isbi2012": (("membrane_iou", "membrane IoU"), ("mean_iou", "mean IoU"),
                 ("pixel_error", "pixel error"), ("rand_error", "Rand error"),
                 ("warping_error", "warping error")),
    "camvid": (("mean_iou", "mean IoU (11)"), ("pixel_accuracy", "pixel acc")),
    "dsb2018": (("nuclei_iou", "nuclei IoU"), ("nuclei_dice", "nuclei Dice"),
                ("mean_iou", "mean IoU"), ("pixel_accuracy", "pixel acc")),
}


def summarise(runs: list[list[dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    """Each model's mean, sample standard deviation and values of the headline figures.

    ``runs`` holds one list of rows per run (seed or fold), every run with the same models.
    ``led`` counts the runs in which the model had the best first headline figure (mean IoU
    or membrane IoU), ties counting for each model that reached it.
    """
    metrics = HEADLINES[kind]
    key, _ = metrics[0]
    best_per_run = [max(r[key] for r in rows) for rows in runs]
    summary = []
    for name in [r["model"] for r in runs[0]]:
        mine = [next(r for r in rows if r["model"] == name) for rows in runs]
        entry: dict[str, Any] = {
            "model": name, "runs": len(mine),
            "epochs": statistics.fmean(r["epochs"] for r in mine),
            "led": sum(r[key] >= best for r, best in zip(mine, best_per_run, strict=True))}
        for k, _ in metrics:
            values = [r[k] for r in mine]
            entry[k] = {"mean": statistics.fmean(values), "values": values,
                        "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
        summary.append(entry)
    return summary


def summary_table(name: str, summary: list[dict[str, Any]], kind: str, budget: float,
                  runs: list[str]) -> str:
    metrics = HEADLINES[kind]
    key, title = metrics[0]
    digits = {"warping_error": 6}
    head = ["model", "runs", "mean epochs", *(f"{t} (mean ± sd)" for _, t in metrics),
            f"{title} per run", "runs led"]
    lines = [f"### {name}: mean ± sample sd over {len(runs)} runs of {budget:.0f} s per model"
             f" ({', '.join(runs)})", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        cells = [e["model"], str(e["runs"]), f"{e['epochs']:.1f}"]
        for k, _ in metrics:
            d = digits.get(k, 4)
            cells.append(f"{e[k]['mean']:.{d}f} ± {e[k]['sd']:.{d}f}")
        cells += [", ".join(f"{v:.4f}" for v in e[key]["values"]), f"{e['led']}/{e['runs']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(name: str, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    colours: dict[str, Any] = {}
    several = len({(r["seed"], r["fold"]) for r in rows}) > 1
    for r in rows:
        if r["tta"]:
            continue  # the same training curve as the model it was trained as
        xs = [h["elapsed_s"] for h in r["history"]]
        ys = [h["val_mean_iou"] for h in r["history"]]
        first = r["model"] not in colours
        (line,) = ax.plot(xs, ys, marker=".", color=colours.get(r["model"]),
                          alpha=0.6 if several else 1.0, label=r["model"] if first else None)
        colours.setdefault(r["model"], line.get_color())
    runs = " (one line per run)" if several else ""
    ax.set(xlabel="training seconds", ylabel="validation mean IoU",
           title=f"{name}: validation during training{runs}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=600.0,
                   help="training seconds per model and dataset (default 600)")
    p.add_argument("--out", type=Path, default=Path("quality-bench"), help="output folder")
    p.add_argument("--datasets", default="isbi2012,camvid",
                   help="comma-separated, of isbi2012, camvid, dsb2018")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, of "
                   + ", ".join({**MODELS, **EXTRA_MODELS, **VARIANT_MODELS,
                                **AUTOMATION_MODELS})
                   + f", or the groups {', '.join(GROUPS)} (default {', '.join(MODELS)})")
    p.add_argument("--data", type=Path, default=SHARED, help=f"shared data folder ({SHARED})")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    p.add_argument("--folds", type=int, default=1, choices=(1, 5),
                   help="ISBI 2012: 1 (one 24/6 split) or 5 (5-fold cross-validation)")
    p.add_argument("--split-seed", type=int, default=0, help="ISBI 2012 split's seed (0)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    tune_allocator()  # as the command line does, for every model
    names = model_names(args.models)
    known = {**MODELS, **EXTRA_MODELS, **VARIANT_MODELS, **AUTOMATION_MODELS}
    unknown = [m for m in names if m not in known]
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]}; choose from {', '.join(known)}")
    try:
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise SystemExit(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2")
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out}: not empty; choose another --out")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    register_peers()
    folds: list[int | None] = [None] if args.folds == 1 else list(range(args.folds))
    builders: dict[str, Callable[[int, int | None], Dataset]] = {
        "isbi2012": lambda seed, fold: isbi_dataset(args.data / "isbi2012", args.out,
                                                    args.split_seed, seed, fold),
        "camvid": lambda seed, fold: camvid_dataset(args.data / "camvid", seed),
        "dsb2018": lambda seed, fold: dsb_dataset(args.data / "dsb2018", args.out, seed)}
    sections, results, summaries = [], {}, {}
    for name in [d for d in args.datasets.split(",") if d]:
        if name not in builders:
            raise SystemExit(f"unknown dataset {name}; choose from {', '.join(builders)}")
        if not (args.data / name).is_dir():
            print(f"{name}: {args.data / name} not found; skipped")
            continue
        runs, labels = [], []
        for seed in seeds:
            for fold in folds if name == "isbi2012" else [None]:
                data = builders[name](seed, fold)
                trained: dict[str, dict[str, Any]] = {}
                out = args.out / name / data.run_name
                runs.append([train_and_score(known[m], data, out, args, trained) for m in names])
                labels.append(data.run_name)
                sections.append(table(data, runs[-1], args.budget))
                print(sections[-1] + "\n", flush=True)
        rows = [r for run in runs for r in run]
        plot(name, rows, args.out / f"curves-{name}.png")
        results[name] = rows
        if len(runs) > 1:
            summaries[name] = summarise(runs, name)
            sections.append(summary_table(name, summaries[name], name, args.budget, labels))
            print(sections[-1] + "\n", flush=True)
    text = (f"Quality benchmark: CPU, {torch.get_num_threads()} torch threads"
            f" ({os.cpu_count()} CPUs), training seeds {', '.join(map(str, seeds))}; every model"
            " runs in unetseg's pipeline (same data, augmentation, AdamW + cosine schedule fitted"
            " to the budget, best validation epoch kept). Errors: lower is better.\n\n"
            + "\n\n".join(sections) + "\n")
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(
        {"budget_s": args.budget, "seeds": seeds, "folds": args.folds,
         "split_seed": args.split_seed, "threads": torch.get_num_threads(),
         "results": results, "summary": summaries}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
