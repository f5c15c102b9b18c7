"""The ``unetseg`` command line: ``train``, ``predict``, ``evaluate``, ``check``, ``demo``, ...

Each command parses its flags into the same keywords as the Python function it calls
(:func:`unetseg.train.fit.fit`, :func:`unetseg.api.predict`, ...). torch is imported inside the
commands so ``unetseg --help`` answers at once. A :class:`~unetseg.errors.UserError` ends the
command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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


def _ignore_value(text: str) -> int:
    """A mask value (``11``), or a colour (``0,0,0`` or ``#000000``) packed as
    ``R*65536 + G*256 + B`` for colour masks."""
    t = text.strip()
    try:
        if t.startswith("#") and len(t) == 7:
            return int(t[1:], 16)
        parts = [int(v) for v in t.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a value (11) or a colour (0,0,0 or"
                                         " #000000)") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 3 and all(0 <= v <= 255 for v in parts):
        return (parts[0] << 16) | (parts[1] << 8) | parts[2]
    raise argparse.ArgumentTypeError(f"{text!r} is not a value (11) or a colour (0,0,0)")


# flag -> (dotted RunConfig field, parser, help)
TRAIN_FLAGS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "--epochs": ("train.epochs", int, "training epochs (default 50)"),
    "--batch-size": ("train.batch_size", int, "patches per step (default 4)"),
    "--lr": ("train.lr", float, "peak learning rate (default 1e-3)"),
    "--weight-decay": ("train.weight_decay", float, "weight decay (default 1e-4)"),
    "--optimizer": ("train.optimizer", str, "adamw (default) or sgd"),
    "--scheduler": ("train.scheduler", str, "cosine (default) or constant"),
    "--loss": ("train.loss", str, "dice_ce (default), ce, dice, focal or weighted-ce (the"
               " paper's border weight map)"),
    "--class-weights": ("train.class_weights", _floats, "comma-separated weight per class"),
    "--steps-per-epoch": ("train.steps_per_epoch", int, "default: cover the images once, or"
                          " fewer when --time-limit would hold under 8 such epochs"),
    "--early-stopping": ("train.early_stopping", int, "stop after N epochs without gain"),
    "--time-limit": ("train.time_limit_s", float, "seconds; the schedule is fitted to it"),
    "--seed": ("train.seed", int, "seed of split, sampling and augmentation (default 0)"),
    "--device": ("train.device", str, "auto (default), cpu, cuda, cuda:1, ..."),
    "--workers": ("train.workers", int, "crop-loading processes (default: 0 on CPU, up to 4"
                  " with a GPU)"),
    "--width": ("model.width", int, "channels of the first level, doubled at each level down"
               " (default: planned from --time-limit and the device; 64 without one)"),
    "--top-width": ("model.top_width", int, "channels of the first level alone (default: the"
                    " width; a planned width keeps at least 2 per class there)"),
    "--depth": ("model.depth", int, "number of poolings (default 4)"),
    "--padding": ("model.padding", str, "same (default, any size) or valid (the paper)"),
    "--up": ("model.up", str, "transpose (default), bilinear or nearest"),
    "--norm": ("model.norm", str, "instance (default), batch, group or none"),
    "--dropout": ("model.dropout", float, "drop-out at the end of the contracting path"),
    "--patch-size": ("data.patch_size", int, "training crop side in pixels (default 256)"),
    "--val-fraction": ("data.val_fraction", float, "share of pairs held out (default 0.2)"),
    "--classes": ("data.class_values", _ints, "mask values of the classes, e.g. 0,255"),
    "--class-names": ("data.class_names", _names, "names of the classes, e.g. membrane,cell"),
    "--ignore-value": ("data.ignore_value", _ignore_value, "mask value to ignore, e.g. 11 for"
                       " CamVid void; for colour masks a colour, e.g. 0,0,0"),
    "--palette": ("data.palette", str, "JSON or CSV file of class names and colours (colour"
                  " masks; names and display colours for label masks)"),
    "--weight-w0": ("data.weight_w0", float, "weighted-ce: border weight w0 (paper: 10)"),
    "--weight-sigma": ("data.weight_sigma", float, "weighted-ce: border width in px (paper: 5)"),
    "--weight-objects": ("data.weight_objects", _ints, "weighted-ce: mask values of the objects"
                         " (default: all classes but the first, e.g. 255 = ISBI cells)"),
    "--image-interpolation": ("augment.image_interpolation", str,
                              "image resampling in augmentation: bilinear (default) or bicubic"),
}


def _add_prediction_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=int, default=None, help="tile side in pixels (default: the whole"
                   " image up to 1088 px, else the fewest tiles overlapping by 64 px)")
    p.add_argument("--overlap", type=float, default=None, help="tile overlap, a fraction"
                   " (default: planned with the tile; 0.25 with --tile)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    p.add_argument("--tta", default=None, metavar="MODE",
                   help="test-time augmentation of every tile: flip (4 flips), d4 (8 symmetries)"
                        " or rot:N (N rotations, e.g. rot:7)")


def _add_preview_flags(p: argparse.ArgumentParser) -> None:
    """DATA, --out PNG, --images, --preset, and the data/augmentation flags of ``train``."""
    p.add_argument("data", help="folder with images/ and masks/")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--images", type=int, default=3, help="how many images (default 3)")
    p.add_argument("--preset", default=None, metavar="NAME", help="recipe: default or paper")
    for flag, (key, kind, text) in TRAIN_FLAGS.items():
        if key.startswith(("data.", "augment.")):
            p.add_argument(flag, type=kind, default=None, help=text)


def _preview_config(args: argparse.Namespace) -> Any:
    from unetseg.config import RunConfig, replace
    from unetseg.presets import preset

    cfg = preset(args.preset) if args.preset else RunConfig()
    changes = {key: getattr(args, flag[2:].replace("-", "_"))
               for flag, (key, _, _) in TRAIN_FLAGS.items()
               if key.startswith(("data.", "augment."))}
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})


def _preview_augment(args: argparse.Namespace) -> int:
    from unetseg.preview import preview_augment

    path = preview_augment(args.data, args.out, cfg=_preview_config(args), images=args.images,
                           samples=args.samples, seed=args.seed)
    print(f"wrote {path}")
    return 0


def _preview_weights(args: argparse.Namespace) -> int:
    from unetseg.preview import preview_weights

    path = preview_weights(args.data, args.out, cfg=_preview_config(args), images=args.images)
    print(f"wrote {path}")
    return 0


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
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="start from a recipe: default or paper (the U-Net paper's; flags"
                        " override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on GPUs")
    p.add_argument("--nproc", type=int, default=1, help="train data-parallel in N local"
                   " processes, e.g. one per GPU (--batch-size is split over them)")
    p.add_argument("--sync-batchnorm", action="store_true",
                   help="batch-norm statistics over all processes' samples (GPUs only)")
    for flag, (_, kind, text) in TRAIN_FLAGS.items():
        p.add_argument(flag, type=kind, default=None, help=text)
    p.set_defaults(run=_train)

    p = sub.add_parser("predict", help="predict label images for images of any size")
    p.add_argument("model", help="model file (RUN/best.safetensors)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="folder for labels and overlays")
    p.add_argument("--probabilities", action="store_true", help="also write <stem>_probs.tif")
    p.add_argument("--stream", action="store_true", default=None,
                   help="stream TIFFs band by band into a tiled BigTIFF (automatic above 64 MP)")
    p.add_argument("--no-overlay", action="store_true", help="skip the overlay PNGs")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="largest streamed TIFF, height x width pixels (default: the limit of"
                        " every image read); larger ones are refused from their header as"
                        " likely decompression bombs")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="torch (default; MODEL is a .safetensors) or onnxruntime (MODEL is a"
                        " .onnx from unetseg export; CPU)")
    _add_prediction_flags(p)
    p.set_defaults(run=_predict)

    p = sub.add_parser("evaluate", help="score a model on DATA/images + DATA/masks")
    p.add_argument("model", help="model file (RUN/best.safetensors)")
    p.add_argument("data", help="folder with images/ and masks/")
    p.add_argument("--out", default=None, help="folder for metrics.json and per_image.csv")
    p.add_argument("--isbi", action="store_true",
                   help="also the ISBI 2012 pixel, Rand and warping errors (2-class models:"
                        " class 0 boundaries, class 1 objects)")
    _add_prediction_flags(p)
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("preview-augment", help="picture of images beside augmented copies")
    _add_preview_flags(p)
    p.add_argument("--samples", type=int, default=3, help="augmented copies per image")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation (default 0)")
    p.set_defaults(run=_preview_augment)

    p = sub.add_parser("preview-weights", help="heat maps of the paper's border weight maps")
    _add_preview_flags(p)
    p.set_defaults(run=_preview_weights)

    p = sub.add_parser("demo", help="train, predict and evaluate on bundled ISBI 2012 data")
    p.add_argument("--out", default="unetseg-demo", help="folder for everything (default"
                   " ./unetseg-demo)")
    p.add_argument("--time-budget", type=float, default=420.0, help="training seconds")
    p.add_argument("--device", default="auto")
    p.set_defaults(run=_demo)
    _add_ship_commands(sub)
    _add_data_commands(sub)
    return parser


CHECK_FLAGS = ("--classes", "--class-names", "--ignore-value", "--palette")


def _add_data_commands(sub: Any) -> None:
    """``check`` (the dataset doctor) and ``convert-checkpoint``."""
    p = sub.add_parser("check", help="check a data folder: pairs, unreadable files, sizes, mask"
                       " values, channels, class balance and suggested class weights")
    p.add_argument("data", help="folder with images/ and masks/")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    for flag in CHECK_FLAGS:
        _, kind, text = TRAIN_FLAGS[flag]
        p.add_argument(flag, type=kind, default=None, help=text)
    p.set_defaults(run=_check)

    p = sub.add_parser("convert-checkpoint", help="convert a TRUSTED pickled PyTorch"
                       " checkpoint (.pt, .pth, .ckpt) of a unetseg U-Net to a model file")
    p.add_argument("checkpoint", help="the trusted .pt/.pth/.ckpt file (a state_dict)")
    p.add_argument("--config", required=True, help="the run's config.json (model, classes and"
                   " normalisation)")
    p.add_argument("--out", required=True, help="model file to write (.safetensors)")
    p.set_defaults(run=_convert_checkpoint)


def _check(args: argparse.Namespace) -> int:
    from unetseg.config import DataConfig
    from unetseg.data.doctor import check_data
    from unetseg.data.report import format_report

    cfg = DataConfig(class_values=args.classes, class_names=args.class_names,
                     ignore_value=args.ignore_value, palette=args.palette)
    report = check_data(args.data, cfg, progress=not args.quiet and not args.json)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0 if report.clean else 1


def _convert_checkpoint(args: argparse.Namespace) -> int:
    from unetseg.train.convert import convert_checkpoint

    convert_checkpoint(args.checkpoint, args.config, args.out)
    print(f"wrote {args.out}")
    return 0


def _add_ship_commands(sub: Any) -> None:
    """``export`` and ``serve``: shipping a trained model."""
    p = sub.add_parser("export", help="write a model as ONNX or TorchScript, verified against"
                       " PyTorch")
    p.add_argument("model", help="model file (RUN/best.safetensors)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                   help="onnx (default) or torchscript")
    p.add_argument("--out", required=True, help="file to write (.onnx; .pt/.ts for TorchScript)")
    p.add_argument("--exporter", default="auto", help="auto (default: dynamo then legacy for"
                   " ONNX, script then trace for TorchScript) or one of them")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest accepted absolute logit difference (default 1e-4)")
    p.set_defaults(run=_export)

    p = sub.add_parser("serve", help="serve a model over HTTP with a web page (extra: serve)")
    p.add_argument("model", help="model file (.safetensors, or .onnx for ONNX Runtime)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-upload-mb", type=float, default=32.0,
                   help="largest request body in MiB (default 32; larger: 413)")
    p.add_argument("--max-pixels", type=int, default=16 * 2**20,
                   help="largest image height x width (default 16 Mi; larger: 413)")
    p.add_argument("--queue-size", type=int, default=8,
                   help="requests waiting for inference before 503 (default 8)")
    p.add_argument("--tile", type=int, default=None, help="tile side in pixels (default 512)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    p.set_defaults(run=_serve)


def run_config_from_args(args: argparse.Namespace) -> Any:
    """A RunConfig from ``--preset`` or ``--config`` (if any) with every given flag on top."""
    from unetseg.config import RunConfig, from_dict, replace
    from unetseg.presets import preset

    if getattr(args, "preset", None) and args.config:
        raise UserError(f"{args.config}: give either --config or --preset {args.preset}, not"
                        " both (flags override either)")
    cfg = preset(args.preset) if getattr(args, "preset", None) else RunConfig()
    if args.config:
        path = Path(args.config)
        try:
            cfg = from_dict(RunConfig, json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"{path}: not a readable RunConfig JSON ({exc}); fix the file (a"
                            " run's config.json holds one under \"run\") or drop --config"
                            ) from None
    changes = {key: getattr(args, flag[2:].replace("-", "_"))
               for flag, (key, _, _) in TRAIN_FLAGS.items()}
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.no_amp:
        changes["train.amp"] = False
    if getattr(args, "sync_batchnorm", False):
        changes["train.sync_batchnorm"] = True
    return replace(cfg, **changes)


def _train(args: argparse.Namespace) -> int:
    from unetseg.train import distributed

    if args.nproc < 1:
        raise UserError(f"--nproc {args.nproc}: give at least 1 process")
    if args.nproc > 1 and not distributed.launched():  # under torchrun the processes exist
        if not args.resume:  # say it once, before starting processes
            distributed.batch_shard(run_config_from_args(args).train.batch_size,
                                    distributed.DistEnv(world_size=args.nproc))
        return distributed.launch(args.nproc, main, args.argv)
    from unetseg.train.fit import fit

    main_process = distributed.DistEnv.from_environ().is_main
    if not main_process:  # warnings once, from rank 0
        logging.getLogger("unetseg").setLevel(logging.ERROR)
    try:
        result = fit(args.data, args.out, run_config_from_args(args), resume=args.resume,
                     show_progress=not args.quiet)
    finally:
        distributed.cleanup()
    if not main_process:
        return 0
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
                      overlays=not args.no_overlay, device=args.device, stream=args.stream,
                      tta=args.tta, backend=args.backend, max_pixels=args.max_pixels,
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
                      batch_size=args.batch_size, device=args.device, tta=args.tta,
                      isbi=args.isbi, show_progress=not args.quiet)
    _print_summary(result.summary)
    if "isbi" in result.summary:
        scores = result.summary["isbi"]
        print("ISBI 2012 (best over thresholds): " + "   ".join(
            f"{name.replace('_', ' ')} {scores[name]['value']:.5f} (t={scores[name]['threshold']})"
            for name in ("pixel_error", "rand_error", "warping_error")))
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


def _export(args: argparse.Namespace) -> int:
    from unetseg.export import ExportError, ParityError, export_model

    try:
        result = export_model(args.model, args.out, args.format, exporter=args.exporter,
                              tolerance=args.tolerance)
    except (ParityError, ExportError) as exc:
        print(f"unetseg: export failed: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"exporter: {result.exporter} ({result.reason})")
    print("parity with PyTorch (max |logit difference| per input N x C x H x W):")
    print("\n".join(result.report.lines()))
    print(f"wrote {result.path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from unetseg.serve.app import run_server

    run_server(args.model, host=args.host, port=args.port,
               max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
               queue_size=args.queue_size, tile=args.tile, batch_size=args.batch_size,
               device=args.device)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unetseg`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for train --nproc
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
    except BrokenPipeError:  # stdout piped into a reader that stopped (``| head``)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141


if __name__ == "__main__":
    sys.exit(main())
