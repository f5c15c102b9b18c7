"""Speed of U-Nets on this machine: unetseg against peers, in one run, one table.

For each network it measures parameters, GFLOP per forward (1 x 1 x 256 x 256), a training step
(forward + cross-entropy + backward + AdamW, batch 4 x 1 x 256 x 256) in images/s and GFLOP/s,
inference GFLOP/s, tiled prediction of one 2048 x 2048 image in megapixels/s with unetseg's
engine (``ImagePredictor`` with its planned tiling and channels-last weights, what ``unetseg
predict`` runs) and with MONAI's ``sliding_window_inference`` (roi 256, overlap 0.25, Gaussian)
on its own copy of the same weights, in the layout the network was built in, and peak RSS.
For both tiled methods it also prints the redundancy (pixels the network computes per image
pixel) and the GFLOP/s that the measured rate implies: their product bounds the tiled ratio,
since no method can run the network above the machine's peak. It first measures the machine's
FMA peak (a C kernel of independent FMA chains on the widest vectors the CPU has, AVX-512 or
AVX2, one thread per core, when a C compiler is present; otherwise a large sgemm), and
prints each figure as a fraction of it. Every network runs in its own process (so peak RSS is
its own) with the allocator fix applied to all. CPU
utilisation (CPU seconds / wall seconds) is printed beside every timing: a value well under the
thread count means another process held a core and the figures are not to be trusted.

``unetseg`` is the default model (width 64); ``unetseg-w16`` the width that ``unetseg train``
plans for a CPU budget of minutes (:mod:`unetseg.train.plan`).

    pip install -e '.[bench]'
    python benchmarks/speed.py                 # CPU, all networks
    python benchmarks/speed.py --device cuda   # GPU: bf16 autocast, channels_last, compile
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FMA_KERNEL = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#ifdef WIDE
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define STORE _mm256_storeu_ps
#endif
int main(int argc, char **argv) {
  long iters = 200000000L / 8;
  double best = 0;
  for (int rep = 0; rep < 5; rep++) {
    double t0 = omp_get_wtime();
    float sink = 0;
    #pragma omp parallel reduction(+:sink)
    {
      vec a[12]; vec b = SET1(1.0000001f), c = SET1(1e-7f);
      for (int i = 0; i < 12; i++) a[i] = SET1((float)i);
      for (long n = 0; n < iters; n++)
        for (int i = 0; i < 12; i++) a[i] = FMA(a[i], b, c);
      for (int i = 0; i < 12; i++) { float o[LANES]; STORE(o, a[i]); sink += o[0]; }
    }
    double dt = omp_get_wtime() - t0;
    double gflops = 2.0 * LANES * 12 * (double)iters * omp_get_max_threads() / dt / 1e9;
    if (gflops > best) best = gflops;
    if (sink == 42) printf("?");
  }
  printf("%f\n", best);
  return 0;
}
"""


def measure_gpu_peak() -> tuple[float, str]:
    """bf16 matrix-product throughput in GFLOP/s (8192^3, mean of 10 after warm-up)."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    name = torch.cuda.get_device_name()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e9, f"bf16 matmul on {name}"


def measure_peak(threads: int) -> tuple[float, str]:
    """FMA peak in GFLOP/s and how it was measured."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc:
        # the widest FMA the CPU has: PyTorch's kernels use AVX-512 where it exists
        wide = "avx512f" in Path("/proc/cpuinfo").read_text().split() if Path(
            "/proc/cpuinfo").exists() else False
        flags = ["-DWIDE", "-mavx512f"] if wide else ["-mavx2", "-mfma"]
        with tempfile.TemporaryDirectory() as tmp:
            src, exe = Path(tmp) / "fma.c", Path(tmp) / "fma"
            src.write_text(FMA_KERNEL)
            built = subprocess.run([cc, "-O3", *flags, "-fopenmp", str(src), "-o", str(exe)],
                                   capture_output=True)
            if built.returncode == 0:
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                out = subprocess.run([str(exe)], capture_output=True, text=True, env=env)
                isa = "AVX-512" if wide else "AVX2"
                return float(out.stdout.strip()), f"{isa} FMA kernel, {threads} threads"
    import torch

    a = torch.randn(4096, 4096)
    torch.mm(a, a)
    t = time.perf_counter()
    for _ in range(5):
        torch.mm(a, a)
    return 5 * 2 * 4096**3 / (time.perf_counter() - t) / 1e9, "sgemm 4096 (no C compiler)"


# ---------------------------------------------------------------------------- per-network child


def build(name: str) -> Any:
    import torch

    if name == "unetseg":
        from unetseg.model import UNet

        return UNet(1, 2)  # the default model: width 64, depth 4, instance norm
    if name == "unetseg-w16":
        from unetseg.model import UNet

        return UNet(1, 2, width=16)  # what a CPU training budget of minutes plans
    if name == "monai-basicunet":
        from monai.networks.nets import BasicUNet

        return BasicUNet(spatial_dims=2, in_channels=1, out_channels=2)
    if name == "fepegar-unet2d":
        from unet import UNet2D

        return UNet2D(in_channels=1, out_classes=2, padding=1, normalization="batch")
    raise ValueError(name)
    return torch  # pragma: no cover


def count_gflop(model: Any, shape: tuple[int, ...]) -> float:
    """Multiply-adds x 2 of convolutions and linear layers for one forward pass."""
    import torch
    from torch import nn

    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += 2 * inputs[0].numel() * module.out_channels // module.groups * k
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += 2 * output.numel() * module.in_channels // module.groups * k
        elif isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)]
    with torch.no_grad():
        model(torch.zeros(shape))
    for h in handles:
        h.remove()
    return total / 1e9 / shape[0]


def timed(fn: Callable[[], Any], *, warmup: int, reps: int, sync: Callable[[], None]
          ) -> tuple[float, float]:
    """Median seconds per call after warm-up, and CPU utilisation over the timed calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    util = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return statistics.median(times), util


def run_child(name: str, device_name: str, reps: int, tiled: bool, batch: int = 4,
              compile_model: bool = False) -> dict[str, Any]:
    import torch

    from unetseg.runtime import tune_allocator

    tune_allocator()
    torch.manual_seed(0)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model = build(name)
    result: dict[str, Any] = {"name": name,
                              "params": sum(p.numel() for p in model.parameters()),
                              "gflop": count_gflop(model, (1, 1, 256, 256))}
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile_model else model
    step = make_train_step(net, model, device, cuda, batch)
    seconds, util = timed(step, warmup=3, reps=reps, sync=sync)
    result.update(train_images_s=batch / seconds,
                  train_gflops=3 * result["gflop"] * batch / seconds, train_util=util)
    model.eval()
    infer, tiled_fn, peer_fn, engine = make_inference(name, model, device, cuda, compile_model)
    seconds, util = timed(infer, warmup=2, reps=reps, sync=sync)
    result.update(infer_gflops=result["gflop"] * 4 * 4 / seconds, infer_util=util)
    if tiled:
        seconds, util = timed(tiled_fn, warmup=1, reps=max(2, reps // 2), sync=sync)
        result.update(tiled_mps=2048**2 / seconds / 1e6, tiled_util=util)
        seconds, util = timed(peer_fn, warmup=1, reps=max(2, reps // 2), sync=sync)
        result.update(monai_tiled_mps=2048**2 / seconds / 1e6, monai_tiled_util=util)
        tile, overlap, _ = engine.tiling(2048, 2048)
        result.update(tiled_redundancy=redundancy(tile, overlap),
                      monai_redundancy=monai_redundancy())
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def redundancy(tile: int, overlap: float, side: int = 2048) -> float:
    """Pixels a same-padding network computes per pixel of a ``side`` x ``side`` image tiled by
    windows of ``tile`` pixels overlapping by ``overlap`` (unetseg's :func:`tile_starts`)."""
    from unetseg.infer.tiling import tile_starts

    window = min(tile, side)
    return (len(tile_starts(side, window, overlap)) * window / side) ** 2


def monai_redundancy(roi: int = 256, overlap: float = 0.25, side: int = 2048) -> float:
    """The same for MONAI's windows: interval ``int(roi * (1 - overlap))`` and
    ``ceil((side - roi) / interval) + 1`` windows per axis, as its ``dense_patch_slices``."""
    import math

    interval = int(roi * (1 - overlap))
    return ((math.ceil((side - roi) / interval) + 1) * roi / side) ** 2


def make_train_step(net: Any, model: Any, device: Any, cuda: bool, batch: int
                    ) -> Callable[[], None]:
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, 256, 256, device=device)
    y = torch.randint(0, 2, (batch, 256, 256), device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def make_inference(name: str, model: Any, device: Any, cuda: bool, compile_model: bool
                   ) -> tuple[Callable[[], Any], Callable[[], Any], Callable[[], Any], Any]:
    """(batch-4 512^2 forward, unetseg tiled 2048^2, MONAI tiled 2048^2, unetseg's
    ``ImagePredictor``) on the same weights.

    The tiled figure is what ``unetseg predict`` does: :class:`ImagePredictor` with its planned
    tiling and channels-last weights. MONAI gets its own copy of the weights in the layout the
    network was built in, as a MONAI user runs it.
    """
    import copy

    import torch
    from monai.inferers import sliding_window_inference

    from unetseg.config import ModelConfig
    from unetseg.data.normalize import ChannelStats
    from unetseg.infer.engine import ImagePredictor
    from unetseg.infer.fast import fast_predictor
    from unetseg.model import ExternalNet

    peer_model = copy.deepcopy(model).eval()
    if not hasattr(model, "config"):
        model = ExternalNet(model, ModelConfig(arch=name, depth=4, padding="same"))
    engine = ImagePredictor(model, ChannelStats((0.0,), (1.0,)), fast_layout=True)
    fast = fast_predictor(model, device=device, amp=cuda, compile_model=compile_model)
    batch = torch.randn(4, 1, 512, 512, device=device)
    image = torch.randn(1, 1, 2048, 2048, device=device)

    def infer() -> Any:
        return fast(batch)

    def tiled() -> Any:
        return engine.labels(image[0])

    def peer() -> Any:
        with torch.inference_mode():
            return sliding_window_inference(image, roi_size=(256, 256), sw_batch_size=4,
                                            predictor=peer_model, overlap=0.25,
                                            mode="gaussian").argmax(1)

    return infer, tiled, peer, engine


# ----------------------------------------------------------------------------------- report


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def implied_gflops(r: dict[str, Any], mps_key: str, redundancy_key: str) -> float | None:
    """GFLOP/s at which a tiled method ran the network: megapixels/s x redundancy x GFLOP per
    megapixel of one forward pass."""
    if mps_key not in r or redundancy_key not in r:
        return None
    return float(r[mps_key] * r[redundancy_key] * r["gflop"] * 1e6 / 256**2)


def report(results: list[dict[str, Any]], peak: float, how: str, device: str) -> str:
    def pct(gflops: float | None) -> str:
        return "-" if gflops is None else f"{gflops:.0f} ({100 * gflops / peak:.0f} %)"

    lines = [f"device {device}; peak {peak:.1f} GFLOP/s ({how})", "",
             "| network | params M | GFLOP/fwd | train img/s | train GFLOP/s (% peak) | util |"
             " infer GFLOP/s (% peak) | util | tiled 2048² MP/s unetseg | MONAI swi MP/s |"
             " tiled ratio | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.2f} | {r['gflop']:.2f} |"
            f" {r['train_images_s']:.2f} | {r['train_gflops']:.1f}"
            f" ({100 * r['train_gflops'] / peak:.0f} %) | {r['train_util']:.2f} |"
            f" {r['infer_gflops']:.1f} ({100 * r['infer_gflops'] / peak:.0f} %) |"
            f" {r['infer_util']:.2f} | {r.get('tiled_mps', 0):.3f} |"
            f" {r.get('monai_tiled_mps', 0):.3f} |"
            f" {ratio(r.get('tiled_mps'), r.get('monai_tiled_mps'))} |"
            f" {r['peak_rss_mib']:.0f} |")
    tiled = [r for r in results if "tiled_redundancy" in r]
    if tiled:
        lines += ["", "Tiled 2048²: pixels computed per image pixel, and the GFLOP/s (% peak) at"
                  " which each method ran the network. The tiled ratio can reach at most"
                  " (MONAI's redundancy / unetseg's) x (peak / MONAI's GFLOP/s).", "",
                  "| network | unetseg redundancy | MONAI redundancy | unetseg GFLOP/s |"
                  " MONAI GFLOP/s | util unetseg / MONAI | bound on the ratio |",
                  "|---|---|---|---|---|---|---|"]
        for r in tiled:
            ours = implied_gflops(r, "tiled_mps", "tiled_redundancy")
            theirs = implied_gflops(r, "monai_tiled_mps", "monai_redundancy")
            bound = r["monai_redundancy"] / r["tiled_redundancy"] * peak / theirs if theirs else 0
            lines.append(
                f"| {r['name']} | {r['tiled_redundancy']:.2f} | {r['monai_redundancy']:.2f} |"
                f" {pct(ours)} | {pct(theirs)} |"
                f" {r['tiled_util']:.2f} / {r['monai_tiled_util']:.2f} | {bound:.2f}x |")
    ours = next((r for r in results if r["name"] == "unetseg"), None)
    if ours:
        lines.append("")
        for r in results:
            if r is not ours:
                train = ratio(ours["train_gflops"], r["train_gflops"])
                infer = ratio(ours["infer_gflops"], r["infer_gflops"])
                tiled_ratio = ratio(ours.get("tiled_mps"), r.get("tiled_mps"))
                lines.append(f"unetseg / {r['name']}: train GFLOP/s {train}, infer GFLOP/s"
                             f" {infer}, tiled MP/s (each on its own network) {tiled_ratio}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--networks",
                        default="unetseg,unetseg-w16,monai-basicunet,fepegar-unet2d")
    parser.add_argument("--no-tiled", action="store_true")
    parser.add_argument("--batch", type=int, default=4, help="training batch (default 4)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every network")
    parser.add_argument("--out", default=None, help="also write the table (Markdown) here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.device, args.reps, not args.no_tiled,
                                   args.batch, args.compile)))
        return
    import torch

    threads = torch.get_num_threads()
    peak, how = measure_peak(threads) if args.device == "cpu" else measure_gpu_peak()
    results = []
    for name in args.networks.split(","):
        cmd = [sys.executable, __file__, "--child", name, "--device", args.device, "--reps",
               str(args.reps), "--batch", str(args.batch)]
        cmd += (["--no-tiled"] if args.no_tiled else []) + (["--compile"] if args.compile else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"measured {name}", file=sys.stderr)
    table = report(results, peak, how, args.device)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
