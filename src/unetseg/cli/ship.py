"""``unetseg export`` and ``serve``: shipping a trained model."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from unetseg.cli.flags import add_prediction_flags, predict_config_from_args
from unetseg.config import ServeLimits

EXPORT_PREDICTION_FLAGS = ("--tile", "--overlap", "--batch-size")
"""The prediction flags an exported file stores as its tiling."""


def add_ship_commands(sub: Any) -> None:
    p = sub.add_parser("export", help="write a model as ONNX, TorchScript or a BioImage Model"
                       " Zoo package, verified against PyTorch")
    p.add_argument("model", help="model file (RUN/best.safetensors), or a model set (a run folder"
                   " of train --folds, or model files joined by commas): one graph averaging"
                   " the members' probabilities, without post-processing")
    p.add_argument("--format", choices=("onnx", "torchscript", "bioimageio"), default="onnx",
                   help="onnx, torchscript or bioimageio (a bioimage.io model package holding"
                        " both; extra: bioimageio) (default %(default)s)")
    p.add_argument("--out", required=True, help="file to write (.onnx; .pt/.ts for TorchScript;"
                   " .zip for bioimageio)")
    p.add_argument("--sample", default=None, metavar="IMAGE",
                   help="bioimageio: an image like the training images; a crop of it and its"
                        " prediction become the package's test tensors and cover")
    p.add_argument("--author", default=None,
                   help="bioimageio: the package's author, as the zoo shows it; without it:"
                        " unetseg user")
    p.add_argument("--name", default=None,
                   help="bioimageio: the package's name; without it: made of the class"
                        " names")
    p.add_argument("--exporter", default="auto", help="auto (dynamo then legacy for ONNX,"
                   " script then trace for TorchScript) or one of them (default %(default)s)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest accepted absolute logit difference (default %(default)s)")
    add_prediction_flags(p, EXPORT_PREDICTION_FLAGS)
    p.set_defaults(run=_export)

    p = sub.add_parser("serve", help="serve a model over HTTP with a web page (extra: serve)")
    p.add_argument("model", help="model file (.safetensors, or .onnx for ONNX Runtime), or a"
                   " model set (a run folder of train --folds, or model files joined by"
                   " commas)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    limits = ServeLimits()
    p.add_argument("--max-upload-mb", type=float, default=limits.max_upload_bytes / 2**20,
                   help="largest request body in MiB; larger: 413 (default %(default)s)")
    p.add_argument("--max-pixels", type=int, default=limits.max_pixels,
                   help="largest image height x width; larger: 413 (default %(default)s)")
    p.add_argument("--max-voxels", type=int, default=limits.max_voxels,
                   help="largest volume depth x height x width (.nii, .nii.gz, .npy, TIFF"
                        " stacks); larger: 413 (default %(default)s)")
    p.add_argument("--queue-size", type=int, default=limits.queue_size,
                   help="requests waiting for inference before 503 (default %(default)s)")
    add_prediction_flags(p)
    p.set_defaults(run=_serve)


def _export(args: argparse.Namespace) -> int:
    from unetseg.export import ExportError, ParityError, Tiling, export_model

    config = predict_config_from_args(args)
    config.check()
    tiling = Tiling.from_config(config)
    try:
        result = export_model(args.model, args.out, args.format, exporter=args.exporter,
                              tolerance=args.tolerance, tiling=tiling, sample=args.sample,
                              author=args.author, name=args.name)
    except (ParityError, ExportError) as exc:
        print(f"unetseg: export failed: {exc}", file=sys.stderr)
        return exc.exit_code
    for part in result.parts or (result,):
        label = f"{part.format} exporter" if result.parts else "exporter"
        print(f"{label}: {part.exporter} ({part.reason})")
        print("parity with PyTorch (max |logit difference| per input N x C x H x W):")
        print("\n".join(part.report.lines()))
    for note in result.notes:
        print(f"bioimage.io validation warning: {note}")
    print(f"wrote {result.path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from unetseg.serve.app import run_server

    run_server(args.model, predict_config_from_args(args), host=args.host, port=args.port,
               max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
               max_voxels=args.max_voxels, queue_size=args.queue_size)
    return 0
