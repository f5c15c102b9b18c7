"""What a model set costs against one model: time and memory per image.

    python benchmarks/ensemble_cost.py                       # 1 and 5 members, width 16, CPU
    python benchmarks/ensemble_cost.py --members 1,3,5 --width 32 --size 1024 --device cuda

It writes randomly initialised U-Net model files (each with its own normalisation, as fold
models have) and a random gray image into a temporary folder. Each member count runs in a fresh
process, which loads the model set as ``unetseg predict`` does
(:func:`unetseg.export.fastest.load_fastest`, PyTorch, fp32), predicts the image once to warm
up and then ``--repeats`` times, and reports

* the median seconds per image (tiled logits of the whole image, as ``predict`` computes them);
* the peak memory above the process's own after its imports: resident memory (``ru_maxrss``)
  on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU; it holds the members' weights and
  the inference buffers.

A model set predicts each window with every member in turn, so its time grows with the number
of members; its memory grows by the members' weights only, as the members' probabilities are
summed window by window.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_inputs(folder: Path, members: int, width: int, size: int) -> tuple[list[Path], Path]:
    import numpy as np
    import torch
    from PIL import Image

    from unetseg.data.classes import ClassTable
    from unetseg.data.normalize import ChannelStats
    from unetseg.model import UNet
    from unetseg.modelfile import ModelCard, save_model

    paths = []
    for i in range(members):
        torch.manual_seed(i)
        net = UNet(1, 2, width=width)
        card = ModelCard(net.config, ClassTable.from_values((0, 255)),
                         ChannelStats((0.5 + 0.01 * i,), (0.17,)))
        paths.append(folder / f"member{i}.safetensors")
        save_model(paths[-1], net, card)
    image = folder / "image.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(image)
    return paths, image


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure_one(models: list[str], image: str, device: str, repeats: int) -> dict:
    """In this process: load, warm up, time; the figures as a dict."""
    import torch

    from unetseg.config import PredictConfig
    from unetseg.data.io import read_image
    from unetseg.export.fastest import load_fastest

    before = _rss_mib()
    started = time.perf_counter()
    spec = models if len(models) > 1 else models[0]
    loaded = load_fastest(spec, PredictConfig(device=device, precision="fp32",
                                              backend="torch"))
    load_s = time.perf_counter() - started
    pixels = read_image(image)
    cuda = loaded.predictor.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    loaded.predictor.logits(pixels)
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        loaded.predictor.logits(pixels)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before)
    return {"members": len(models), "load_s": load_s, "s_per_image": statistics.median(times),
            "peak_mib": peak, "memory": "CUDA allocated" if cuda else "resident above imports",
            "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", default="1,5", help="member counts, comma-separated")
    p.add_argument("--width", type=int, default=16, help="U-Net width (default 16)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--repeats", type=int, default=3, help="timed predictions (default 3)")
    p.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # a child process's models
    p.add_argument("--image", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.image, args.device, args.repeats)))
        return
    counts = [int(c) for c in args.members.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="unetseg-ensemble-") as tmp:
        paths, image = make_inputs(Path(tmp), max(counts), args.width, args.size)
        for count in counts:
            out = subprocess.run([sys.executable, __file__, "--device", args.device,
                                  "--repeats", str(args.repeats), "--image", str(image),
                                  "--one", *map(str, paths[:count])],
                                 check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    one = rows[0]
    print(f"{args.size} x {args.size} gray image, U-Net width {args.width}, {args.device},"
          f" {one['threads']} threads, fp32, median of {args.repeats}; memory: {one['memory']}")
    print("| members | load (s) | s / image | x one model | peak memory (MiB) | x one model |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['members']} | {r['load_s']:.2f} | {r['s_per_image']:.3f} |"
              f" {r['s_per_image'] / one['s_per_image']:.2f} | {r['peak_mib']:.0f} |"
              f" {r['peak_mib'] / one['peak_mib']:.2f} |")


if __name__ == "__main__":
    main()
