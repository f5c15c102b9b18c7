"""Speed and memory of 3D U-Nets on this machine: unetseg against MONAI, in one run.

Three measurements, each contender in its own fresh process (so its peak RSS, ``VmHWM`` of
``/proc/self/status``, is its own; the allocator fix of the command line applied to all):

(a) Training step: forward, cross-entropy, backward and AdamW on a batch of ``--batch`` x 1 x
    ``--patch``³ random voxels, median seconds per step after warm-up, for unetseg's
    ``UNet(spatial_dims=3)`` (width ``--width``, depth ``--depth``, instance norm: what
    ``unetseg train`` builds for isotropic volumes), MONAI's ``UNet`` with the same channels
    and strides and two residual units per level (MONAI's 3D tutorials), and MONAI's
    ``BasicUNet`` with features (w, 2w, 4w, 8w, 16w, w) (its depth is always 4). Parameters,
    s/step and each peer's s/step over unetseg's.

(b) Sliding-window prediction of a ``--size``³ float32 volume (random voxels) with windows of
    ``--roi``³ overlapping by ``--overlap``, ``--sw-batch`` windows per call, Gaussian blending:
    unetseg's :func:`~unetseg.infer.volume.sliding_window_volume_logits` against MONAI's
    ``sliding_window_inference(mode="gaussian")`` (run as MONAI's users run it: whole volume in,
    whole logits out, no buffering), both on the same network with the same weights (one model
    file, loaded by each process). Seconds, peak RSS and its rise over the process before the
    prediction (imports, model and input volume held); then the two logits are compared: the
    largest absolute difference and the share of voxels whose arg-max differs. The windows sit
    at the same places in both when ``--size - --roi`` is a multiple of MONAI's stride
    ``int(roi * (1 - overlap))`` (the report says whether they do). The two Gaussians differ
    only in scale (unetseg's peaks at 1, MONAI's at its value half a voxel off the centre of
    an even side) and both clamp at 1e-3, so where a clamped weight meets an unclamped one the
    blend differs by up to 1 - MONAI's peak (0.6 % at roi 64, 9 % at roi 16); with unetseg's
    weight map given to MONAI the two agree to rounding (the tests check it).

(c) Streamed prediction: a uint8 ``.npy`` volume of ``--stream-slices`` x ``--size`` x
    ``--size`` voxels on disk (4 x --size slices by default; an eighth of its float32 logits
    at 2 classes), predicted to a label file by
    :func:`unetseg.api.predict_volumes` (the 3D sliding window of (b)), with its seconds and
    peak RSS against the sizes of the whole volume as float32 and of its float32 logits, and
    the slab streaming needs: logits and weights of one window depth plus one stride of slices,
    and one window depth of input. Peak memory bounded by the slab, not the volume, is the goal;
    a rise above the logits' size means the whole volume was held.

``--smoke`` runs every part at toy sizes in seconds (width 2, depth 2, patch 32, a 32³ volume,
windows of 16), to check that the script runs; its figures mean nothing.

    pip install -e '.[bench]'
    python benchmarks/speed3d.py --reps 3 --out speed3d          # speed3d/results.md, .json
    python benchmarks/speed3d.py --parts window,stream --size 192 --threads 2
    python benchmarks/speed3d.py --smoke --out /tmp/speed3d-smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from speed import timed

PARTS = ("train", "window", "stream")
NETWORKS = ("unetseg", "monai-unet", "monai-basicunet")
NUM_CLASSES = 2
SMOKE = {"width": 2, "depth": 2, "patch": 32, "batch": 2, "size": 32, "roi": 16,
         "overlap": 0.5, "sw_batch": 2, "stream_slices": 64, "reps": 1, "warmup": 1,
         "threads": 1}
"""The toy sizes of ``--smoke``: the roi divides the volume as MONAI's stride does; one thread,
since idle-spinning workers make toy models many times slower on a busy CPU."""


# ------------------------------------------------------------------------------ networks


def build_network(name: str, width: int, depth: int) -> Any:
    """A 3D network for 1 input channel and :data:`NUM_CLASSES` classes, with channels
    ``width * 2**level`` at levels 0..depth (BasicUNet: always 4 poolings)."""
    widths = tuple(width * 2**level for level in range(depth + 1))
    if name == "unetseg":
        from unetseg.model import UNet

        return UNet(1, NUM_CLASSES, width=width, depth=depth, spatial_dims=3)
    if name == "monai-unet":
        from monai.networks.nets import UNet as MonaiUNet

        return MonaiUNet(spatial_dims=3, in_channels=1, out_channels=NUM_CLASSES,
                         channels=widths, strides=(2,) * depth, num_res_units=2)
    if name == "monai-basicunet":
        from monai.networks.nets import BasicUNet

        return BasicUNet(spatial_dims=3, in_channels=1, out_channels=NUM_CLASSES,
                         features=(width, 2 * width, 4 * width, 8 * width, 16 * width, width))
    raise ValueError(f"unknown network {name}; choose from {', '.join(NETWORKS)}")


def write_model(path: Path, width: int, depth: int) -> Path:
    """A unetseg model file of the 3D network of (a) with seeded random weights (speed and
    memory do not depend on the weights)."""
    import torch

    from unetseg.data.classes import ClassTable
    from unetseg.data.normalize import ChannelStats
    from unetseg.model import UNet
    from unetseg.modelfile import ModelCard, save_model

    torch.manual_seed(0)
    model = UNet(1, NUM_CLASSES, width=width, depth=depth, spatial_dims=3).eval()
    save_model(path, model, ModelCard(model.config, ClassTable.from_values((0, 1)),
                                      ChannelStats((0.5,), (0.2,))))
    return path


# ------------------------------------------------------------------ the two sliding windows


def monai_volume_logits(model: Any, volume: Any, roi: int, overlap: float, batch_size: int,
                        weight: Any = None) -> Any:
    """MONAI's Gaussian sliding window over ``volume`` ``(C, D, H, W)`` with ``model`` (any
    ``(B, C, d, h, w) -> (B, K, d, h, w)`` network, unetseg's included): logits
    ``(K, D, H, W)``, as :func:`~unetseg.infer.volume.sliding_window_volume_logits` returns.
    ``weight`` ``(roi, roi, roi)`` replaces MONAI's own Gaussian (to check that the two sum the
    same windows alike)."""
    import torch
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        return sliding_window_inference(volume[None], roi_size=(roi,) * 3,
                                        sw_batch_size=batch_size, predictor=model,
                                        overlap=overlap, mode="gaussian",
                                        roi_weight_map=weight)[0]


def unetseg_volume_logits(model: Any, volume: Any, roi: int, overlap: float, batch_size: int
                          ) -> Any:
    """unetseg's Gaussian sliding window, the call :func:`monai_volume_logits` mirrors."""
    import torch

    from unetseg.infer.volume import sliding_window_volume_logits

    with torch.inference_mode():
        return sliding_window_volume_logits(model, volume, (roi,) * 3, overlap=overlap,
                                            batch_size=batch_size)


def same_windows(shape: tuple[int, int, int], roi: int, overlap: float) -> bool:
    """Whether unetseg and MONAI place their windows at the same voxels over ``shape``."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    from unetseg.infer.volume import volume_windows

    rois = (roi,) * 3
    interval = _get_scan_interval(shape, rois, 3, (overlap,) * 3)
    theirs = {tuple((s.start, s.stop) for s in w) for w in dense_patch_slices(shape, rois,
                                                                              interval)}
    ours = {tuple((s.start, s.stop) for s in w) for w in volume_windows(shape, rois, overlap)}
    return theirs == ours


def random_volume(side: int, seed: int = 0) -> Any:
    """A ``(1, side, side, side)`` float32 volume of standard normal voxels."""
    import torch

    return torch.randn(1, side, side, side, generator=torch.Generator().manual_seed(seed))


def compare_logits(a_path: Path, b_path: Path, chunk: int = 16) -> dict[str, float]:
    """Largest absolute difference of two ``(K, D, H, W)`` logits ``.npy`` files and the share
    of voxels whose arg-max differs, read ``chunk`` slices at a time."""
    a, b = np.load(a_path, mmap_mode="r"), np.load(b_path, mmap_mode="r")
    if a.shape != b.shape:
        raise ValueError(f"logits of shapes {a.shape} and {b.shape}")
    worst, differ = 0.0, 0
    for z in range(0, a.shape[1], chunk):
        x, y = np.asarray(a[:, z:z + chunk]), np.asarray(b[:, z:z + chunk])
        worst = max(worst, float(np.abs(x - y).max()))
        differ += int((x.argmax(0) != y.argmax(0)).sum())
    return {"max_abs_diff": worst, "labels_differ": differ / math.prod(a.shape[1:]),
            "max_abs_logit": float(max(np.abs(a).max(), np.abs(b).max()))}


# --------------------------------------------------------------------------- memory


def rss_mib(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident set in MiB, from
    ``/proc/self/status``; elsewhere the peak from ``getrusage``."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mib(nbytes: float) -> float:
    return nbytes / 2**20


def slab_mib(side: int, roi: int, overlap: float) -> float:
    """What streaming holds of a volume ``side`` voxels wide: float32 logits and weight sums of
    one window depth plus one stride of slices, and one window depth of float32 input."""
    from unetseg.infer.tiling import max_stride

    held = roi + max_stride(roi, overlap)
    return mib(side * side * 4 * (held * (NUM_CLASSES + 1) + roi))


def write_stream_volume(path: Path, slices: int, side: int, chunk: int = 32) -> Path:
    """A uint8 ``(slices, side, side)`` ``.npy`` of random voxels, written ``chunk`` slices at a
    time (never whole in memory)."""
    rng = np.random.default_rng(0)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(slices, side, side))
    for z in range(0, slices, chunk):
        n = min(chunk, slices - z)
        out[z:z + n] = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
    out.flush()
    del out
    return path


# ---------------------------------------------------------------------------- children


def child_train(job: dict[str, Any]) -> dict[str, Any]:
    """(a) for one network: parameters and median seconds per training step."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = build_network(job["net"], job["width"], job["depth"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    shape = (job["batch"], job["patch"], job["patch"], job["patch"])
    x = torch.randn(shape[0], 1, *shape[1:])
    y = torch.randint(0, NUM_CLASSES, shape)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds, util = timed(step, warmup=job["warmup"], reps=job["reps"], sync=lambda: None)
    return {"name": job["net"], "params": sum(p.numel() for p in model.parameters()),
            "s_per_step": seconds, "util": util, "peak_rss_mib": rss_mib()}


def child_window(job: dict[str, Any]) -> dict[str, Any]:
    """(b) for one method: seconds and peak RSS of one sliding-window prediction; the logits
    go to ``job["logits"]`` for the comparison."""
    import torch

    from unetseg.modelfile import load_model

    model, _ = load_model(job["model"], torch.device("cpu"))
    model.eval()
    volume = random_volume(job["size"])
    run = unetseg_volume_logits if job["method"] == "unetseg" else monai_volume_logits
    run(model, volume[:, :job["roi"], :job["roi"], :job["roi"]], job["roi"], job["overlap"],
        job["sw_batch"])  # warm-up: one window
    before = rss_mib("VmRSS")
    cpu0, began = time.process_time(), time.perf_counter()
    logits = run(model, volume, job["roi"], job["overlap"], job["sw_batch"])
    seconds = time.perf_counter() - began
    util = (time.process_time() - cpu0) / seconds
    peak = rss_mib()
    np.save(job["logits"], logits.float().numpy())
    return {"name": job["method"], "seconds": seconds, "util": util, "peak_rss_mib": peak,
            "before_mib": before}


def child_stream(job: dict[str, Any]) -> dict[str, Any]:
    """(c): seconds and peak RSS of :func:`unetseg.api.predict_volumes` on a volume file, after
    a warm-up on one window's worth of voxels (``job["warm"]``), so that the rise over the
    process before counts the prediction, not the imports and the model."""
    from unetseg.api import predict_volumes

    options = {"tile": job["roi"], "overlap": job["overlap"], "batch_size": job["sw_batch"],
               "device": "cpu", "overlays": False, "show_progress": False}
    predict_volumes(job["model"], job["warm"], Path(job["out"]) / "warm", **options)
    before = rss_mib("VmRSS")
    cpu0, began = time.process_time(), time.perf_counter()
    written = predict_volumes(job["model"], job["volume"], job["out"], **options)
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "util": (time.process_time() - cpu0) / seconds,
            "peak_rss_mib": rss_mib(), "before_mib": before, "labels": str(written[0])}


CHILDREN = {"train": child_train, "window": child_window, "stream": child_stream}


def run_child(job: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """``job`` in a fresh process of this script; its result, or ``{"error": ...}``."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"{job['kind']} {job.get('net') or job.get('method') or ''} failed:\n"
              f"{proc.stderr[-3000:]}", file=sys.stderr)
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                else f"exit {proc.returncode}"}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def child_main(text: str) -> None:
    import torch

    from unetseg.runtime import tune_allocator

    tune_allocator()
    job = json.loads(text)
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    print(json.dumps(CHILDREN[job["kind"]](job)))


# -------------------------------------------------------------------------------- runs


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every part named in ``args.parts``, each contender in its own process."""
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"--parts {unknown[0]}: choose from {', '.join(PARTS)}")
    common = {"width": args.width, "depth": args.depth, "threads": args.threads}
    results: dict[str, Any] = {"settings": {**vars(args), "cpu_count": os.cpu_count()}}
    if "train" in parts:
        results["train"] = [{**run_child({**common, "kind": "train", "net": net,
                                          "patch": args.patch, "batch": args.batch,
                                          "reps": args.reps, "warmup": args.warmup},
                                         args.threads), "name": net} for net in NETWORKS]
        print("measured (a) training steps", file=sys.stderr)
    model = write_model(work / "model3d.safetensors", args.width, args.depth)
    sizes = {"roi": args.roi, "overlap": args.overlap, "sw_batch": args.sw_batch,
             "threads": args.threads, "model": str(model)}
    if "window" in parts:
        rows = []
        for method in ("unetseg", "monai"):
            logits = work / f"logits-{method}.npy"
            rows.append({**run_child({**sizes, "kind": "window", "method": method,
                                      "size": args.size, "logits": str(logits)}, args.threads),
                         "name": method})
        window: dict[str, Any] = {"rows": rows, "shape": [args.size] * 3,
                                  "volume_mib": mib(args.size**3 * 4),
                                  "logits_mib": mib(NUM_CLASSES * args.size**3 * 4),
                                  "same_windows": same_windows((args.size,) * 3, args.roi,
                                                               args.overlap)}
        if all("error" not in r for r in rows):
            window.update(compare_logits(work / "logits-unetseg.npy",
                                         work / "logits-monai.npy"))
        for method in ("unetseg", "monai"):
            (work / f"logits-{method}.npy").unlink(missing_ok=True)
        results["window"] = window
        print("measured (b) sliding windows", file=sys.stderr)
    if "stream" in parts:
        volume = write_stream_volume(work / "stream.npy", args.stream_slices, args.size)
        warm = write_stream_volume(work / "warm.npy", args.roi, min(args.roi, args.size))
        voxels = args.stream_slices * args.size**2
        row = run_child({**sizes, "kind": "stream", "volume": str(volume), "warm": str(warm),
                         "out": str(work / "stream-labels")}, args.threads)
        results["stream"] = {**row, "shape": [args.stream_slices, args.size, args.size],
                             "uint8_mib": mib(voxels), "volume_mib": mib(voxels * 4),
                             "logits_mib": mib(NUM_CLASSES * voxels * 4),
                             "slab_mib": slab_mib(args.size, args.roi, args.overlap)}
        volume.unlink()
        print("measured (c) streamed prediction", file=sys.stderr)
    return results


def report(results: dict[str, Any]) -> str:
    """The Markdown report of :func:`measure`'s results."""
    s = results["settings"]
    threads = s["threads"] or "torch's default"
    lines = [f"# 3D U-Nets: unetseg and MONAI, one run ({s['cpu_count']} CPUs, {threads}"
             f" threads{', SMOKE: toy sizes, figures mean nothing' if s['smoke'] else ''})", ""]
    if "train" in results:
        rows = results["train"]
        base = next((r.get("s_per_step") for r in rows if r["name"] == "unetseg"), None)
        lines += [f"## (a) Training step: batch {s['batch']} x 1 x {s['patch']}³, cross-entropy,"
                  f" AdamW; width {s['width']}, depth {s['depth']} (BasicUNet: 4)", "",
                  "| network | params | s/step | s/step over unetseg's | CPU util |"
                  " peak RSS MiB |", "|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['name']} | failed: {r['error']} | | | | |")
                continue
            ratio = f"{r['s_per_step'] / base:.2f}x" if base else "-"
            lines.append(f"| {r['name']} | {r['params']:,} | {r['s_per_step']:.3f} | {ratio} |"
                         f" {r['util']:.2f} | {r['peak_rss_mib']:.0f} |")
        lines.append("")
    if "window" in results:
        w = results["window"]
        side = w["shape"][0]
        base = next((r.get("seconds") for r in w["rows"] if r["name"] == "unetseg"), None)
        lines += [f"## (b) Sliding window over a {side}³ float32 volume"
                  f" ({w['volume_mib']:.0f} MiB; logits {w['logits_mib']:.0f} MiB): roi"
                  f" {s['roi']}³, overlap {s['overlap']}, {s['sw_batch']} windows per call,"
                  " Gaussian, the same weights", "",
                  "| method | s | Mvoxel/s | s over unetseg's | CPU util | peak RSS MiB |"
                  " rise over the process before MiB |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in w["rows"]:
            if "error" in r:
                lines.append(f"| {r['name']} | failed: {r['error']} | | | | | |")
                continue
            ratio = f"{r['seconds'] / base:.2f}x" if base else "-"
            lines.append(f"| {r['name']} | {r['seconds']:.2f} | {side**3 / r['seconds'] / 1e6:.2f}"
                         f" | {ratio} | {r['util']:.2f} | {r['peak_rss_mib']:.0f} |"
                         f" {r['peak_rss_mib'] - r['before_mib']:.0f} |")
        lines.append("")
        where = "the same" if w["same_windows"] else "NOT the same (the outputs differ more)"
        if "max_abs_diff" in w:
            lines.append(f"Windows at {where} voxels in both. Logits: largest absolute"
                         f" difference {w['max_abs_diff']:.2e} (largest |logit|"
                         f" {w['max_abs_logit']:.2f}); arg-max differs on"
                         f" {100 * w['labels_differ']:.4f} % of the voxels. The Gaussians"
                         " differ in scale and both clamp at 1e-3: where a clamped weight"
                         " meets an unclamped one the blends differ by up to 1 - MONAI's"
                         " peak.")
        lines.append("")
    if "stream" in results:
        c = results["stream"]
        d, h, wd = c["shape"]
        lines += [f"## (c) Streamed prediction: `unetseg.api.predict_volumes` of a {d} x {h} x"
                  f" {wd} uint8 .npy ({c['uint8_mib']:.0f} MiB) to a label file, roi"
                  f" {s['roi']}³, overlap {s['overlap']}", ""]
        if "error" in c:
            lines.append(f"failed: {c['error']}")
        else:
            rise = c["peak_rss_mib"] - c["before_mib"]
            lines += ["| float32 volume MiB | float32 logits MiB | slab MiB | s | Mvoxel/s |"
                      " peak RSS MiB | rise over the process before MiB | rise / logits |",
                      "|---:|---:|---:|---:|---:|---:|---:|---:|",
                      f"| {c['volume_mib']:.0f} | {c['logits_mib']:.0f} | {c['slab_mib']:.0f} |"
                      f" {c['seconds']:.2f} | {d * h * wd / c['seconds'] / 1e6:.2f} |"
                      f" {c['peak_rss_mib']:.0f} | {rise:.0f} | {rise / c['logits_mib']:.2f} |",
                      "", "The slab is what streaming must hold (logits and weights of one window"
                      " depth plus one stride of slices, one window depth of input); a rise"
                      " above the logits' size means the whole volume was held.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated parts to run ({', '.join(PARTS)})")
    p.add_argument("--width", type=int, default=16, help="first-level channels (16)")
    p.add_argument("--depth", type=int, default=4, help="poolings of unetseg and MONAI UNet")
    p.add_argument("--patch", type=int, default=64, help="(a) training patch side (64)")
    p.add_argument("--batch", type=int, default=2, help="(a) training batch (2)")
    p.add_argument("--size", type=int, default=256, help="(b) volume side, (c) slice side")
    p.add_argument("--roi", type=int, default=64, help="(b, c) window side (64)")
    p.add_argument("--overlap", type=float, default=0.25,
                   help="(b, c) window overlap, a fraction of the side (0.25, MONAI's default)")
    p.add_argument("--sw-batch", type=int, default=2, help="(b, c) windows per call (2)")
    p.add_argument("--stream-slices", type=int, default=None,
                   help="(c) slices of the streamed volume (4 x --size)")
    p.add_argument("--reps", type=int, default=3, help="(a) timed steps (3)")
    p.add_argument("--warmup", type=int, default=2, help="(a) untimed steps first (2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (its default)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for results.md and results.json")
    p.add_argument("--smoke", action="store_true", help="toy sizes: checks that it runs")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    args.stream_slices = args.stream_slices or 4 * args.size
    with tempfile.TemporaryDirectory(prefix="unetseg-speed3d-") as tmp:
        results = measure(args, Path(tmp))
    results["settings"]["out"] = str(args.out) if args.out else None
    text = report(results)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(text + "\n")
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
