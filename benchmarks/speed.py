"""Speed of U-Nets on this machine: unetseg against peers, in one run.

First the peaks every percentage is a fraction of. The fp32 peak is the best reading of the C
kernels in ``peak.c``: 10 to 24 independent FMA chains per thread (enough to cover latency x
throughput on both FMA ports), on every vector width the CPU has (AVX2, and AVX-512 where
present: on AMD Zen 4 it is double-pumped and may read no more than AVX2), one OpenMP thread per
core pinned (``OMP_PLACES=cores``), 0.5 s per repetition after a warm-up as long, best of 5,
measured before and after the networks (the better reading of each kernel counts).
Beside it, PyTorch's fp32 4096² matmul on the same threads as a sanity check. Where the CPU
multiplies bf16 natively (AVX512-BF16, AMX-BF16) a bf16 peak is measured the same way
(``vdpbf16ps``; ``tdpbf16ps`` tiles with AMX), with PyTorch's bf16 matmul beside it. Without a
C compiler the matmul rates stand in for the peaks, and the report says so. If any rate the
run measures (matmul, training, inference, the network inside the tiled path) exceeds its
peak, the report prints the rates without percentages and says the peak is not an upper
bound.

Then, for each network, in its own process (so peak RSS is its own, with the allocator fix
applied to all): parameters, GFLOP per forward (1 x 1 x 256 x 256), a training step (forward
+ cross-entropy + backward + AdamW, batch 4 x 1 x 256 x 256) in images/s and GFLOP/s,
inference GFLOP/s (4 x 1 x 512 x 512), tiled prediction of one 2048 x 2048 image in
megapixels/s with unetseg's engine (``ImagePredictor`` with its planned tiling and channels-last
weights, what ``unetseg predict`` runs) and with MONAI's ``sliding_window_inference`` (roi 256,
overlap 0.25, Gaussian) on its own copy of the same weights, fp32, as MONAI's users run it, and
the redundancy (pixels the network computes per image pixel) and implied GFLOP/s of both tiled
methods: their product bounds the tiled ratio. Where bf16 is native, the same in bf16, both
with ``torch.autocast(device_type="cpu", dtype=torch.bfloat16)`` and with the model cast to
bf16 (the faster is used and named; the tiled case runs the mode that was faster on
inference), with the share of tiled pixels whose class differs from fp32's. For unetseg's own
networks the ONNX Runtime backend: the model exported by ``unetseg.export`` and run through
unetseg's ONNX predictor (:mod:`unetseg.infer.backends`) for inference and the tiled case. Where
the tiled prediction spends its time (the network's forward passes and their GFLOP/s, the
Gaussian blending, the argmax), and with ``--profile`` PyTorch profiler tables of one training
step and one inference call. Finally the cold single-image case (``benchmarks/cold_start.py``):
``unetseg predict`` of a 512 x 512 PNG with the default network from a fresh process to its
exit, its breakdown, and the forward pass alone; and the goals: fp32 inference and training as
% of the peak, the tiled ratio against MONAI in fp32 (with its bound) and unetseg in bf16
against MONAI in fp32. CPU utilisation (CPU seconds / wall seconds) is printed beside every
timing: a value well under the thread count means another process held a core and the
figures are not to be trusted.

``unetseg`` is the default model (width 64); ``unetseg-w16`` the width that ``unetseg train``
plans for a CPU budget of minutes (:mod:`unetseg.train.plan`); ``unetseg-residual``,
``-attention``, ``-nested``, ``-resnet18``, ``-resnet34``, ``-resnet50`` the built-in variants
at their default widths (``--networks variants`` names them all).

    pip install -e '.[bench,export]'
    python benchmarks/speed.py --reps 3 --out speed.md --json speed.json   # CPU, everything
    python benchmarks/speed.py --peak-only     # the peaks and the matmul rates alone
    python benchmarks/speed.py --networks unetseg --profile   # where the time goes
    python benchmarks/speed.py --device cuda   # GPU: bf16 autocast, channels_last, compile
    python benchmarks/speed.py --networks unetseg,variants --out speed-variants.md
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

PEAK_SOURCE = Path(__file__).with_name("peak.c")
FP32_KERNELS = {"avx2": ("avx2_10", "avx2_12", "avx2_14"),
                "avx512f": ("avx512_12", "avx512_16", "avx512_24")}
"""The kernels of ``peak.c`` per CPU flag: each ISA with several numbers of independent
accumulator chains (the FMA latency x throughput of the core decides which is enough)."""
BF16_KERNELS = {"avx512_bf16": ("bf16_12", "bf16_16", "bf16_24"), "amx_bf16": ("amx",)}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty elsewhere)."""
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return set()
    for line in info.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    import platform

    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def native_bf16(flags: set[str]) -> bool:
    """Whether the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16)."""
    return bool(flags & set(BF16_KERNELS))


def run_kernels(names: list[str], threads: int, seconds: float = 0.5, reps: int = 5
                ) -> dict[str, float]:
    """GFLOP/s of each named kernel of ``peak.c`` on ``threads`` threads pinned one per core
    (empty without a C compiler or OpenMP; a kernel that fails is left out)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc or not names:
        return {}
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "peak"
        built = subprocess.run([cc, "-O3", "-fopenmp", str(PEAK_SOURCE), "-o", str(exe)],
                               capture_output=True, text=True)
        if built.returncode != 0:
            print(f"peak.c did not build:\n{built.stderr[-2000:]}", file=sys.stderr)
            return {}
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_PLACES": "cores",
               "OMP_PROC_BIND": "spread"}
        for name in names:
            out = subprocess.run([str(exe), name, str(seconds), str(reps)], capture_output=True,
                                 text=True, env=env)
            if out.returncode == 0:
                rate, *cpus = out.stdout.split()
                rates[name] = float(rate)
                if len(set(cpus)) < threads:
                    print(f"peak kernel {name}: {threads} threads ran on CPUs {cpus}, not one"
                          " per core", file=sys.stderr)
            else:
                print(f"peak kernel {name} failed: {out.stderr.strip()}", file=sys.stderr)
    return rates


def matmul_rate(dtype: Any, side: int = 4096, reps: int = 5) -> float:
    """GFLOP/s of PyTorch's ``side``² matrix product in ``dtype`` on its threads (best of
    ``reps`` after a warm-up)."""
    import torch

    a, b = torch.randn(side, side).to(dtype), torch.randn(side, side).to(dtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        started = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * side**3 / (time.perf_counter() - started) / 1e9)
    return best


def measure_gpu_peak() -> dict[str, Any]:
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
    rate = 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e9
    return {"fp32": rate, "fp32_how": f"bf16 matmul on {name}", "kernels": {}, "cpu": name,
            "torch": torch.__version__}


def measure_peak(threads: int, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """The CPU's fp32 peak (and bf16 peak where bf16 is native) in GFLOP/s, how each was
    measured, every kernel's reading, and PyTorch's 4096² matmul rates beside them.

    The fp32 peak is the best of ``peak.c``'s FMA kernels on every vector width the CPU has
    (AVX2, and AVX-512 where present: on AMD Zen 4 AVX-512 is double-pumped and both read the
    same); the bf16 peak the best of its ``vdpbf16ps`` (AVX512-BF16) and AMX kernels. Without a
    C compiler the matmul rates stand in for the peaks, and say so. With ``earlier`` (the
    result of a first measurement) every reading is the higher of the two: another process
    can only slow a reading down, so measuring both before and after a long run catches a
    quiet moment.
    """
    import torch

    flags = cpu_flags()
    fp32_names = [k for flag, names in FP32_KERNELS.items() if flag in flags for k in names]
    bf16 = native_bf16(flags)
    bf16_names = [k for flag, names in BF16_KERNELS.items() if flag in flags for k in names]
    old = earlier or {}
    kernels = run_kernels(fp32_names + bf16_names, threads)
    kernels = {k: max(v, old.get("kernels", {}).get(k, 0.0)) for k, v in
               {**old.get("kernels", {}), **kernels}.items()}
    when = ", the better of before and after the networks" if earlier else ""
    result: dict[str, Any] = {"kernels": kernels, "threads": threads, "cpu": cpu_name(),
                              "torch": torch.__version__,
                              "matmul_fp32": max(matmul_rate(torch.float32),
                                                 old.get("matmul_fp32", 0.0))}
    fp32 = {k: v for k, v in kernels.items() if k in fp32_names}
    if fp32:
        best = max(fp32, key=fp32.__getitem__)
        result.update(fp32=fp32[best], fp32_how=f"FMA kernel {best} (best of {len(fp32)}:"
                      f" {', '.join(sorted(fp32))}), {threads} threads one per core{when}")
    else:
        result.update(fp32=result["matmul_fp32"],
                      fp32_how="PyTorch's fp32 matmul 4096² (no FMA kernel could run)")
    if bf16:
        result["matmul_bf16"] = max(matmul_rate(torch.bfloat16), old.get("matmul_bf16", 0.0))
        low = {k: v for k, v in kernels.items() if k in bf16_names}
        if low:
            best = max(low, key=low.__getitem__)
            result.update(bf16=low[best], bf16_how=f"bf16 kernel {best} (best of {len(low)}:"
                          f" {', '.join(sorted(low))}), {threads} threads one per core{when}")
        else:
            result.update(bf16=result["matmul_bf16"],
                          bf16_how="PyTorch's bf16 matmul 4096² (no bf16 kernel could run)")
    return result


# ---------------------------------------------------------------------------- per-network child


VARIANTS = ("residual", "attention", "nested", "resnet18", "resnet34", "resnet50")
"""The built-in variants, measured as ``unetseg-<arch>`` (``--networks unetseg,variants``)."""


def network_names(text: str) -> list[str]:
    """The networks ``--networks`` names, ``variants`` expanded to every built-in variant."""
    names: list[str] = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        names += [f"unetseg-{v}" for v in VARIANTS] if name == "variants" else [name]
    return names


def build(name: str) -> Any:
    import torch

    if name == "unetseg":
        from unetseg.model import UNet

        return UNet(1, 2)  # the default model: width 64, depth 4, instance norm
    if name == "unetseg-w16":
        from unetseg.model import UNet

        return UNet(1, 2, width=16)  # what a CPU training budget of minutes plans
    if name.removeprefix("unetseg-") in VARIANTS:
        from unetseg.config import ModelConfig
        from unetseg.model import build_model

        # each variant's default width: 64, U-Net++ 32, the ResNet decoders 16
        return build_model(ModelConfig(1, 2, arch=name.removeprefix("unetseg-")))
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


BF16_MODES = ("autocast", "cast")
"""bf16 on the CPU either way: ``torch.autocast(device_type="cpu", dtype=torch.bfloat16)``
around fp32 weights, or the model cast to bf16 (``model.to(torch.bfloat16)``)."""


def run_child(name: str, device_name: str, reps: int, tiled: bool, batch: int = 4,
              compile_model: bool = False, bf16: bool = False, onnx: bool = False,
              profile: bool = False) -> dict[str, Any]:
    import copy

    import torch

    from unetseg.runtime import tune_allocator

    tune_allocator()
    torch.manual_seed(0)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model = build(name)
    result: dict[str, Any] = {"name": name, "threads": torch.get_num_threads(),
                              "params": sum(p.numel() for p in model.parameters()),
                              "gflop": count_gflop(model, (1, 1, 256, 256))}
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile_model else model
    step = make_train_step(net, model, device, batch, amp=cuda)
    seconds, util = timed(step, warmup=3, reps=reps, sync=sync)
    result.update(train_images_s=batch / seconds,
                  train_gflops=3 * result["gflop"] * batch / seconds, train_util=util)
    if profile:
        result["profile_train"] = profiled(step)
    if bf16:
        for mode in BF16_MODES:
            m = copy.deepcopy(model)
            if mode == "cast":
                m = m.to(torch.bfloat16)
            seconds, util = timed(make_train_step(m, m, device, batch, amp=mode == "autocast"),
                                  warmup=2, reps=reps, sync=sync)
            result[f"bf16_{mode}_train_gflops"] = 3 * result["gflop"] * batch / seconds
            result[f"bf16_{mode}_train_util"] = util
            del m
        pick_faster(result, "train")
    model.eval()
    reference = copy.deepcopy(model) if bf16 else None  # fp32 NCHW: the bf16 copies' source
    infer, tiled_fn, peer_fn, engine = make_inference(name, model, device, cuda, compile_model)
    seconds, util = timed(infer, warmup=2, reps=reps, sync=sync)
    result.update(infer_gflops=result["gflop"] * 4 * 4 / seconds, infer_util=util)
    if profile:
        result["profile_infer"] = profiled(infer)
    bf16_engines: dict[str, Any] = {}
    if reference is not None:
        for mode in BF16_MODES:
            bf16_infer, bf16_engines[mode] = make_bf16_inference(name, reference, mode)
            seconds, util = timed(bf16_infer, warmup=2, reps=reps, sync=sync)
            result[f"bf16_{mode}_infer_gflops"] = result["gflop"] * 4 * 4 / seconds
            result[f"bf16_{mode}_infer_util"] = util
        pick_faster(result, "infer")
    image = torch.randn(1, 1, 2048, 2048, device=device)
    if tiled:
        tile_reps = max(2, reps // 2)
        seconds, util = timed(tiled_fn, warmup=1, reps=tile_reps, sync=sync)
        result.update(tiled_mps=2048**2 / seconds / 1e6, tiled_util=util)
        seconds, util = timed(peer_fn, warmup=1, reps=tile_reps, sync=sync)
        result.update(monai_tiled_mps=2048**2 / seconds / 1e6, monai_tiled_util=util)
        tile, overlap, windows = engine.tiling(2048, 2048)
        result.update(tiled_redundancy=redundancy(tile, overlap),
                      monai_redundancy=monai_redundancy(), tile=tile, tile_overlap=overlap)
        fp32_labels = engine.labels(image[0])  # what bf16 and ONNX Runtime are compared with
        result["tiled_phases"] = tiled_phases(engine, image[0])
        if bf16_engines:
            mode = result["bf16_infer_mode"]  # the faster way on the batch of 4 x 512²
            bf16_tiled = bf16_labels_fn(bf16_engines[mode], image[0], mode)
            seconds, util = timed(bf16_tiled, warmup=1, reps=tile_reps, sync=sync)
            result.update(bf16_tiled_mps=2048**2 / seconds / 1e6, bf16_tiled_util=util,
                          bf16_tiled_mode=mode,
                          bf16_tiled_differ=float((bf16_tiled() != fp32_labels).float().mean()))
            result["bf16_tiled_phases"] = tiled_phases(bf16_engines[mode], image[0],
                                                       autocast=mode == "autocast")
    if onnx and hasattr(model, "config") and not cuda:
        result.update(onnx_runtime(model, engine, image[0], tiled, reps,
                                   fp32_labels if tiled else None))
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def pick_faster(result: dict[str, Any], what: str) -> None:
    """``bf16_<what>_gflops`` (and ``_util``, ``_mode``): the faster of the bf16 modes."""
    mode = max(BF16_MODES, key=lambda m: result[f"bf16_{m}_{what}_gflops"])
    result[f"bf16_{what}_mode"] = mode
    result[f"bf16_{what}_gflops"] = result[f"bf16_{mode}_{what}_gflops"]
    result[f"bf16_{what}_util"] = result[f"bf16_{mode}_{what}_util"]


def profiled(fn: Callable[[], Any], rows: int = 12) -> str:
    """PyTorch profiler's table of the operators that took the most CPU time in one call."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return str(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def tiled_phases(engine: Any, image: Any, autocast: bool = False) -> dict[str, float]:
    """Seconds of one tiled 2048² prediction by ``engine`` (warm) spent in the network's
    forward passes, in the rest of the tiled logits (windows, Gaussian blending, the division)
    and in the argmax, timed by hooks on the network."""
    import torch

    from unetseg.infer.predict import logits_to_labels

    model, spent, started = engine.model, [0.0], [0.0]

    def before(*_: Any) -> None:
        started[0] = time.perf_counter()

    def after(*_: Any) -> None:
        spent[0] += time.perf_counter() - started[0]

    hooks = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    try:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = engine.device_logits(image)
        t1 = time.perf_counter()
        logits_to_labels(logits)
        t2 = time.perf_counter()
    finally:
        for hook in hooks:
            hook.remove()
    return {"network_s": spent[0], "blend_s": t1 - t0 - spent[0], "argmax_s": t2 - t1}


def make_bf16_inference(name: str, reference: Any, mode: str
                        ) -> tuple[Callable[[], Any], Any]:
    """(batch-4 512² forward in bf16, an ``ImagePredictor`` of the same bf16 network): the
    network in its fastest memory layout, under CPU bf16 autocast or cast to bf16."""
    import copy

    import torch

    from unetseg.config import ModelConfig
    from unetseg.data.normalize import ChannelStats
    from unetseg.infer.engine import ImagePredictor
    from unetseg.model import ExternalNet
    from unetseg.model.layout import fastest_memory_format

    model = copy.deepcopy(reference).eval()
    dtype = torch.bfloat16 if mode == "cast" else torch.float32
    layout = fastest_memory_format(model)
    model = model.to(dtype=dtype, memory_format=layout)
    batch = torch.randn(4, 1, 512, 512).to(dtype).contiguous(memory_format=layout)

    @torch.inference_mode()
    def infer() -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
            return model(batch).float()

    if not hasattr(model, "config"):
        model = ExternalNet(model, ModelConfig(arch=name, depth=4, padding="same")).eval()
    return infer, ImagePredictor(model, ChannelStats((0.0,), (1.0,)))


def bf16_labels_fn(engine: Any, image: Any, mode: str) -> Callable[[], Any]:
    import torch

    def labels() -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
            return engine.labels(image)

    return labels


def onnx_runtime(model: Any, engine: Any, image: Any, tiled: bool, reps: int,
                 fp32_labels: Any) -> dict[str, Any]:
    """The model exported to ONNX (``unetseg.export``) and run by unetseg's ONNX Runtime
    predictor (:mod:`unetseg.infer.backends`) on the same threads: the batch of 4 x 512² and
    the tiled 2048² image with the tiling the PyTorch engine plans."""
    import torch

    from unetseg.data.classes import ClassTable
    from unetseg.data.normalize import ChannelStats
    from unetseg.export import export_model
    from unetseg.infer.backends import load_onnx_image_predictor
    from unetseg.infer.predict import logits_to_labels
    from unetseg.modelfile import ModelCard, save_model

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        card = ModelCard(model.config, ClassTable.from_values((0, 1)), ChannelStats((0.0,),
                                                                                     (1.0,)))
        save_model(path, model, card)
        started = time.perf_counter()
        exported = export_model(path, Path(tmp) / "model.onnx", "onnx")
        out.update(onnx_export_s=time.perf_counter() - started, onnx_exporter=exported.exporter)
        tile, overlap, windows = engine.tiling(2048, 2048)
        predictor, _ = load_onnx_image_predictor(exported.path, tile=tile, overlap=overlap,
                                                 batch_size=windows,
                                                 threads=torch.get_num_threads())
        batch = torch.randn(4, 1, 512, 512)
        seconds, util = timed(lambda: predictor.predictor(batch), warmup=2, reps=reps,
                              sync=lambda: None)
        out.update(onnx_infer_gflops=engine_gflop(model) * 4 * 4 / seconds,
                   onnx_infer_util=util)
        if tiled:
            def labels() -> Any:
                return logits_to_labels(predictor.logits(image))

            seconds, util = timed(labels, warmup=1, reps=max(2, reps // 2), sync=lambda: None)
            out.update(onnx_tiled_mps=2048**2 / seconds / 1e6, onnx_tiled_util=util,
                       onnx_tiled_differ=float((labels() != fp32_labels).float().mean()))
    return out


def engine_gflop(model: Any) -> float:
    """GFLOP of one 1 x C x 256 x 256 forward of ``model`` (on a copy, in fp32 NCHW)."""
    import copy

    import torch

    return count_gflop(copy.deepcopy(model).float().to(memory_format=torch.contiguous_format),
                       (1, model.config.in_channels, 256, 256))


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


def make_train_step(net: Any, model: Any, device: Any, batch: int, *, amp: bool
                    ) -> Callable[[], None]:
    """One AdamW step on ``batch`` x 1 x 256 x 256 with cross-entropy, in the model's dtype,
    under bf16 autocast with ``amp``."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = next(model.parameters()).dtype
    x = torch.randn(batch, 1, 256, 256, device=device).to(dtype)
    y = torch.randint(0, 2, (batch, 256, 256), device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
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


def phase_gflops(r: dict[str, Any], key: str) -> float | None:
    """GFLOP/s of the network's own forward passes inside one tiled 2048² prediction."""
    phases = r.get(key)
    if not phases or "tiled_redundancy" not in r:
        return None
    flop = r["tiled_redundancy"] * 2048**2 * r["gflop"] / 256**2
    return float(flop / phases["network_s"])


def measured_rates(results: list[dict[str, Any]], peaks: dict[str, Any]
                   ) -> dict[str, list[tuple[str, float]]]:
    """Every GFLOP/s figure of the run, by the peak it is a fraction of."""
    rates: dict[str, list[tuple[str, float]]] = {"fp32": [], "bf16": []}
    if "matmul_fp32" in peaks:
        rates["fp32"].append(("PyTorch fp32 matmul 4096²", peaks["matmul_fp32"]))
    if "matmul_bf16" in peaks:
        rates["bf16"].append(("PyTorch bf16 matmul 4096²", peaks["matmul_bf16"]))
    for r in results:
        n = r["name"]
        fp32 = [("train", r.get("train_gflops")), ("inference", r.get("infer_gflops")),
                ("tiled", implied_gflops(r, "tiled_mps", "tiled_redundancy")),
                ("MONAI tiled", implied_gflops(r, "monai_tiled_mps", "monai_redundancy")),
                ("tiled network", phase_gflops(r, "tiled_phases")),
                ("ONNX Runtime inference", r.get("onnx_infer_gflops")),
                ("ONNX Runtime tiled", implied_gflops(r, "onnx_tiled_mps", "tiled_redundancy"))]
        bf16 = [(f"{mode} {what}", r.get(f"bf16_{mode}_{what}_gflops"))
                for mode in BF16_MODES for what in ("train", "infer")]
        bf16 += [("tiled", implied_gflops(r, "bf16_tiled_mps", "tiled_redundancy")),
                 ("tiled network", phase_gflops(r, "bf16_tiled_phases"))]
        rates["fp32"] += [(f"{n} {what}", v) for what, v in fp32 if v]
        rates["bf16"] += [(f"{n} bf16 {what}", v) for what, v in bf16 if v]
    return rates


def report(results: list[dict[str, Any]], peaks: dict[str, Any], device: str,
           cold: dict[str, Any] | None = None) -> str:
    peak, bf16_peak = peaks["fp32"], peaks.get("bf16")
    rates = measured_rates(results, peaks)
    over = {kind: [(n, v) for n, v in rates[kind] if v > (peaks.get(kind) or float("inf"))]
            for kind in rates}
    bounded = {kind: not over[kind] for kind in over}

    def pct(gflops: float | None, kind: str = "fp32") -> str:
        if gflops is None:
            return "-"
        if not bounded[kind] or not peaks.get(kind):
            return f"{gflops:.0f}"
        return f"{gflops:.0f} ({100 * gflops / peaks[kind]:.0f} %)"

    def share(gflops: float, kind: str) -> str:
        if gflops > peaks[kind]:
            return " (ABOVE the peak)"
        return f" ({100 * gflops / peaks[kind]:.0f} % of the peak)" if bounded[kind] else ""

    threads = results[0]["threads"] if results else peaks.get("threads")
    kernels = peaks.get("kernels", {})
    lines = [f"device {device} ({peaks.get('cpu', '')}), {threads} threads, torch"
             f" {peaks.get('torch', '')}"]
    lines.append(f"fp32 peak {peak:.1f} GFLOP/s ({peaks['fp32_how']})")
    fp32_kernels = {k: v for k, v in kernels.items() if k.startswith("avx")}
    if fp32_kernels:
        lines.append("  FMA kernels: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                   fp32_kernels.items()))
    if "matmul_fp32" in peaks:
        lines.append(f"  PyTorch fp32 matmul 4096², same threads: {peaks['matmul_fp32']:.1f}"
                     f" GFLOP/s{share(peaks['matmul_fp32'], 'fp32')}")
    if bf16_peak:
        lines.append(f"bf16 peak {bf16_peak:.1f} GFLOP/s ({peaks['bf16_how']})")
        bf16_kernels = {k: v for k, v in kernels.items() if not k.startswith("avx")}
        if bf16_kernels:
            lines.append("  bf16 kernels: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                       bf16_kernels.items()))
        lines.append(f"  PyTorch bf16 matmul 4096², same threads: {peaks['matmul_bf16']:.1f}"
                     f" GFLOP/s{share(peaks['matmul_bf16'], 'bf16')}")
    elif device == "cpu":
        lines.append("bf16: not native on this CPU (no AVX512-BF16 or AMX-BF16); no bf16 rows")
    for kind, items in over.items():
        if items:
            lines.append(f"THE {kind.upper()} PEAK IS NOT AN UPPER BOUND: "
                         + ", ".join(f"{n} ran at {v:.1f} GFLOP/s" for n, v in items)
                         + f" > {peaks[kind]:.1f}; no percentages of it are printed")
    if not results:
        return "\n".join(lines)
    lines += ["", "fp32:", "",
              "| network | params M | GFLOP/fwd | train img/s | train GFLOP/s (% peak) | util |"
              " infer GFLOP/s (% peak) | util | tiled 2048² MP/s unetseg | MONAI swi MP/s |"
              " tiled ratio | peak RSS MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.2f} | {r['gflop']:.2f} |"
            f" {r['train_images_s']:.2f} | {pct(r['train_gflops'])} | {r['train_util']:.2f} |"
            f" {pct(r['infer_gflops'])} | {r['infer_util']:.2f} | {r.get('tiled_mps', 0):.3f} |"
            f" {r.get('monai_tiled_mps', 0):.3f} |"
            f" {ratio(r.get('tiled_mps'), r.get('monai_tiled_mps'))} |"
            f" {r['peak_rss_mib']:.0f} |")
    tiled = [r for r in results if "tiled_redundancy" in r]
    if tiled:
        lines += ["", "Tiled 2048² (fp32): pixels computed per image pixel, and the GFLOP/s"
                  " (% peak) at which each method ran the network. The tiled ratio can reach at"
                  " most (MONAI's redundancy / unetseg's) x (peak / MONAI's GFLOP/s).", "",
                  "| network | unetseg redundancy | MONAI redundancy | unetseg GFLOP/s |"
                  " MONAI GFLOP/s | util unetseg / MONAI | bound on the ratio |",
                  "|---|---|---|---|---|---|---|"]
        for r in tiled:
            ours = implied_gflops(r, "tiled_mps", "tiled_redundancy")
            theirs = implied_gflops(r, "monai_tiled_mps", "monai_redundancy")
            bound = (f"{r['monai_redundancy'] / r['tiled_redundancy'] * peak / theirs:.2f}x"
                     if theirs and bounded["fp32"] else "-")
            lines.append(
                f"| {r['name']} | {r['tiled_redundancy']:.2f} | {r['monai_redundancy']:.2f} |"
                f" {pct(ours)} | {pct(theirs)} |"
                f" {r['tiled_util']:.2f} / {r['monai_tiled_util']:.2f} | {bound} |")
    with_bf16 = [r for r in results if "bf16_train_gflops" in r]
    if with_bf16:
        lines += ["", "bf16 (% of the bf16 peak): the faster of autocast (torch.autocast cpu"
                  " bf16 around fp32 weights) and cast (the model cast to bf16), both given;"
                  " the tiled case runs the mode that was faster on inference. 'labels' is the"
                  " share of tiled pixels whose class differs from fp32's.", "",
                  "| network | train GFLOP/s | mode | autocast / cast | util |"
                  " infer GFLOP/s | mode | autocast / cast | util | tiled 2048² MP/s |"
                  " x fp32 | x MONAI fp32 | labels |", "|---|---|---|---|---|---|---|---|---|"
                  "---|---|---|---|"]
        for r in with_bf16:
            lines.append(
                f"| {r['name']} | {pct(r['bf16_train_gflops'], 'bf16')} |"
                f" {r['bf16_train_mode']} | {r['bf16_autocast_train_gflops']:.0f} /"
                f" {r['bf16_cast_train_gflops']:.0f} | {r['bf16_train_util']:.2f} |"
                f" {pct(r['bf16_infer_gflops'], 'bf16')} | {r['bf16_infer_mode']} |"
                f" {r['bf16_autocast_infer_gflops']:.0f} / {r['bf16_cast_infer_gflops']:.0f} |"
                f" {r['bf16_infer_util']:.2f} | {r.get('bf16_tiled_mps', 0):.3f} |"
                f" {ratio(r.get('bf16_tiled_mps'), r.get('tiled_mps'))} |"
                f" {ratio(r.get('bf16_tiled_mps'), r.get('monai_tiled_mps'))} |"
                f" {100 * r.get('bf16_tiled_differ', 0):.3f} % |")
    with_onnx = [r for r in results if "onnx_infer_gflops" in r]
    if with_onnx:
        lines += ["", "ONNX Runtime (the model exported by unetseg.export, run by unetseg's ONNX"
                  " predictor, same threads, tiled with the tiling the PyTorch engine plans):",
                  "", "| network | exporter | export s | infer GFLOP/s (% peak) | x torch fp32 |"
                  " util | tiled 2048² MP/s | x torch fp32 | labels |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in with_onnx:
            lines.append(
                f"| {r['name']} | {r['onnx_exporter']} | {r['onnx_export_s']:.0f} |"
                f" {pct(r['onnx_infer_gflops'])} |"
                f" {ratio(r['onnx_infer_gflops'], r['infer_gflops'])} |"
                f" {r['onnx_infer_util']:.2f} | {r.get('onnx_tiled_mps', 0):.3f} |"
                f" {ratio(r.get('onnx_tiled_mps'), r.get('tiled_mps'))} |"
                f" {100 * r.get('onnx_tiled_differ', 0):.3f} % |")
    phased = [(r, kind) for r in results for kind in ("fp32", "bf16")
              if ("tiled_phases" if kind == "fp32" else "bf16_tiled_phases") in r]
    if phased:
        lines += ["", "Where unetseg's tiled 2048² prediction spends its time (one warm run,"
                  " hooks on the network): the network's forward passes and the GFLOP/s they"
                  " ran at, the rest of the tiled logits (windows, Gaussian blending, the"
                  " division) and the argmax.", "",
                  "| network | precision | tile | network s | network GFLOP/s (% peak) |"
                  " blending s | argmax s | network share |", "|---|---|---|---|---|---|---|---|"]
        for r, kind in phased:
            key = "tiled_phases" if kind == "fp32" else "bf16_tiled_phases"
            ph = r[key]
            total = ph["network_s"] + ph["blend_s"] + ph["argmax_s"]
            label = kind if kind == "fp32" else f"bf16 {r['bf16_tiled_mode']}"
            lines.append(
                f"| {r['name']} | {label} | {r['tile']} ({100 * r['tile_overlap']:.0f} %"
                f" overlap) | {ph['network_s']:.2f} | {pct(phase_gflops(r, key), kind)} |"
                f" {ph['blend_s']:.2f} | {ph['argmax_s']:.2f} |"
                f" {100 * ph['network_s'] / total:.0f} % |")
    if cold:
        from cold_start import report as cold_report

        lines += ["", cold_report(cold)]
    ours = next((r for r in results if r["name"] == "unetseg"), None)
    if ours:
        lines += ["", "Goals (default network, unetseg):"]
        if bounded["fp32"]:
            lines.append(f"- fp32 inference {100 * ours['infer_gflops'] / peak:.0f} % of the"
                         f" peak (goal >= 85 %), training step"
                         f" {100 * ours['train_gflops'] / peak:.0f} % (goal >= 75 %)")
        if "tiled_mps" in ours:
            theirs = implied_gflops(ours, "monai_tiled_mps", "monai_redundancy")
            limit = ours["monai_redundancy"] / ours["tiled_redundancy"] * peak / (theirs or 1)
            bound = f", bound {limit:.2f}x" if theirs and bounded["fp32"] else ""
            lines.append(f"- tiled 2048², same weights, fp32: unetseg / MONAI"
                         f" {ratio(ours['tiled_mps'], ours['monai_tiled_mps'])}{bound}")
        if "bf16_tiled_mps" in ours:
            lines.append(f"- tiled 2048², same weights, unetseg bf16"
                         f" ({ours['bf16_tiled_mode']}) / MONAI fp32:"
                         f" {ratio(ours['bf16_tiled_mps'], ours['monai_tiled_mps'])}"
                         " (goal >= 3x on a CPU with native bf16)")
        elif device == "cpu":
            lines.append("- unetseg bf16 / MONAI fp32: not measured (no native bf16 here, or"
                         " --no-bf16)")
        lines.append("")
        for r in results:
            if r is not ours:
                train = ratio(ours["train_gflops"], r["train_gflops"])
                infer = ratio(ours["infer_gflops"], r["infer_gflops"])
                tiled_ratio = ratio(ours.get("tiled_mps"), r.get("tiled_mps"))
                lines.append(f"unetseg / {r['name']}: train GFLOP/s {train}, infer GFLOP/s"
                             f" {infer}, tiled MP/s (each on its own network) {tiled_ratio}")
    for r in results:
        for what in ("train", "infer"):
            if f"profile_{what}" in r:
                lines += ["", f"{r['name']}: profile of one fp32 {what} call", "```",
                          r[f"profile_{what}"].rstrip(), "```"]
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
    parser.add_argument("--no-bf16", action="store_true",
                        help="skip the bf16 rows (measured on CPUs with native bf16)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime rows")
    parser.add_argument("--no-cold", action="store_true",
                        help="skip the cold single-image prediction (benchmarks/cold_start.py)")
    parser.add_argument("--profile", action="store_true",
                        help="also print PyTorch profiler tables of one fp32 training step and"
                             " one inference call of each network")
    parser.add_argument("--peak-only", action="store_true",
                        help="measure the peaks and the matmul rates only")
    parser.add_argument("--out", default=None, help="also write the report (Markdown) here")
    parser.add_argument("--json", default=None, help="also write every figure (JSON) here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cpu = args.device == "cpu"
    bf16 = cpu and not args.no_bf16 and native_bf16(cpu_flags())
    if args.child:
        print(json.dumps(run_child(args.child, args.device, args.reps, not args.no_tiled,
                                   args.batch, args.compile, bf16=bf16,
                                   onnx=cpu and not args.no_onnx, profile=args.profile)))
        return
    import torch

    threads = torch.get_num_threads()
    peaks = measure_peak(threads) if cpu else measure_gpu_peak()
    print("measured the peaks", file=sys.stderr)
    results = []
    for name in [] if args.peak_only else network_names(args.networks):
        cmd = [sys.executable, __file__, "--child", name, "--device", args.device, "--reps",
               str(args.reps), "--batch", str(args.batch)]
        for flag in ("no_tiled", "compile", "no_bf16", "no_onnx", "profile"):
            if getattr(args, flag):
                cmd.append("--" + flag.replace("_", "-"))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"measured {name}", file=sys.stderr)
    if cpu and results:
        peaks = measure_peak(threads, peaks)
        print("measured the peaks again", file=sys.stderr)
    cold = None
    if cpu and not args.no_cold and not args.peak_only:
        from cold_start import measure as cold_start

        try:  # a failure here must not lose the networks' figures
            cold = cold_start(width=64, size=512)
            print("measured the cold start", file=sys.stderr)
        except subprocess.CalledProcessError as exc:
            print(f"the cold start failed:\n{(exc.stderr or '')[-3000:]}", file=sys.stderr)
    text = report(results, peaks, args.device, cold)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"peaks": peaks, "networks": results,
                                               "cold_start": cold}, indent=2))


if __name__ == "__main__":
    main()
