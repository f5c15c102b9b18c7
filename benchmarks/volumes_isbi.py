"""2D against 3D on the ISBI 2012 EM stack: unetseg's default 2D recipe and a 3D U-Net, trained
for the same wall-clock budget and scored on the same held-out block of slices.

The 30 labelled slices are consecutive sections of one stack (voxels 50 nm along z, 4 nm
in-plane; ``../shared/data/README.md``). It is split along z into contiguous blocks, so that the
3D model trains and is tested on stacks: slices 0-19 train, 20-24 validate, 25-29 test.

* ``2d``: ``unetseg train`` with zero flags but the budget (:func:`unetseg.train.fit.fit`, its
  plan and width chosen for the budget) on slices 0-24 as images, 20-24 held out for
  validation (``data.val_stems``), the best epoch kept; the test block is predicted slice by
  slice as ``unetseg predict`` does (:func:`~unetseg.infer.volume.predict_volume_logits`).
* ``3d``: :func:`~unetseg.train.volumes.fit_volumes` on two volumes, ``train`` (slices 0-19)
  and ``val`` (20-24, held out), with the spacing 50,4,4: the anisotropic plan (no convolution
  or pooling across slices until the in-plane voxels are coarse enough), patches of about one
  physical extent; epochs of ``--epoch-slices`` slices' voxels, so the budget is checked
  often. The test block is predicted by the 3D sliding window over windows of the training
  patch (what validation chose the best epoch with), overlap 0.5.

Both train for ``--budget`` seconds (``train.time_limit_s``) on the CPU with the same seed per
run; ``--seeds`` repeats both. Scores come from the confusion matrix of the whole test block
(:func:`unetseg.metrics.summarize`): membrane IoU and Dice (membrane, mask value 0, is the
structure of interest), mean IoU over membrane and cell. Writes ``OUT/data`` (the split: ``2d/``
PNG images and masks, ``3d/`` and ``test/`` ``.npy`` volumes), ``OUT/runs/seed-<s>/{2d,3d}``,
``OUT/results.md`` and ``OUT/results.json``, and prints the table.

``--smoke`` checks that the script runs in seconds: slices cropped to 64 x 64, a few seconds of
training, width 4 and a 3D depth of 2; its figures mean nothing.

    python benchmarks/volumes_isbi.py --budget 600 --out volumes-isbi
    python benchmarks/volumes_isbi.py --budget 300 --seeds 0,1,2 --out volumes-isbi-seeds
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from unetseg.config import RunConfig, replace
from unetseg.runtime import tune_allocator

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012" / "train"
SPACING = (50.0, 4.0, 4.0)
"""ISBI 2012's voxel size (z, y, x) in nm."""
BLOCKS = {"train": range(0, 20), "val": range(20, 25), "test": range(25, 30)}
CLASS_VALUES, CLASS_NAMES = (0, 255), ("membrane", "cell")
METHODS = ("2d", "3d")


def read_stack(data: Path, crop: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The labelled slices of ``data`` (``images/`` and ``masks/`` PNGs, sorted by name) as
    ``(D, H, W)`` uint8 image and mask stacks (the top-left ``crop`` x ``crop`` of each with
    ``crop``) and their stems."""
    stems = sorted(p.stem for p in (data / "images").glob("*.png"))
    need = max(r.stop for r in BLOCKS.values())
    if len(stems) < need:
        raise SystemExit(f"{data}: expected the {need} ISBI 2012 training slices, found"
                         f" {len(stems)}; give --data the isbi2012/train folder")
    window = np.s_[:crop, :crop] if crop else np.s_[:, :]

    def stack(sub: str) -> np.ndarray:
        return np.stack([np.asarray(Image.open(data / sub / f"{s}.png").convert("L"))[window]
                         for s in stems])

    return stack("images"), stack("masks"), stems


def build_split(data: Path, out: Path, crop: int | None = None) -> dict[str, Any]:
    """Write the z split of :data:`BLOCKS` under ``out``:

    * ``2d/images``, ``2d/masks``: the train and val slices as PNGs (their own stems);
    * ``3d/images``, ``3d/masks``: ``train.npy`` and ``val.npy`` stacks ``(D, H, W)``;
    * ``test/images/test.npy``, ``test/masks/test.npy``: the test block.

    Returns the folders, the 2D validation stems and each block's source stems.
    """
    images, masks, stems = read_stack(data, crop)
    for part in ("2d", "3d", "test"):
        for sub in ("images", "masks"):
            (out / part / sub).mkdir(parents=True, exist_ok=True)
    for name in ("train", "val"):
        for z in BLOCKS[name]:
            Image.fromarray(images[z]).save(out / "2d" / "images" / f"{stems[z]}.png")
            Image.fromarray(masks[z]).save(out / "2d" / "masks" / f"{stems[z]}.png")
    for folder, name in (("3d", "train"), ("3d", "val"), ("test", "test")):
        block = list(BLOCKS[name])
        np.save(out / folder / "images" / f"{name}.npy", images[block])
        np.save(out / folder / "masks" / f"{name}.npy", masks[block])
    return {"2d": out / "2d", "3d": out / "3d", "test": out / "test",
            "val_stems": tuple(stems[z] for z in BLOCKS["val"]),
            "blocks": {k: [stems[z] for z in r] for k, r in BLOCKS.items()}}


def volume_patch(shape: tuple[int, int, int], depth: int) -> tuple[int, int, int]:
    """The training patch :func:`~unetseg.train.volumes.fit_volumes` plans for volumes of
    ``shape`` at :data:`SPACING` and network ``depth``."""
    from unetseg.model import UNet
    from unetseg.model.geometry import anisotropic_plan
    from unetseg.train.volumes import plan_patch

    kernels, pools = anisotropic_plan(SPACING, depth)
    with torch.device("meta"):
        multiple = UNet(1, 2, depth=depth, width=1, spatial_dims=3, kernel_sizes=kernels,
                        pool_sizes=pools).size_multiple
    return plan_patch(shape, SPACING, multiple)


def base_config(args: argparse.Namespace, seed: int) -> RunConfig:
    changes: dict[str, Any] = {"train.time_limit_s": args.budget, "train.epochs": 100_000,
                               "train.device": "cpu", "train.seed": seed,
                               "data.class_values": CLASS_VALUES,
                               "data.class_names": CLASS_NAMES}
    if args.width:
        changes["model.width"] = args.width
    return replace(RunConfig(), **changes)


def train_2d(split: dict[str, Any], out: Path, args: argparse.Namespace, seed: int
             ) -> dict[str, Any]:
    from unetseg.train.fit import fit

    cfg = replace(base_config(args, seed), **{"data.val_stems": split["val_stems"]})
    began = time.perf_counter()
    result = fit(split["2d"], out, cfg, show_progress=not args.quiet)
    last = result.history[-1]
    return {"model": result.best_model, "train_s": time.perf_counter() - began,
            "epochs": int(last["epoch"]), "steps": int(last["step"]), "tile": None}


def train_3d(split: dict[str, Any], out: Path, args: argparse.Namespace, seed: int
             ) -> dict[str, Any]:
    from unetseg.modelfile import load_model
    from unetseg.train.volumes import fit_volumes

    cfg = replace(base_config(args, seed), **{"data.val_stems": ("val",),
                                              "model.depth": args.depth_3d})
    val = np.load(split["3d"] / "images" / "val.npy", mmap_mode="r")
    patch = volume_patch(val.shape, args.depth_3d)
    steps = max(1, math.ceil(args.epoch_slices * val.shape[1] * val.shape[2]
                             / (math.prod(patch) * cfg.train.batch_size)))
    cfg = replace(cfg, **{"train.steps_per_epoch": steps})
    began = time.perf_counter()
    result = fit_volumes(split["3d"], out, cfg, spacing=SPACING, show_progress=not args.quiet)
    train_s = time.perf_counter() - began
    _, card = load_model(result.best_model)
    last = result.history[-1]
    return {"model": result.best_model, "train_s": train_s, "epochs": int(last["epoch"]),
            "steps": int(last["step"]), "tile": tuple(card.info["patch"])}


def score_block(model: Path, test: Path, tile: tuple[int, int, int] | None
                ) -> dict[str, Any]:
    """Predict ``test``'s block with ``model`` (a 2D model slice by slice, a 3D model with the
    sliding window over ``tile``) and score it: :func:`unetseg.metrics.summarize` of the
    block's confusion matrix, and the prediction's seconds."""
    from unetseg.infer.volume import predict_volume_logits, volume_to_float
    from unetseg.metrics import confusion_matrix, summarize
    from unetseg.modelfile import load_model

    net, card = load_model(model)
    image = np.load(test / "images" / "test.npy")[None]
    truth = card.classes.encode(np.load(test / "masks" / "test.npy"), str(test / "masks"))
    began = time.perf_counter()
    logits = predict_volume_logits(net, card.stats, volume_to_float(image), tile=tile,
                                   overlap=0.5)
    seconds = time.perf_counter() - began
    cm = confusion_matrix(logits.argmax(0), torch.as_tensor(truth).long(),
                          card.classes.num_classes)
    return {**summarize(cm, card.classes.names), "predict_s": seconds}


def run(args: argparse.Namespace) -> dict[str, Any]:
    split = build_split(args.data, args.out / "data", args.crop)
    rows = []
    for seed in args.seeds:
        for method in args.methods:
            train = train_2d if method == "2d" else train_3d
            trained = train(split, args.out / "runs" / f"seed-{seed}" / method, args, seed)
            scores = score_block(trained["model"], split["test"], trained["tile"])
            membrane = scores["per_class"]["membrane"]
            rows.append({"method": method, "seed": seed, "train_s": trained["train_s"],
                         "epochs": trained["epochs"], "steps": trained["steps"],
                         "tile": trained["tile"], "membrane_iou": membrane["iou"],
                         "membrane_dice": membrane["dice"], "mean_iou": scores["mean_iou"],
                         "pixel_accuracy": scores["pixel_accuracy"],
                         "predict_s": scores["predict_s"], "model": str(trained["model"])})
            print(f"seed {seed} {method}: membrane IoU {membrane['iou']:.4f}")
    return {"settings": {"budget_s": args.budget, "seeds": args.seeds, "width": args.width,
                         "depth_3d": args.depth_3d, "epoch_slices": args.epoch_slices,
                         "crop": args.crop, "smoke": args.smoke, "spacing": SPACING,
                         "blocks": split["blocks"], "torch_threads": torch.get_num_threads()},
            "rows": rows}


METRICS = (("membrane_iou", "membrane IoU"), ("membrane_dice", "membrane Dice"),
           ("mean_iou", "mean IoU"))


def table(results: dict[str, Any]) -> str:
    """The Markdown report: one row per run, then each method's mean ± sd over the seeds."""
    s = results["settings"]
    blocks = s["blocks"]
    side = f"{s['crop']} x {s['crop']} crops of the" if s["crop"] else "the 512 x 512"
    lines = [f"ISBI 2012 stack, {side} slices, split along z: train {blocks['train'][0]}-"
             f"{blocks['train'][-1]}, validate {blocks['val'][0]}-{blocks['val'][-1]}, test"
             f" {blocks['test'][0]}-{blocks['test'][-1]}; {s['budget_s']:.0f} s of training"
             f" per run on the CPU ({s['torch_threads']} torch threads), width"
             f" {s['width'] or 'each default'}, 3D depth {s['depth_3d']} on spacing 50,4,4 nm."
             + (" SMOKE: toy sizes, figures mean nothing." if s["smoke"] else ""), "",
             "| method | seed | train s | epochs | steps | window | membrane IoU |"
             " membrane Dice | mean IoU | predict s |", "|---|---:|---:|---:|---:|---|"
             + "---:|" * 4]
    for r in results["rows"]:
        window = "slice by slice" if r["tile"] is None else "x".join(map(str, r["tile"]))
        lines.append(f"| {r['method']} | {r['seed']} | {r['train_s']:.0f} | {r['epochs']} |"
                     f" {r['steps']} | {window} | {r['membrane_iou']:.4f} |"
                     f" {r['membrane_dice']:.4f} | {r['mean_iou']:.4f} | {r['predict_s']:.1f} |")
    methods = list(dict.fromkeys(r["method"] for r in results["rows"]))
    if len(s["seeds"]) > 1:
        lines += ["", "| method | runs | " + " | ".join(f"{t} (mean ± sd)" for _, t in METRICS)
                  + " |", "|---|---:|" + "---:|" * len(METRICS)]
        for m in methods:
            mine = [r for r in results["rows"] if r["method"] == m]
            cells = [f"{statistics.fmean(r[k] for r in mine):.4f} ±"
                     f" {statistics.stdev(r[k] for r in mine):.4f}" for k, _ in METRICS]
            lines.append(f"| {m} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help=f"ISBI 2012 train folder ({DATA})")
    p.add_argument("--out", type=Path, default=Path("volumes-isbi"), help="output folder")
    p.add_argument("--budget", type=float, default=600.0, help="training seconds per run")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (0)")
    p.add_argument("--methods", default=",".join(METHODS), help="2d, 3d or both")
    p.add_argument("--width", type=int, default=None,
                   help="first-level channels of both (default: each one's own)")
    p.add_argument("--depth-3d", type=int, default=4, help="poolings of the 3D U-Net (4)")
    p.add_argument("--epoch-slices", type=float, default=4.0,
                   help="a 3D epoch samples as many voxels as this many slices hold (4)")
    p.add_argument("--crop", type=int, default=None, help="top-left crop of every slice")
    p.add_argument("--smoke", action="store_true", help="toy sizes: checks that it runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if any(m not in METHODS for m in args.methods):
        raise SystemExit(f"--methods {','.join(args.methods)}: choose from {', '.join(METHODS)}")
    if args.smoke:
        args.budget, args.width, args.depth_3d, args.crop = 1.0, 4, 2, 64
        args.epoch_slices, args.quiet = 1.0, True
    if not (args.data / "images").is_dir():
        raise SystemExit(f"{args.data}: no images/ folder; give --data the ISBI 2012 train"
                         " folder (../shared/data/isbi2012/train)")
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out}: not empty; choose another --out")
    tune_allocator()  # as the command line does
    results = run(args)
    text = table(results)
    print(text)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
