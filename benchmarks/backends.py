"""Images per second of the PyTorch and ONNX Runtime backends on the CPU, in one run.

Both backends predict the same images through the same tiling and blending
(:func:`unetseg.infer.predict.tiled_logits`), with the same number of threads; the script also
reports whether their label images are identical.

    python benchmarks/backends.py --model RUN/best.safetensors               # full run
    python benchmarks/backends.py --width 16 --limit 4 --repeat 1           # quick look

Without ``--model`` a randomly initialised U-Net (``--width``, ``--depth``) is benchmarked;
without ``--onnx`` the model is exported to a temporary file first (not timed). Images: the
ISBI 2012 test images in ../shared/data, or the bundled demo images. PyTorch predicts in fp32
unless ``--precision`` says otherwise (``auto``: what ``unetseg predict`` does, bf16 on CPUs
with native bf16 when the model passes its check), so by default the labels compare two fp32
computations.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ISBI_TEST = ROOT.parent / "shared" / "data" / "isbi2012" / "test" / "images"


def _images(folder: str | None, limit: int | None) -> list[Path]:
    from unetseg.api import demo_data_root

    if folder:
        paths = sorted(Path(folder).glob("*.png"))
    else:
        paths = sorted(ISBI_TEST.glob("*.png")) or sorted((demo_data_root() / "images").glob("*"))
    return paths[:limit] if limit else paths


def _random_model(folder: Path, width: int, depth: int) -> Path:
    from unetseg.data.classes import ClassTable
    from unetseg.data.normalize import ChannelStats
    from unetseg.model import UNet
    from unetseg.modelfile import ModelCard, save_model

    torch.manual_seed(0)
    net = UNet(1, 2, depth=depth, width=width)
    card = ModelCard(net.config, ClassTable.from_values((0, 255), ("membrane", "cell")),
                     ChannelStats((0.5,), (0.17,)))
    path = folder / f"random_w{width}_d{depth}.safetensors"
    save_model(path, net, card)
    return path


def _time(predictor: Any, images: list[np.ndarray], repeat: int) -> tuple[float, list[Any]]:
    predictor.logits(images[0])  # warm-up (allocations, ONNX Runtime's first-run planning)
    labels: list[Any] = []
    started = time.perf_counter()
    for r in range(repeat):
        for image in images:
            ids = predictor.logits(image).argmax(0).numpy()
            if r == 0:
                labels.append(ids)
    return time.perf_counter() - started, labels


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model file (default: a random U-Net)")
    parser.add_argument("--onnx", help="exported .onnx of --model (default: export it now)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--images", help="folder of PNG images (default: ISBI 2012 test)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images")
    parser.add_argument("--repeat", type=int, default=3, help="passes over the images")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                        help="PyTorch's number format (default fp32)")
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    from unetseg.data.io import read_image
    from unetseg.export import export_model
    from unetseg.infer.backends import load_onnx_image_predictor
    from unetseg.infer.load import load_predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    paths = _images(args.images, args.limit)
    images = [read_image(p) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else _random_model(Path(tmp), args.width,
                                                                   args.depth)
        onnx_path = Path(args.onnx) if args.onnx else export_model(
            model, Path(tmp) / "model.onnx", "onnx").path
        options = {"tile": args.tile, "batch_size": args.batch_size}
        torch_predictor, card = load_predictor(model, device="cpu", precision=args.precision,
                                               **options)
        onnx_predictor, _ = load_onnx_image_predictor(onnx_path, threads=threads, **options)
        results: dict[str, Any] = {}
        labels = {}
        torch_predictor.choose_precision(images[0])  # the bf16 check, if any, is not timed
        for name, predictor in (("torch", torch_predictor), ("onnxruntime", onnx_predictor)):
            seconds, labels[name] = _time(predictor, images, args.repeat)
            results[name] = {"images_per_s": len(images) * args.repeat / seconds,
                             "seconds": seconds}
        assert torch_predictor.choice is not None
        results["torch"]["precision"] = torch_predictor.choice.name
    differing = sum(int(np.sum(a != b)) for a, b in zip(labels["torch"], labels["onnxruntime"]))
    report = {
        "model": str(args.model or f"random UNet width {args.width} depth {args.depth}"),
        "config": {k: getattr(card.model, k) for k in ("width", "depth", "padding", "norm")},
        "images": len(images), "image_size": list(images[0].shape), "repeat": args.repeat,
        "tile": args.tile, "batch_size": args.batch_size, "threads": threads,
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "results": results, "labels_identical": differing == 0, "differing_pixels": differing,
    }
    _print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def _print(report: dict[str, Any]) -> None:
    print(f"{report['model']} {report['config']}")
    print(f"{report['images']} images {report['image_size']} x {report['repeat']} passes, tile"
          f" {report['tile']}, batch {report['batch_size']}, {report['threads']} threads,"
          f" torch {report['torch']}")
    for name, r in report["results"].items():
        precision = f" in {r['precision']}" if "precision" in r else ""
        print(f"  {name:<12} {r['images_per_s']:8.2f} images/s  ({r['seconds']:.1f} s){precision}")
    speedup = (report["results"]["onnxruntime"]["images_per_s"]
               / report["results"]["torch"]["images_per_s"])
    print(f"  onnxruntime / torch: {speedup:.2f}x")
    print(f"  labels identical: {report['labels_identical']}"
          f" ({report['differing_pixels']} differing pixels)")


if __name__ == "__main__":
    main(sys.argv[1:])
