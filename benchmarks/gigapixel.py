"""Peak memory of predicting one very large TIFF: unetseg streaming vs MONAI's sliding window.

Builds a SIDE x SIDE 8-bit tiled TIFF from the bundled ISBI 2012 slices (mirrored tiles of EM
texture), a model file with random weights (memory does not depend on the weights), and runs

* ``unetseg predict MODEL big.tif --out DIR`` (streams automatically above 64 MP),
* with ``--single-strip``, the same on a copy stored as one uncompressed strip (the layout many
  writers use for uncompressed images, which a naive reader decodes whole for the first band),
* MONAI ``sliding_window_inference`` with the same network over the whole image read into memory
  (``--peer``; skipped when MONAI is not installed),

each under ``/usr/bin/time -v``, and prints wall time and peak RSS ("Maximum resident set size").

    python benchmarks/gigapixel.py --side 20000 --width 16 --peer
    python benchmarks/gigapixel.py --side 8000 --width 4 --single-strip
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_big_tiff(path: Path, side: int, tile: int = 512) -> None:
    import tifffile

    from unetseg.api import demo_data_root
    from unetseg.data.io import read_image

    slices = [(read_image(p)[0] * 255).astype(np.uint8)
              for p in sorted((demo_data_root() / "images").glob("*.png"))[:4]]

    def tiles():
        for y in range(0, side, tile):
            for x in range(0, side, tile):
                src = slices[(y // tile + x // tile) % len(slices)]
                yield src[:tile, :tile] if (x // tile) % 2 else src[:tile, :tile][:, ::-1]

    tifffile.imwrite(path, tiles(), shape=(side, side), dtype=np.uint8, tile=(tile, tile),
                     bigtiff=True, compression="zlib")


def write_single_strip(path: Path, source: Path, band: int = 512) -> None:
    """Copy ``source`` into one uncompressed strip, band by band: the header is written first
    (a sparse file), then rows through a memory map, so the copy never holds the image."""
    import tifffile

    with tifffile.TiffFile(source) as tif:
        page = tif.pages.first
        height, width = page.shape[:2]
        tifffile.imwrite(path, shape=page.shape, dtype=page.dtype, rowsperstrip=height,
                         bigtiff=True)
        out = tifffile.memmap(path, mode="r+")
        tiles = int(page.chunked[1])
        for top in range(0, height, band):  # a band is a whole number of source tile rows
            rows = []
            for index in range(top // page.chunks[0] * tiles,
                               min(-(-(top + band) // page.chunks[0]), page.chunked[0]) * tiles):
                tif.filehandle.seek(page.dataoffsets[index])
                data = tif.filehandle.read(page.databytecounts[index])
                rows.append(page.decode(data, index)[0].reshape(page.chunks))
            grid = [np.concatenate(rows[i : i + tiles], axis=1)
                    for i in range(0, len(rows), tiles)]
            out[top : top + band] = np.concatenate(grid)[:, :width][: height - top]
        out.flush()
        del out


def write_model(path: Path, width: int) -> None:
    import torch

    from unetseg.data.classes import ClassTable
    from unetseg.data.normalize import ChannelStats
    from unetseg.model import UNet
    from unetseg.modelfile import ModelCard, save_model

    torch.manual_seed(0)
    model = UNet(1, 2, width=width, depth=4).eval()
    card = ModelCard(model.config, ClassTable.from_values((0, 255)), ChannelStats((0.5,), (0.2,)))
    save_model(path, model, card)


MONAI_RUNNER = """
import sys, tifffile, torch
from monai.inferers import sliding_window_inference
from unetseg.modelfile import load_model
model, card = load_model(sys.argv[1])
image = torch.from_numpy(tifffile.imread(sys.argv[2])).float().div_(255)[None, None]
image = (image - card.stats.mean[0]) / card.stats.std[0]
with torch.inference_mode():
    logits = sliding_window_inference(image, roi_size=(512, 512), sw_batch_size=2,
                                      predictor=model, overlap=0.25, mode="gaussian")
    labels = logits.argmax(1)
print(labels.shape)
"""


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` under /usr/bin/time -v; return (wall seconds, peak RSS in MiB)."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)[1])
    return wall, rss_kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--width", type=int, default=16, help="U-Net width of the model")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--peer", action="store_true", help="also run MONAI's sliding window")
    parser.add_argument("--single-strip", action="store_true",
                        help="also stream a copy stored as one uncompressed strip")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="unetseg-giga-"))
    work.mkdir(parents=True, exist_ok=True)
    image, model = work / f"big{args.side}.tif", work / f"model{args.width}.safetensors"
    if not image.exists():
        t = time.perf_counter()
        write_big_tiff(image, args.side)
        print(f"wrote {image} ({image.stat().st_size / 2**20:.0f} MiB) in"
              f" {time.perf_counter() - t:.0f} s")
    write_model(model, args.width)
    rows = []
    wall, rss = timed([sys.executable, "-m", "unetseg.cli", "predict", str(model), str(image),
                       "--out", str(work / "pred"), "--tile", str(args.tile), "--stream",
                       "--batch-size", "2"])
    rows.append(("unetseg predict (streaming)", wall, rss))
    if args.single_strip:
        strip = work / f"big{args.side}_strip.tif"
        if not strip.exists():
            write_single_strip(strip, image)
        wall, rss = timed([sys.executable, "-m", "unetseg.cli", "predict", str(model),
                           str(strip), "--out", str(work / "pred_strip"), "--tile",
                           str(args.tile), "--stream", "--batch-size", "2"])
        rows.append(("  same, one uncompressed strip", wall, rss))
    if args.peer:
        try:
            import monai  # noqa: F401
        except ImportError:
            print("MONAI is not installed: pip install -e '.[bench]'")
        else:
            wall, rss = timed([sys.executable, "-c", MONAI_RUNNER, str(model), str(image)])
            rows.append(("MONAI sliding_window_inference", wall, rss))
    mp = args.side**2 / 1e6
    print(f"\n{args.side} x {args.side} ({mp:.0f} MP) uint8 TIFF ({args.side**2 / 2**20:.0f} MiB"
          f" decoded), U-Net width {args.width}, tile {args.tile}\n")
    print(f"| {'method':<32} | {'wall s':>8} | {'MP/s':>6} | {'peak RSS MiB':>12} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 8}|{'-' * 14}|")
    for name, wall, rss in rows:
        print(f"| {name:<32} | {wall:>8.1f} | {mp / wall:>6.2f} | {rss:>12.0f} |")


if __name__ == "__main__":
    main()
