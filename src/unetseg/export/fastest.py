"""The fastest backend for a model on this machine: PyTorch, or ONNX Runtime on a graph exported
into a cache.

With ``--backend auto`` a ``.safetensors`` model runs on ONNX Runtime when ONNX Runtime is
installed and was measured faster than PyTorch for this model file, this machine and this
window size; otherwise on PyTorch. The measurement is made once and cached per machine
(:func:`cache_folder`/``backends.json``, keyed by :func:`timing_key`: the model file's SHA-256,
the CPU's model name, the thread count, the window shape and the library versions), so a second
load reads it and a changed model file is measured again. The graph is exported once, verified
like every export (:func:`~unetseg.export.pipeline.export_model`), into
:func:`cache_folder`/``onnx/<model hash>.onnx``.

Both backends cut an image into the same windows (the ONNX Runtime predictor takes the PyTorch
predictor's planned tiling), so their labels differ only where a pixel's two best logits are
tied to within fp32 rounding.

Only the CPU is considered (ONNX Runtime runs on the CPU here), and only where nothing needs
PyTorch: a forced backend, a GPU device, test-time augmentation, streamed TIFFs, forced bf16
and 3D models keep PyTorch (or the forced backend; an exported 3D ``.onnx`` file runs on ONNX
Runtime).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from unetseg.config import DEFAULT_TILE, PredictConfig
from unetseg.errors import UserError
from unetseg.files import write_text_atomic
from unetseg.infer.backends import OnnxImagePredictor, check_backend_options, load_onnx
from unetseg.infer.engine import ImagePredictor, resolve_device
from unetseg.infer.load import load_image_predictor, load_predictor, resolve_backend
from unetseg.infer.modelset import ModelSet, ModelSpec, load_model_set_predictor, resolve_model
from unetseg.infer.postprocess import Step
from unetseg.infer.precision import PrecisionChoice, choice_without_check
from unetseg.modelfile import ModelCard, read_card
from unetseg.runtime import cpu_model

log = logging.getLogger(__name__)

CACHE_VERSION = 1
TIMING_REPEATS = 3
"""Timed rounds per backend after one warm-up run each; the fastest counts."""


@dataclass(frozen=True)
class BackendTimings:
    """Seconds of one forward pass over the timed window, fastest of :data:`TIMING_REPEATS`.

    Attributes:
        torch_s: PyTorch, in ``torch_precision``.
        onnxruntime_s: ONNX Runtime (fp32).
        torch_precision: ``fp32`` or ``bf16``.
        window: (batch, channels, height, width) of the timed window.
    """

    torch_s: float
    onnxruntime_s: float
    torch_precision: str
    window: tuple[int, int, int, int]

    @property
    def faster(self) -> str:
        """``onnxruntime`` when it took less time, else ``torch`` (a tie keeps PyTorch)."""
        return "onnxruntime" if self.onnxruntime_s < self.torch_s else "torch"

    def summary(self) -> str:
        side = f"{self.window[-2]} x {self.window[-1]}"
        return (f"{side} window: PyTorch ({self.torch_precision}) {self.torch_s * 1000:.0f} ms,"
                f" ONNX Runtime {self.onnxruntime_s * 1000:.0f} ms")


@dataclass(frozen=True)
class Loaded:
    """A loaded image predictor, its card, the backend it runs on and why, and the
    post-processing of its labels (a model set's; see :mod:`unetseg.infer.postprocess`)."""

    predictor: Any
    card: ModelCard
    backend: str
    reason: str
    postprocessing: tuple[Step, ...] = ()


def cache_folder() -> Path:
    """Where measurements and exported graphs are cached: ``$UNETSEG_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/unetseg``, else ``~/.cache/unetseg``."""
    if os.environ.get("UNETSEG_CACHE_DIR"):
        return Path(os.environ["UNETSEG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "unetseg"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def timing_key(model_hash: str, window: tuple[int, ...], torch_precision: str) -> str:
    """The cache key of one measurement: what changes the timings (the model file, the CPU
    model, the thread count, the window shape, PyTorch's number format, the library
    versions)."""
    import onnxruntime

    parts = {"model": model_hash, "cpu": cpu_model(), "threads": torch.get_num_threads(),
             "window": list(window), "torch_precision": torch_precision,
             "torch": str(torch.__version__), "onnxruntime": onnxruntime.__version__,
             "version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def read_cached(key: str, folder: Path) -> BackendTimings | None:
    """The timings stored under ``key``, or None (none yet, or an unreadable cache)."""
    try:
        entry = json.loads((folder / "backends.json").read_text())[key]
        return BackendTimings(float(entry["torch_s"]), float(entry["onnxruntime_s"]),
                              str(entry["torch_precision"]), tuple(entry["window"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cached(key: str, timings: BackendTimings, folder: Path) -> None:
    """Store ``timings`` under ``key``, keeping the other entries (the file is replaced
    atomically; two processes measuring at once keep one of their entries)."""
    path = folder / "backends.json"
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        entries = {}
    entries[key] = {**asdict(timings), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(entries, indent=1))


def would_check_bf16(predictor: ImagePredictor) -> bool:
    """Whether ``predictor`` would run the bf16 check (``auto`` on a CPU with native bf16);
    only then is its outcome worth caching, or the model file worth hashing for it."""
    try:
        return choice_without_check(predictor.precision, predictor.device) is None
    except ValueError:  # bf16 forced where it cannot run: the predictor says so itself
        return False


def remember_precision(predictor: ImagePredictor, model_hash: str, folder: Path) -> None:
    """Reuse this machine's earlier bf16 check of this model file (``precision.json`` in the
    cache, keyed by the model file's SHA-256 and the CPU model), and store a new one, so that
    ``--precision auto`` checks a model once per machine rather than once per process."""
    if not would_check_bf16(predictor):
        return
    path = folder / "precision.json"
    key = f"{model_hash}:{cpu_model()}:{torch.__version__}"
    try:
        entry = json.loads(path.read_text())[key]
        predictor.choice = PrecisionChoice(torch.bfloat16 if entry["precision"] == "bf16"
                                           else None, f"{entry['reason']} (checked before,"
                                           f" cached in {folder})")
        return
    except (OSError, ValueError, KeyError, TypeError):
        pass

    def store(choice: PrecisionChoice) -> None:
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            entries = {}
        entries[key] = {"precision": choice.name, "reason": choice.reason}
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(entries, indent=1))

    predictor.on_check = store


def cached_onnx(model: Path, model_hash: str, folder: Path) -> Path:
    """The model's ONNX graph in the cache, exported (and verified) on first use."""
    from unetseg.export.pipeline import export_model

    target = folder / "onnx" / f"{model_hash[:32]}.onnx"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        export_model(model, target, "onnx")
    return target


def fastest_seconds(runs: Sequence[Callable[[], object]], repeats: int = TIMING_REPEATS
                    ) -> list[float]:
    """Fastest wall-clock seconds of each of ``runs`` over ``repeats`` rounds, after one
    warm-up call each. The rounds interleave the runs, so a burst of load from another process
    slows all of them rather than one."""
    for run in runs:
        run()
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            started = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - started)
    return best


def measure(torch_predictor: ImagePredictor, onnx_predictor: OnnxImagePredictor,
            window: tuple[int, int, int, int], torch_dtype: torch.dtype | None
            ) -> BackendTimings:
    """Time one forward pass of a random normalised ``window`` on both backends."""
    x = torch.randn(window, generator=torch.Generator().manual_seed(0))
    model = torch_predictor.model
    layout_x = x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run_torch() -> object:
        if torch_dtype is None:
            return model(layout_x)
        with torch.autocast("cpu", dtype=torch_dtype):
            return model(layout_x)

    torch_s, onnx_s = fastest_seconds([run_torch, lambda: onnx_predictor.predictor(x)])
    return BackendTimings(torch_s, onnx_s, "bf16" if torch_dtype else "fp32", window)


Measure = Callable[[ImagePredictor, OnnxImagePredictor, tuple[int, int, int, int],
                    torch.dtype | None], BackendTimings]


def onnxruntime_installed() -> bool:
    """Whether the export extra is installed; found without importing it (onnxscript alone
    takes about 0.4 s to import, which a cold predict that runs on PyTorch should not pay)."""
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in ("onnx", "onnxruntime", "onnxscript"))


def why_pytorch(model: str | Path, config: PredictConfig, streamed: Sequence[Path]
                ) -> str | None:
    """Why ``model`` must run on the backend ``resolve_backend`` names without measuring, or
    None when both backends may run it and the faster should."""
    if config.backend != "auto":
        return f"--backend {config.backend}"
    if resolve_backend(model, config.backend) != "torch":
        return "an exported .onnx file"
    if read_card(model).model.spatial_dims == 3:
        return ("a 3D model runs on PyTorch: the backends are timed, and ONNX Runtime's windows"
                " planned, on 2-D images only")
    if resolve_device(config.device).type != "cpu":
        return "a GPU device"
    if config.tta:
        return "test-time augmentation needs PyTorch"
    if streamed:
        return "streamed TIFFs need PyTorch"
    if config.precision == "bf16":
        return "--precision bf16 needs PyTorch"
    if not onnxruntime_installed():
        return "ONNX Runtime is not installed"
    return None


def load_fastest(model: ModelSpec, config: PredictConfig, *, streamed: Sequence[Path] = (),
                 measure_backends: Measure = measure, folder: Path | None = None) -> Loaded:
    """The image predictor of ``model`` on the fastest backend (see the module's text).

    ``model`` may name a model set (a run folder of ``train --folds``, its ``modelset.json``
    or several model files; :mod:`unetseg.infer.modelset`): its members' mean probabilities
    run on PyTorch (ONNX Runtime runs a model set exported as one graph).
    ``measure_backends`` times both backends (tests fake it); ``folder`` is the cache
    (default :func:`cache_folder`). A bioimage.io package written by unetseg runs the model
    file attached to it (:func:`~unetseg.export.bioimageio.package_model_file`).
    """
    from unetseg.export.bioimageio import is_package, package_model_file

    if isinstance(model, (str, os.PathLike)) and is_package(Path(model)):
        model = package_model_file(Path(model), folder or cache_folder())
    source = resolve_model(model)
    if isinstance(source, ModelSet):
        loaded = _load_model_set(source, config, streamed)
    else:
        loaded = _load(source, config, streamed, measure_backends, folder)
    log.info("running on %s: %s", loaded.backend, loaded.reason)
    return loaded


def _load_model_set(model_set: ModelSet, config: PredictConfig, streamed: Sequence[Path]
                    ) -> Loaded:
    config.check()
    if config.backend == "onnxruntime":
        raise UserError(f"{model_set.name}: --backend onnxruntime runs one graph; export the"
                        " model set first (unetseg export MODELS --out set.onnx) or use"
                        " --backend torch")
    predictor, card = load_model_set_predictor(model_set, config)
    return Loaded(predictor, card, "torch", f"a model set of {len(model_set.members)} models"
                  " runs on PyTorch", model_set.postprocessing)


def _load(model: str | Path, config: PredictConfig, streamed: Sequence[Path],
          measure_backends: Measure, folder: Path | None) -> Loaded:
    config.check()
    if config.backend == "onnxruntime" and Path(model).suffix.lower() != ".onnx":
        return _forced_onnxruntime(Path(model), config, streamed, folder or cache_folder())
    reason = why_pytorch(model, config, streamed)
    folder = folder or cache_folder()
    if reason is not None:
        predictor, card = load_image_predictor(model, config, streamed=streamed)
        if isinstance(predictor, ImagePredictor) and would_check_bf16(predictor):
            remember_precision(predictor, file_sha256(Path(model)), folder)
        return Loaded(predictor, card, resolve_backend(model, config.backend), reason)
    model = Path(model)
    torch_predictor, card = load_predictor(model, config)
    model_hash = file_sha256(model)
    remember_precision(torch_predictor, model_hash, folder)
    known = choice_without_check(config.precision, torch_predictor.device)
    torch_dtype = known.dtype if known is not None else torch.bfloat16  # if the check passes
    side = config.tile or DEFAULT_TILE
    window = (1, card.model.in_channels, side, side)
    key = timing_key(model_hash, window, "bf16" if torch_dtype else "fp32")
    timings = read_cached(key, folder)
    if timings is not None and timings.faster == "torch":
        return Loaded(torch_predictor, card, "torch", _reason(timings, folder))
    try:
        onnx_file = cached_onnx(model, model_hash, folder)
        onnx_net, _, info = load_onnx(onnx_file)
    except Exception as exc:  # exporters and sessions raise many types; PyTorch still runs
        return Loaded(torch_predictor, card, "torch", f"no ONNX graph ({exc})")
    onnx_predictor = OnnxImagePredictor(onnx_net, card, info, plan=torch_predictor.tiling)
    if timings is None:
        timings = measure_backends(torch_predictor, onnx_predictor, window, torch_dtype)
        write_cached(key, timings, folder)
        log.info("measured %s", timings.summary())
    if timings.faster == "onnxruntime":
        return Loaded(onnx_predictor, card, "onnxruntime", _reason(timings, folder))
    return Loaded(torch_predictor, card, "torch", _reason(timings, folder))


def _forced_onnxruntime(model: Path, config: PredictConfig, streamed: Sequence[Path],
                        folder: Path) -> Loaded:
    """``--backend onnxruntime`` for a model file that is not an export: its cached graph,
    with the tiling the PyTorch predictor would plan."""
    check_backend_options("onnxruntime", device=config.device, tta=config.tta,
                          precision=config.precision, streamed=streamed)
    if read_card(model).model.spatial_dims == 3:
        raise UserError(f"{model}: a 3D model; --backend onnxruntime runs its exported graph,"
                        f" so export it first (unetseg export {model} --out model.onnx) and"
                        " pass the .onnx file, or use --backend torch")
    torch_predictor, card = load_predictor(model, config)
    onnx_net, _, info = load_onnx(cached_onnx(model, file_sha256(model), folder))
    predictor = OnnxImagePredictor(onnx_net, card, info, plan=torch_predictor.tiling)
    return Loaded(predictor, card, "onnxruntime", "--backend onnxruntime (graph exported into"
                  f" {folder})")


def _reason(timings: BackendTimings, folder: Path) -> str:
    return f"the faster here ({timings.summary()}; measured once, cached in {folder})"
