"""Parity of an exported model with the eager PyTorch model it came from.

Both run on the same random inputs of several sizes (odd sizes, a batch of 2, for valid padding
several legal sizes); the largest absolute difference of the logits per size is reported. An
export whose difference exceeds the tolerance (1e-4 for float32) is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from unetseg.config import ModelConfig
from unetseg.model.geometry import min_legal_input_size, size_multiple

Predictor = Callable[[torch.Tensor], torch.Tensor]
Shape = tuple[int, ...]
"""(N, C, H, W), or (N, C, D, H, W) for volumes."""

#: Largest accepted absolute logit difference for float32 exports.
FP32_TOLERANCE = 1e-4


class ExportError(Exception):
    """No exporter could write the model, or a package's description does not validate."""

    exit_code = 1


class ParityError(Exception):
    """The exported model's logits differ from PyTorch's by more than the tolerance."""

    exit_code = 1


@dataclass(frozen=True)
class ParityReport:
    """Max absolute logit difference per input shape (N, C, H, W) or (N, C, D, H, W)."""

    diffs: tuple[tuple[Shape, float], ...]
    tolerance: float

    @property
    def max_abs_diff(self) -> float:
        return max(d for _, d in self.diffs)

    @property
    def passed(self) -> bool:
        return all(d <= self.tolerance for _, d in self.diffs)

    def lines(self) -> list[str]:
        """Human-readable lines, one per shape and a verdict."""
        out = [f"  {'x'.join(map(str, shape)):<18} max |diff| {diff:.3e}"
               for shape, diff in self.diffs]
        verdict = "OK" if self.passed else "FAILED"
        sign = "<=" if self.passed else ">"
        out.append(f"  max {self.max_abs_diff:.3e} {sign} tolerance {self.tolerance:.0e}:"
                   f" {verdict}")
        return out


def parity_shapes(cfg: ModelConfig) -> list[Shape]:
    """Input shapes to compare on: sizes on and off the pooling grid, tiny sizes (padding by
    replication), a batch of 2; for valid padding the smallest legal sizes and larger ones."""
    c, step = cfg.in_channels, 2**cfg.depth
    if cfg.spatial_dims == 3:
        return volume_parity_shapes(cfg)
    base = max(step, 16)  # shallow models: still sizes of several dozen pixels
    if cfg.padding == "valid":
        low = min_legal_input_size(cfg.depth)
        return [(1, c, low, low), (2, c, low + step, low + 2 * step),
                (1, c, low + 3 * step, low)]
    shapes = [(1, c, 4 * base, 4 * base), (2, c, 3 * base + 5, 5 * base - 3)]
    if cfg.norm == "instance":  # needs more than one pixel at the bottom level, as in PyTorch
        return [*shapes, (1, c, step + 1, step + 3)]
    return [*shapes, (1, c, max(1, step // 2 - 1), 2 * step + 1), (1, c, 1, 1)]


def volume_parity_shapes(cfg: ModelConfig) -> list[Shape]:
    """Small volumes for a 3D network: each side off its axis' size multiple (so the graph's
    padding runs on every axis, by reflection and, for sides shorter than the pad, by
    replication), a batch of 2; tiny ones unless instance norm needs two voxels per level.
    Kept small (tens of thousands of voxels) so the check takes seconds on a CPU."""
    c = cfg.in_channels
    mz, my, mx = size_multiple(cfg.depth, 3, cfg.pool_sizes)
    shapes: list[Shape] = [(1, c, 2 * mz + 1, 2 * my + 3, 3 * mx - 1),
                           (2, c, mz + 3, my + 1, 2 * mx + 5)]
    if cfg.norm == "instance":
        return shapes
    return [*shapes, (1, c, max(1, mz // 2 - 1), my + 1, 1)]


def compare(reference: Predictor, candidate: Predictor, shapes: Sequence[Shape], *,
            tolerance: float = FP32_TOLERANCE, seed: int = 0) -> ParityReport:
    """Run both predictors on seeded standard-normal inputs of each shape (the scale of
    normalised images) and measure the largest absolute logit difference."""
    generator = torch.Generator().manual_seed(seed)
    diffs = []
    with torch.inference_mode():
        for shape in shapes:
            x = torch.randn(*shape, generator=generator)
            expected = reference(x).float()
            got = candidate(x).float()
            if got.shape != expected.shape:
                raise ParityError(f"the exported model returned logits of shape"
                                  f" {tuple(got.shape)} for input {shape}; PyTorch returns"
                                  f" {tuple(expected.shape)}")
            diffs.append((tuple(shape), float((got - expected).abs().max())))
    return ParityReport(tuple(diffs), tolerance)


def exported_predictor(path: str | Path, fmt: str) -> Predictor:
    """A predictor that runs an exported file: ONNX Runtime (CPU) or TorchScript."""
    if fmt == "onnx":
        from unetseg.infer.backends import load_onnx

        predictor, _, _ = load_onnx(path)
        return predictor
    from unetseg.export.torchscript import load_torchscript

    module, _, _ = load_torchscript(path)
    return module
