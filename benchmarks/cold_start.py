"""Where a cold ``unetseg predict MODEL image.png --out DIR`` spends its time.

    python benchmarks/cold_start.py                    # default U-Net (width 64), 512 x 512 PNG
    python benchmarks/cold_start.py --width 16 --runs 5

It writes a randomly initialised U-Net model file and a random 8-bit PNG into a temporary
folder (files in the page cache: "cold" is the process, not the disk), then prints

* the wall time of ``python -m unetseg.cli -q predict MODEL image.png --out DIR`` from a fresh
  process to its exit (median of ``--runs``), beside that of a bare interpreter and of one
  that only imports torch;
* a breakdown from a fresh process that runs the steps of :func:`unetseg.api.predict` one at a
  time: import torch, import the rest of the command's chain (``unetseg.cli``,
  ``unetseg.api``), load the model (read the card, check the shapes, load the weights, memory
  layout), read the image, the first forward pass (tiled logits), labels and mask PNG, the
  overlay PNG; then the forward pass again, warm: the forward pass alone;
* from ``python -X importtime`` of the command: the import time of torch, of unetseg's own
  modules, of every other library imported outside torch's own chain (largest first), and the
  optional heavy libraries the command imported (scipy, matplotlib, onnx, onnxruntime, ...),
  which a ``.safetensors`` prediction needs none of.

:func:`measure` returns the same figures for ``benchmarks/speed.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HEAVY = ("scipy", "matplotlib", "onnx", "onnxruntime", "onnxscript", "tifffile", "pandas",
         "sympy", "torch._dynamo", "torchvision", "tqdm")
"""Libraries worth knowing about when a cold predict imports them."""


def make_inputs(folder: Path, width: int, size: int) -> tuple[Path, Path]:
    """A random U-Net model file (seed 0) and a random ``size`` x ``size`` gray PNG."""
    import numpy as np
    import torch
    from PIL import Image

    from unetseg.data.classes import ClassTable
    from unetseg.data.normalize import ChannelStats
    from unetseg.model import UNet
    from unetseg.modelfile import ModelCard, save_model

    torch.manual_seed(0)
    net = UNet(1, 2, width=width)
    card = ModelCard(net.config, ClassTable.from_values((0, 255), ("membrane", "cell")),
                     ChannelStats((0.5,), (0.17,)))
    model = folder / f"unet_w{width}.safetensors"
    save_model(model, net, card)
    image = folder / "image.png"
    pixels = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    return model, image


def _command(model: Path, image: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "unetseg.cli", "-q", "predict", str(model), str(image),
            "--out", str(out)]


def _wall(cmd: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def phases(model: Path, image: Path, out: Path) -> dict[str, Any]:
    """Seconds of each step of :func:`unetseg.api.predict` in this (fresh) process."""
    marks: list[tuple[str, float]] = [("", time.perf_counter())]

    def mark(name: str) -> None:
        marks.append((name, time.perf_counter()))

    import torch

    mark("import torch")
    import unetseg.api
    import unetseg.cli  # noqa: F401  (what the command imports first)

    mark("import unetseg (cli, api)")
    from unetseg.config import predict_config
    from unetseg.data.io import read_image
    from unetseg.data.masks import class_colours, write_mask
    from unetseg.data.write import write_rgb
    from unetseg.export.fastest import load_fastest
    from unetseg.infer.predict import logits_to_labels
    from unetseg.runtime import tune_allocator
    from unetseg.viz import overlay

    tune_allocator()
    loaded = load_fastest(model, predict_config(None))  # as unetseg.api.predict loads it
    predictor, card = loaded.predictor, loaded.card
    mark("load model")
    pixels = read_image(image)
    predictor.check_channels(pixels, image)
    mark("read image")
    logits = predictor.logits(pixels)
    mark("first forward (tiled logits)")
    out.mkdir(parents=True, exist_ok=True)
    ids = logits_to_labels(logits).numpy()
    write_mask(out / f"{image.stem}.png", ids, card.classes)
    mark("labels and mask PNG")
    write_rgb(out / f"{image.stem}_overlay.png", overlay(pixels, ids, class_colours(card.classes)))
    mark("overlay PNG")
    steps = {name: t - marks[i][1] for i, (name, t) in enumerate(marks[1:])}
    warm = []
    for _ in range(3):
        started = time.perf_counter()
        predictor.logits(pixels)
        warm.append(time.perf_counter() - started)
    return {"steps": steps, "forward_warm_s": statistics.median(warm),
            "backend": f"{loaded.backend} ({loaded.reason})",
            "threads": torch.get_num_threads(),
            "imported": [m for m in HEAVY if m in sys.modules],
            "unetseg": unetseg.api.__file__}


def import_times(model: Path, image: Path, out: Path) -> dict[str, Any]:
    """Import times (ms, cumulative) of the command from ``python -X importtime``."""
    cmd = _command(model, image, out)
    proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True,
                          text=True, check=True)
    # importtime prints a module after the modules it imported, indented one level deeper
    roots: list[tuple[str, int, int, list[Any]]] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line.split(":", 1)[1].split("|")
        depth = (len(name) - len(name.lstrip())) // 2
        children = []
        while roots and roots[-1][2] > depth:
            children.append(roots.pop())
        roots.append((name.strip(), int(own), depth, [int(cumulative), children[::-1]]))
    own_us, libraries = 0, []

    def walk(node: tuple[str, int, int, list[Any]]) -> None:
        nonlocal own_us
        name, own, _, (cumulative, children) = node
        if name.startswith("unetseg"):
            own_us += own
            for child in children:
                walk(child)
        else:  # a library imported by unetseg, or at the top level (lazily, while running)
            libraries.append((name, cumulative / 1e3))

    for node in roots:
        walk(node)
    torch_ms = sum(ms for name, ms in libraries if name == "torch")
    others = sorted(((n, round(ms, 1)) for n, ms in libraries if n != "torch" and ms >= 5),
                    key=lambda item: -item[1])
    return {"torch_ms": torch_ms, "unetseg_own_ms": own_us / 1e3, "libraries_ms": others}


def measure(width: int = 64, size: int = 512, runs: int = 3) -> dict[str, Any]:
    """All the figures of this script as a dict (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, image = make_inputs(folder, width, size)
        cmd = _command(model, image, folder / "out")
        # a cache of its own: the first run on a machine also picks the backend (exports the
        # model and times both backends when ONNX Runtime is installed); later runs read it
        env = {**os.environ, "UNETSEG_CACHE_DIR": str(folder / "cache")}
        first = _wall(cmd, env)
        walls = [_wall(cmd, env) for _ in range(runs)]
        python = statistics.median(_wall([sys.executable, "-c", "pass"]) for _ in range(3))
        torch_only = statistics.median(_wall([sys.executable, "-c", "import torch"])
                                       for _ in range(3))
        proc = subprocess.run([sys.executable, __file__, "--phases", str(model), str(image),
                               str(folder / "out2")], capture_output=True, text=True,
                              check=True, env=env)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result.update(width=width, size=size, runs=runs, first_wall_s=first,
                      cli_wall_s=statistics.median(walls),
                      cli_walls_s=walls, python_s=python, torch_only_s=torch_only,
                      imports=import_times(model, image, folder / "out3"))
    return result


def report(r: dict[str, Any]) -> str:
    lines = [f"cold `unetseg predict` of a {r['size']} x {r['size']} PNG, U-Net width"
             f" {r['width']}, {r['threads']} threads: {r['cli_wall_s']:.2f} s to exit (median"
             f" of {r['runs']}: {', '.join(f'{w:.2f}' for w in r['cli_walls_s'])}); a bare"
             f" interpreter {r['python_s']:.2f} s, one that imports torch and exits"
             f" {r['torch_only_s']:.2f} s; the forward pass alone (warm)"
             f" {r['forward_warm_s']:.2f} s, {r['cli_wall_s'] / r['forward_warm_s']:.1f}x"
             " less", "",
             f"the first run on the machine took {r['first_wall_s']:.2f} s (it also picks the"
             f" backend and caches the choice); the runs above: {r['backend']}", "",
             "| step (fresh process) | s |", "|---|---|"]
    lines += [f"| {name} | {s:.3f} |" for name, s in r["steps"].items()]
    lines.append(f"| total | {sum(r['steps'].values()):.3f} |")
    imports = r["imports"]
    lines += ["", f"imports (python -X importtime): torch {imports['torch_ms']:.0f} ms, unetseg's"
              f" own modules {imports['unetseg_own_ms']:.0f} ms; other libraries:"
              f" {', '.join(f'{n} {ms:.0f} ms' for n, ms in imports['libraries_ms']) or 'none'}",
              f"optional libraries imported by the command: {', '.join(r['imported']) or 'none'}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64, help="U-Net width (default 64)")
    parser.add_argument("--size", type=int, default=512, help="image side (default 512)")
    parser.add_argument("--runs", type=int, default=3, help="cold runs of the command")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--phases", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phases:
        print(json.dumps(phases(*map(Path, args.phases))))
        return
    result = measure(args.width, args.size, args.runs)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
