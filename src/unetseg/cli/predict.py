"""``unetseg predict``, ``evaluate`` and ``demo``: the commands of :mod:`unetseg.api`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from unetseg.cli.flags import add_prediction_flags, predict_config_from_args

MODEL_HELP = ("model file (RUN/best.safetensors, a .onnx from export, or a bioimage.io package"
              " from export --format bioimageio), or a model set: a run"
              " folder of train --folds, or model files joined by commas (their mean"
              " probabilities)")


def add_predict_commands(sub: Any) -> None:
    p = sub.add_parser("predict", help="predict label images for images of any size")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("images", nargs="+",
                   help="image files or folders, or OME-Zarr images (.zarr folders)")
    p.add_argument("--out", required=True, help="folder for labels and overlays (OME-Zarr"
                   " labels go into the image's own labels/ group)")
    p.add_argument("--probabilities", action="store_true", help="also write <stem>_probs.tif")
    p.add_argument("--stream", action="store_true", default=None,
                   help="stream TIFFs band by band into a tiled BigTIFF (automatic above 64 MP)")
    p.add_argument("--no-overlay", action="store_true", help="skip the overlay PNGs")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="largest streamed TIFF, height x width pixels (default: the limit of"
                        " every image read); larger ones are refused from their header as"
                        " likely decompression bombs")
    p.add_argument("--level", type=int, default=0, metavar="N",
                   help="OME-Zarr images: the pyramid level to predict, 0 the full resolution"
                        " (default %(default)s)")
    p.add_argument("--label-name", default="unetseg", metavar="NAME",
                   help="OME-Zarr images: write the labels into IMAGE/labels/NAME (default"
                        " %(default)s)")
    p.add_argument("--overwrite-labels", action="store_true",
                   help="OME-Zarr images: replace existing labels of that name")
    p.add_argument("--volume", action="store_true",
                   help="the inputs are volumes (TIFF stacks, folders of volumes): a 3D model"
                        " runs a 3D sliding window, a 2D model goes slice by slice (NIfTI and"
                        " .npy files are volumes without it)")
    p.add_argument("--spacing", default=None, metavar="Z,Y,X",
                   help="voxel size of volumes whose files carry none, e.g. 4,1,1")
    add_prediction_flags(p)
    p.set_defaults(run=_predict)

    p = sub.add_parser("evaluate", help="score a model on DATA/images + DATA/masks")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("data", help="folder with images/ and masks/")
    p.add_argument("--out", default=None,
                   help="folder for metrics.json, per_image.csv and report.html")
    p.add_argument("--isbi", action="store_true",
                   help="also the ISBI 2012 pixel, Rand and warping errors (2-class models:"
                        " class 0 boundaries, class 1 objects)")
    p.add_argument("--volume", action="store_true",
                   help="the data are volumes (TIFF stacks; NIfTI and .npy always are): Dice,"
                        " IoU, HD95 and surface Dice per volume, in physical units")
    p.add_argument("--spacing", default=None, metavar="Z,Y,X",
                   help="voxel size of volumes whose files carry none, e.g. 4,1,1")
    p.add_argument("--tolerance", type=float, default=1.0, metavar="T",
                   help="volumes: the normalised surface Dice's tolerance, in the spacing's"
                        " unit (default %(default)s)")
    add_prediction_flags(p)
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("demo", help="train, predict and evaluate on bundled ISBI 2012 data")
    p.add_argument("--out", default="unetseg-demo", help="folder for everything (default"
                   " %(default)s)")
    p.add_argument("--time-budget", type=float, default=420.0,
                   help="training seconds (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default %(default)s)")
    p.set_defaults(run=_demo)


def _predict(args: argparse.Namespace) -> int:
    from unetseg.api import predict
    from unetseg.data.volumes import parse_spacing

    spacing = parse_spacing(args.spacing) if args.spacing is not None else None
    written = predict(args.model, args.images, args.out, predict_config_from_args(args),
                      probabilities=args.probabilities, overlays=not args.no_overlay,
                      stream=args.stream, max_pixels=args.max_pixels, level=args.level,
                      label_name=args.label_name, overwrite_labels=args.overwrite_labels,
                      volume=args.volume, spacing=spacing, show_progress=not args.quiet)
    out = Path(args.out).resolve()
    beside = [w for w in written if not w.resolve().is_relative_to(out)]
    if len(beside) < len(written):
        print(f"wrote {len(written) - len(beside)} label image(s) to {args.out}")
    for labels in beside:
        print(f"wrote labels {labels}")
    return 0


def print_summary(summary: dict[str, Any]) -> None:
    if summary.get("task") == "instance":
        print_instance_summary(summary)
        return
    print(f"{'class':<20}{'IoU':>8}{'Dice':>8}{'prec.':>8}{'recall':>8}")
    for name, m in summary["per_class"].items():
        cells = "".join(f"{m[k]:>8.4f}" if m[k] is not None else f"{'-':>8}"
                        for k in ("iou", "dice", "precision", "recall"))
        print(f"{name:<20}{cells}")
    print(f"mean IoU {summary['mean_iou']:.4f}   pixel accuracy {summary['pixel_accuracy']:.4f}")


def print_instance_summary(summary: dict[str, Any]) -> None:
    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    print(f"objects: {summary['n_true']} true, {summary['n_pred']} predicted (count error"
          f" {summary['count_error']:+d}, mean |error| per image"
          f" {summary['mean_abs_count_error']:.2f})")
    print(f"DSB 2018 score {show(summary['dsb_score'])}   F1 at IoU 0.5"
          f" {show(summary['f1_0.5'])}   precision {show(summary['precision_0.5'])}"
          f"   recall {show(summary['recall_0.5'])}   PQ {show(summary['pq'])}")


def _evaluate(args: argparse.Namespace) -> int:
    from unetseg.api import evaluate
    from unetseg.data.volumes import parse_spacing

    spacing = parse_spacing(args.spacing) if args.spacing is not None else None
    result = evaluate(args.model, args.data, args.out, predict_config_from_args(args),
                      isbi=args.isbi, volume=args.volume, spacing=spacing,
                      tolerance=args.tolerance, show_progress=not args.quiet)
    print_summary(result.summary)
    if "mean_nsd" in result.summary:
        s = result.summary
        print(f"{s['volumes']} volume(s): mean HD95 {s['mean_hd95']}, mean surface Dice at"
              f" {s['nsd_tolerance']:g}: {s['mean_nsd']} ({s['units']})")
        if args.out:
            print(f"wrote {Path(args.out) / 'metrics.json'} and"
                  f" {Path(args.out) / 'per_volume.csv'}")
        return 0
    if "isbi" in result.summary:
        scores = result.summary["isbi"]
        print("ISBI 2012 (best over thresholds): " + "   ".join(
            f"{name.replace('_', ' ')} {scores[name]['value']:.5f} (t={scores[name]['threshold']})"
            for name in ("pixel_error", "rand_error", "warping_error")))
    if args.out:
        out = Path(args.out)
        print(f"wrote {out / 'metrics.json'}, {out / 'per_image.csv'} and {out / 'report.html'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from unetseg.api import demo

    result = demo(args.out, time_budget_s=args.time_budget, device=args.device,
                  show_progress=not args.quiet)
    print_summary(result.summary)
    f = result.folder
    print(f"\ndemo finished in {result.seconds:.0f} s; everything is in {f}/")
    for what, path in [("training curves", f / "run" / "curves.png"),
                       ("examples", f / "examples.png"),
                       ("overlays", f / "predictions"),
                       ("metrics", f / "evaluation" / "metrics.json"),
                       ("reports", f / "evaluation" / "report.html"),
                       ("", f / "run" / "report.html"),
                       ("model", f / "run" / "best.safetensors")]:
        print(f"  {what:<16}{path}")
    return 0
