"""The ``unetseg`` command line: ``train``, ``predict``, ``evaluate``, ``demo``.

Each command parses its flags into the same keywords as the Python function it calls
(:func:`unetseg.train.fit.fit`, :func:`unetseg.api.predict`, ...). torch is imported inside the
commands so ``unetseg --help`` answers at once. A :class:`~unetseg.errors.UserError` ends the
command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unetseg.errors import UserError

Command = Callable[[argparse.Namespace], int]


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


# flag -> (dotted RunConfig field, parser, help)
TRAIN_FLAGS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "--epochs": ("train.epochs", int, "training epochs (default 50)"),
    "--batch-size": ("train.batch_size", int, "patches per step (default 4)"),
    "--lr": ("train.lr", float, "peak learning rate (default 1e-3)"),
    "--weight-decay": ("train.weight_decay", float, "weight decay (default 1e-4)"),
    "--optimizer": ("train.optimizer", str, "adamw (default) or sgd"),
    "--scheduler": ("train.scheduler", str, "cosine (default) or constant"),
    "--loss": ("train.loss", str, "dice_ce (default), ce, dice or focal"),
    "--class-weights": ("train.class_weights", _floats, "comma-separated weight per class"),
    "--steps-per-epoch": ("train.steps_per_epoch", int, "default: cover the images once"),
    "--early-stopping": ("train.early_stopping", int, "stop after N epochs without gain"),
    "--time-limit": ("train.time_limit_s", float, "seconds; the schedule is fitted to it"),
    "--seed": ("train.seed", int, "seed of split, sampling and augmentation (default 0)"),
    "--device": ("train.device", str, "auto (default), cpu, cuda, cuda:1, ..."),
    "--width": ("model.width", int, "channels of the first level (default 64)"),
    "--depth": ("model.depth", int, "number of poolings (default 4)"),
    "--padding": ("model.padding", str, "same (default, any size) or valid (the paper)"),
    "--up": ("model.up", str, "transpose (default), bilinear or nearest"),
    "--norm": ("model.norm", str, "batch (default), instance, group or none"),
    "--dropout": ("model.dropout", float, "drop-out at the end of the contracting path"),
    "--patch-size": ("data.patch_size", int, "training crop side in pixels (default 256)"),
    "--val-fraction": ("data.val_fraction", float, "share of pairs held out (default 0.2)"),
    "--classes": ("data.class_values", _ints, "mask values of the classes, e.g. 0,255"),
    "--class-names": ("data.class_names", _names, "names of the classes, e.g. membrane,cell"),
    "--ignore-value": ("data.ignore_value", int, "mask value to ignore, e.g. 11 for CamVid void"),
}


def _add_prediction_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=int, default=None, help="tile side in pixels (default 512)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap (default 0.25)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetseg", description="Train U-Nets, predict images of any size, evaluate.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a U-Net on DATA/images + DATA/masks")
    p.add_argument("data", help="folder with images/ and masks/ (paired by file stem)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--config", help="RunConfig JSON (flags override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on GPUs")
    for flag, (_, kind, text) in TRAIN_FLAGS.items():
        p.add_argument(flag, type=kind, default=None, help=text)
    p.set_defaults(run=_train)

    p = sub.add_parser("predict", help="predict label images for images of any size")
    p.add_argument("model", help="model file (RUN/best.safetensors)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="folder for labels and overlays")
    p.add_argument("--probabilities", action="store_true", help="also write <stem>_probs.tif")
    p.add_argument("--no-overlay", action="store_true", help="skip the overlay PNGs")
    _add_prediction_flags(p)
    p.set_defaults(run=_predict)

    p = sub.add_parser("evaluate", help="score a model on DATA/images + DATA/masks")
    p.add_argument("model", help="model file (RUN/best.safetensors)")
    p.add_argument("data", help="folder with images/ and masks/")
    p.add_argument("--out", default=None, help="folder for metrics.json and per_image.csv")
    _add_prediction_flags(p)
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("demo", help="train, predict and evaluate on bundled ISBI 2012 data")
    p.add_argument("--out", default="unetseg-demo", help="folder for everything (default"
                   " ./unetseg-demo)")
    p.add_argument("--time-budget", type=float, default=420.0, help="training seconds")
    p.add_argument("--device", default="auto")
    p.set_defaults(run=_demo)
    return parser


def run_config_from_args(args: argparse.Namespace) -> Any:
    """A RunConfig from ``--config`` (if any) with every given flag applied on top."""
    from unetseg.config import RunConfig, from_dict, replace

    cfg = RunConfig()
    if args.config:
        path = Path(args.config)
        try:
            cfg = from_dict(RunConfig, json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"{path}: not a readable RunConfig JSON ({exc})") from None
    changes = {key: getattr(args, flag[2:].replace("-", "_"))
               for flag, (key, _, _) in TRAIN_FLAGS.items()}
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.no_amp:
        changes["train.amp"] = False
    return replace(cfg, **changes)


def _train(args: argparse.Namespace) -> int:
    from unetseg.train.fit import fit

    result = fit(args.data, args.out, run_config_from_args(args), resume=args.resume,
                 show_progress=not args.quiet)
    best = max((h for h in result.history if h.get("val_mean_iou") is not None),
               key=lambda h: h["val_mean_iou"], default=None)
    print(f"run folder: {result.run_dir}  (stopped: {result.stopped})")
    if best:
        print(f"best validation mean IoU {best['val_mean_iou']:.4f} at epoch {best['epoch']}")
    print(f"model: {result.best_model}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from unetseg.api import predict

    written = predict(args.model, args.images, args.out, tile=args.tile, overlap=args.overlap,
                      batch_size=args.batch_size, probabilities=args.probabilities,
                      overlays=not args.no_overlay, device=args.device,
                      show_progress=not args.quiet)
    print(f"wrote {len(written)} label image(s) to {args.out}")
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"{'class':<20}{'IoU':>8}{'Dice':>8}{'prec.':>8}{'recall':>8}")
    for name, m in summary["per_class"].items():
        cells = "".join(f"{m[k]:>8.4f}" if m[k] is not None else f"{'-':>8}"
                        for k in ("iou", "dice", "precision", "recall"))
        print(f"{name:<20}{cells}")
    print(f"mean IoU {summary['mean_iou']:.4f}   pixel accuracy {summary['pixel_accuracy']:.4f}")


def _evaluate(args: argparse.Namespace) -> int:
    from unetseg.api import evaluate

    result = evaluate(args.model, args.data, args.out, tile=args.tile, overlap=args.overlap,
                      batch_size=args.batch_size, device=args.device,
                      show_progress=not args.quiet)
    _print_summary(result.summary)
    if args.out:
        print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'per_image.csv'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from unetseg.api import demo

    result = demo(args.out, time_budget_s=args.time_budget, device=args.device,
                  show_progress=not args.quiet)
    _print_summary(result.summary)
    f = result.folder
    print(f"\ndemo finished in {result.seconds:.0f} s; everything is in {f}/")
    for what, path in [("training curves", f / "run" / "curves.png"),
                       ("examples", f / "examples.png"),
                       ("overlays", f / "predictions"),
                       ("metrics", f / "evaluation" / "metrics.json"),
                       ("model", f / "run" / "best.safetensors")]:
        print(f"  {what:<16}{path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unetseg`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from unetseg import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.WARNING, format="unetseg: %(levelname)s: %(message)s")
    from unetseg.runtime import tune_allocator

    tune_allocator()
    try:
        return int(args.run(args))
    except UserError as exc:
        print(f"unetseg: error: {exc}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("unetseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
