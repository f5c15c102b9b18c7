"""Peak memory of predicting one very large TIFF: unetseg streaming vs MONAI's sliding window.

Builds a SIDE x SIDE 8-bit tiled TIFF from the bundled ISBI 2012 slices (mirrored tiles of EM
texture), a model file with random weights (memory does not depend on the weights), and runs

* ``unetseg predict MODEL big.tif --out DIR`` (streams automatically above 64 MP),
* with ``--single-strip``, the same on a copy stored as one uncompressed strip (the layout many
  writers use for uncompressed images, which a naive reader decodes whole for the first band),
* with ``--omezarr``, ``unetseg predict MODEL big.ome.zarr --out DIR`` on the same pixels stored
  as an OME-Zarr image (NGFF 0.5, 512-pixel chunks, a nearest pyramid), written band by band,
  whose labels go into ``big.ome.zarr/labels/unetseg`` (``--skip-tiff`` leaves out the TIFF),
* MONAI ``sliding_window_inference`` with the same network over the whole image read into memory
  (``--peer``; skipped when MONAI is not installed),

each under ``/usr/bin/time -v``, and prints wall time and peak RSS ("Maximum resident set size"),
beside the size of the whole image as a float32 tensor and of its float32 logits, which
streaming never holds. ``--picture PNG`` draws the OME-Zarr labels over the image at the
pyramid level whose longer side is at most 1024 pixels; ``--model FILE`` predicts with a
trained model (e.g. ``unetseg demo``'s ``run/best.safetensors``) instead of random weights.

    python benchmarks/gigapixel.py --side 20000 --width 16 --peer
    python benchmarks/gigapixel.py --side 8000 --width 4 --single-strip
    python benchmarks/gigapixel.py --side 20000 --width 4 --omezarr --skip-tiff
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


def _em_slices() -> list[np.ndarray]:
    from unetseg.api import demo_data_root
    from unetseg.data.io import read_image

    return [(read_image(p)[0] * 255).astype(np.uint8)
            for p in sorted((demo_data_root() / "images").glob("*.png"))[:4]]


def _em_tile(slices: list[np.ndarray], y: int, x: int, tile: int) -> np.ndarray:
    """The ``tile`` x ``tile`` block of the big image at tile row ``y``, tile column ``x``."""
    src = slices[(y + x) % len(slices)][:tile, :tile]
    return src if x % 2 else src[:, ::-1]


def write_big_tiff(path: Path, side: int, tile: int = 512, height: int | None = None) -> None:
    import tifffile

    slices = _em_slices()
    height = height or side

    def tiles():
        for y in range(0, height, tile):
            for x in range(0, side, tile):
                yield _em_tile(slices, y // tile, x // tile, tile)

    tifffile.imwrite(path, tiles(), shape=(height, side), dtype=np.uint8, tile=(tile, tile),
                     bigtiff=True, compression="zlib")


def write_big_omezarr(path: Path, side: int, tile: int = 512, height: int | None = None
                      ) -> None:
    """The same pixels as :func:`write_big_tiff` as an OME-Zarr image (c, y, x) with one
    channel, written one band of ``tile`` rows at a time (never the whole image) into a
    pyramid: level k holds every 2**k-th pixel, down to at most 1024 pixels a side."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    from unetseg.infer.omezarr import LabelPyramid

    slices = _em_slices()
    height = height or side
    levels = 1
    while -(-max(side, height) // 2 ** (levels - 1)) > 1024:
        levels += 1
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    pyramid = LabelPyramid(group, (1, height, side), np.dtype(np.uint8), levels,
                           ["c", "y", "x"])
    pyramid.start((0,))
    for y in range(0, height, tile):
        band = np.concatenate([_em_tile(slices, y // tile, x // tile, tile)
                               for x in range(0, side, tile)], axis=1)
        pyramid.add(y, band[: min(tile, height - y), :side])
    pyramid.finish()
    datasets = [{"path": str(k), "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 2.0**k, 2.0**k]}]} for k in range(levels)]
    write_multiscales_metadata(group, datasets, fmt=FormatV05(), axes="cyx", name="big")


def save_picture(image_path: Path, out: Path, longest: int = 1024) -> None:
    """The predicted labels over the image at the first label level whose longer side is at
    most ``longest`` pixels, in 64 colours (a smaller file). Both pyramids keep every 2**k-th
    pixel, so the image's deepest level at or above it, subsampled, matches it pixel for
    pixel."""
    import zarr
    from PIL import Image

    from unetseg.viz import overlay

    image = zarr.open_group(str(image_path), mode="r")
    labels = zarr.open_group(str(image_path / "labels" / "unetseg"), mode="r")
    meta = labels.attrs.asdict()["ome"]  # NGFF 0.5
    paths = [d["path"] for d in meta["multiscales"][0]["datasets"]]
    level = next((k for k, p in enumerate(paths) if max(labels[p].shape) <= longest),
                 len(paths) - 1)
    values = np.asarray(labels[paths[level]][:])
    image_level = min(level, len(image.attrs.asdict()["ome"]["multiscales"][0]["datasets"]) - 1)
    step = 2 ** (level - image_level)
    pixels = np.asarray(image[str(image_level)][:, ::step, ::step])
    classes = [c["label-value"] for c in meta["image-label"]["colors"]]
    palette = np.array([c["rgba"][:3] for c in meta["image-label"]["colors"]], np.uint8)
    ids = np.searchsorted(classes, values)
    rgb = overlay(pixels / np.float32(255), ids, palette, alpha=0.35)
    Image.fromarray(rgb).quantize(colors=64).save(out, optimize=True)
    print(f"wrote {out} (level {level}, {values.shape[1]} x {values.shape[0]} pixels)")


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
    parser.add_argument("--height", type=int, default=None,
                        help="rows of the image (default --side): streaming memory depends on"
                             " the width, so a strip of the full width measures the peak of"
                             " the full image in a fraction of the time")
    parser.add_argument("--width", type=int, default=16, help="U-Net width of the model")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--peer", action="store_true", help="also run MONAI's sliding window")
    parser.add_argument("--single-strip", action="store_true",
                        help="also stream a copy stored as one uncompressed strip")
    parser.add_argument("--omezarr", action="store_true",
                        help="also stream the image stored as OME-Zarr")
    parser.add_argument("--skip-tiff", action="store_true", help="leave out the TIFF run")
    parser.add_argument("--model", default=None,
                        help="a trained model file instead of random weights")
    parser.add_argument("--picture", default=None,
                        help="PNG of the OME-Zarr labels over the image (with --omezarr)")
    parser.add_argument("--picture-side", type=int, default=1024,
                        help="longest side of the picture's pyramid level")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="unetseg-giga-"))
    work.mkdir(parents=True, exist_ok=True)
    height = args.height or args.side
    name = f"big{args.side}" if height == args.side else f"big{args.side}x{height}"
    image, model = work / f"{name}.tif", work / f"model{args.width}.safetensors"
    if not image.exists() and not args.skip_tiff:
        t = time.perf_counter()
        write_big_tiff(image, args.side, height=height)
        print(f"wrote {image} ({image.stat().st_size / 2**20:.0f} MiB) in"
              f" {time.perf_counter() - t:.0f} s")
    if args.model:
        model = Path(args.model)
    else:
        write_model(model, args.width)
    rows = []
    if not args.skip_tiff:
        wall, rss = timed([sys.executable, "-m", "unetseg.cli", "predict", str(model),
                           str(image), "--out", str(work / "pred"), "--tile", str(args.tile),
                           "--stream", "--batch-size", "2"])
        rows.append(("unetseg predict (streaming)", wall, rss))
    if args.omezarr:
        ome = work / f"{name}.ome.zarr"
        if not ome.exists():
            t = time.perf_counter()
            write_big_omezarr(ome, args.side, height=height)
            size = sum(f.stat().st_size for f in ome.rglob("*") if f.is_file())
            print(f"wrote {ome} ({size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s")
        wall, rss = timed([sys.executable, "-m", "unetseg.cli", "predict", str(model),
                           str(ome), "--out", str(work / "pred_omezarr"), "--tile",
                           str(args.tile), "--batch-size", "2", "--overwrite-labels"])
        rows.append(("unetseg predict (OME-Zarr)", wall, rss))
        if args.picture:
            save_picture(ome, Path(args.picture), args.picture_side)
    if args.single_strip:
        strip = work / f"{name}_strip.tif"
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
    pixels = args.side * height
    mp = pixels / 1e6
    net = f"model {model.name}" if args.model else f"U-Net width {args.width}"
    print(f"\n{args.side} x {height} ({mp:.0f} MP) uint8 image ({pixels / 2**20:.0f}"
          f" MiB decoded), {net}, tile {args.tile}; whole as float32:"
          f" {pixels * 4 / 2**20:.0f} MiB, its 2-class float32 logits:"
          f" {pixels * 8 / 2**20:.0f} MiB\n")
    print(f"| {'method':<32} | {'wall s':>8} | {'MP/s':>6} | {'peak RSS MiB':>12} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 8}|{'-' * 14}|")
    for name, wall, rss in rows:
        print(f"| {name:<32} | {wall:>8.1f} | {mp / wall:>6.2f} | {rss:>12.0f} |")


if __name__ == "__main__":
    main()
