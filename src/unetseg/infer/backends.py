"""Exported models as predictors: ONNX Runtime on the CPU behind the same tiling code.

:class:`OnnxPredictor` is a predictor in the sense of :mod:`unetseg.infer.predict` (a callable
from a batch of windows to logits), so an exported model goes through exactly the windows,
batches and blending of the PyTorch backend (:func:`~unetseg.infer.predict.tiled_logits`).
:class:`OnnxImagePredictor` adds the normalisation stored in the file and has the interface of
:class:`~unetseg.infer.engine.ImagePredictor` (``check_channels``, ``logits``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetseg.config import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_TILE
from unetseg.data.normalize import normalize
from unetseg.errors import UserError
from unetseg.infer.blending import BlendMode
from unetseg.infer.engine import check_channels
from unetseg.infer.exported import ExportInfo, from_props
from unetseg.infer.predict import tiled_logits
from unetseg.modelfile import ModelCard

BACKENDS = ("torch", "onnxruntime")
INSTALL_HINT = "install the export extra: pip install 'unetseg[export]'"


def check_input_size(info: ExportInfo, height: int, width: int) -> None:
    """``ValueError`` unless the exported graph accepts ``height`` x ``width`` windows."""
    for side in (height, width):
        if not info.is_legal(side):
            raise ValueError(f"input side {side} is not legal for this exported valid-padding"
                             f" U-Net; it takes {info.legal_sizes_text()}")


class OnnxPredictor:
    """An ONNX file run by ONNX Runtime's CPU provider: (B, C, h, w) -> (B, K, h', w') logits.

    Takes and returns torch tensors (float32, CPU) so it plugs into the tiling functions.
    ``session.run`` is thread-safe, so one predictor may serve several threads.

    Args:
        session: an ``onnxruntime.InferenceSession`` of an exported unetseg model.
        info: the file's :class:`ExportInfo`.
    """

    def __init__(self, session: Any, info: ExportInfo):
        self.session = session
        self.info = info

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        check_input_size(self.info, batch.shape[-2], batch.shape[-1])
        x = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run([self.info.output_name], {self.info.input_name: x})
        return torch.from_numpy(logits)


def _session(path: Path, threads: int | None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(f"{path}: onnxruntime is not installed; {INSTALL_HINT}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for unreadable models
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable ONNX model ({first}); export one with"
                        " unetseg export MODEL --format onnx --out FILE") from None


def load_onnx(path: str | Path, *, threads: int | None = None
              ) -> tuple[OnnxPredictor, ModelCard, ExportInfo]:
    """Open an ONNX file written by ``unetseg export`` on the CPU, with its metadata.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads of ONNX Runtime (default: ``torch.get_num_threads()``, so
            both backends use the same number of cores).

    Raises:
        UserError: missing file, a safetensors model instead of an export, no onnxruntime,
            or a file without unetseg metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: exported model not found; export one with"
                        " unetseg export MODEL --format onnx --out FILE")
    if path.suffix.lower() != ".onnx":
        raise UserError(f"{path}: the onnxruntime backend runs .onnx files; export this model"
                        f" first: unetseg export {path} --format onnx --out model.onnx")
    session = _session(path, threads)
    props = dict(session.get_modelmeta().custom_metadata_map)
    card, info = from_props(props, str(path))
    return OnnxPredictor(session, info), card, info


@dataclass
class OnnxImagePredictor:
    """An exported model with its normalisation and tiling: images as read -> logits.

    Args:
        predictor: the ONNX Runtime predictor.
        card: the model card stored in the file.
        info: the export info stored in the file.
        tile: tile side in pixels (as for :class:`~unetseg.infer.engine.ImagePredictor`).
        overlap: fraction of a tile shared with its neighbour (same padding).
        batch_size: tiles per session run.
        plan: (height, width) -> (tile, overlap, tiles per batch) per image, replacing the
            three fixed values: :meth:`~unetseg.infer.engine.ImagePredictor.tiling` of the
            PyTorch predictor of the same model, so both backends cut an image into the same
            windows and their labels differ by rounding only.
    """

    predictor: OnnxPredictor
    card: ModelCard
    info: ExportInfo
    tile: int = DEFAULT_TILE
    overlap: float = DEFAULT_OVERLAP
    batch_size: int = DEFAULT_BATCH_SIZE
    plan: Callable[[int, int], tuple[int, float, int]] | None = None

    def check_channels(self, image: np.ndarray, source: str | Path) -> None:
        """:class:`UserError` when ``image`` (C,H,W) has another channel count than the model."""
        check_channels(self.card.model.in_channels, image, source)

    @torch.inference_mode()
    def logits(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Logits (K, H, W) on the CPU for an image (C, H, W) in its read scale."""
        x = normalize(torch.as_tensor(image, dtype=torch.float32), self.card.stats)
        blend: BlendMode = "constant" if self.info.tiling.blend == "constant" else "gaussian"
        tile, overlap, batch = self.tiling(x.shape[-2], x.shape[-1])
        return tiled_logits(self.predictor, x, padding=self.info.padding, depth=self.info.depth,
                            tile=tile, overlap=overlap, batch_size=batch, blend=blend).float()

    def tiling(self, height: int, width: int) -> tuple[int, float, int]:
        """(tile, overlap, tiles per batch) for an image of ``height`` x ``width`` pixels."""
        if self.plan is not None:
            return self.plan(height, width)
        return self.tile, self.overlap, self.batch_size


def load_onnx_image_predictor(path: str | Path, *, tile: int | None = None,
                              overlap: float | None = None, batch_size: int | None = None,
                              threads: int | None = None
                              ) -> tuple[OnnxImagePredictor, ModelCard]:
    """A ready :class:`OnnxImagePredictor` for an exported file; options left ``None`` take the
    tiling stored in the file."""
    predictor, card, info = load_onnx(path, threads=threads)
    tiling = info.tiling
    return OnnxImagePredictor(predictor, card, info, tile=tile or tiling.tile,
                              overlap=tiling.overlap if overlap is None else overlap,
                              batch_size=batch_size or tiling.batch_size), card


def check_backend_options(backend: str, *, device: str = "auto", tta: str | None = None,
                          precision: str = "auto", streamed: Sequence[Path] = ()) -> None:
    """Refuse options that the backend ``backend`` (other than ``torch``) cannot run.

    Raises:
        UserError: an unknown backend, or an option that only the PyTorch backend has (a GPU
            device, test-time augmentation, bf16, streamed TIFFs).
    """
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend}: unknown backend; use {' or '.join(BACKENDS)}")
    if device not in ("auto", "cpu"):
        raise UserError(f"--device {device}: the onnxruntime backend runs on the CPU; drop"
                        " --device or use --backend torch")
    if tta:
        raise UserError(f"--tta {tta}: test-time augmentation needs --backend torch")
    if precision == "bf16":
        raise UserError("--precision bf16: the onnxruntime backend runs fp32; drop --precision"
                        " or use --backend torch")
    if streamed:
        raise UserError(f"{streamed[0]}: streamed TIFFs need --backend torch (or pass smaller"
                        " images)")


def load_backend_predictor(model: str | Path, backend: str, *, tile: int | None = None,
                           overlap: float | None = None, batch_size: int | None = None,
                           device: str = "auto", tta: str | None = None,
                           precision: str = "auto", streamed: Sequence[Path] = ()
                           ) -> tuple[Any, ModelCard]:
    """The image predictor of a model file for a backend other than ``torch``:
    an :class:`OnnxImagePredictor`, with the model card.

    Raises:
        UserError: as :func:`check_backend_options`.
    """
    check_backend_options(backend, device=device, tta=tta, precision=precision,
                          streamed=streamed)
    return load_onnx_image_predictor(model, tile=tile, overlap=overlap, batch_size=batch_size)
