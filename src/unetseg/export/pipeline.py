"""``unetseg export``: write a model file as ONNX or TorchScript, verified against PyTorch.

Each format has two exporters, tried in order until one writes a file whose logits match the
eager model within the tolerance on every parity size (:mod:`unetseg.export.verify`):

* ONNX: ``dynamo`` first (``torch.export`` + onnxscript: the exporter PyTorch maintains, and the
  one whose graph declares the legal sizes of valid-padding models), then ``legacy`` (the
  TorchScript-based ONNX exporter, deprecated upstream).
* TorchScript: ``script`` first (compiles the forward, no example needed), then ``trace``.

The result says which exporter was used and why (first choice, or why the first one failed).
Nothing is left under the output name unless the parity check passed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from unetseg.errors import UserError
from unetseg.export.verify import (
    FP32_TOLERANCE,
    ParityError,
    ParityReport,
    compare,
    exported_predictor,
    parity_shapes,
)
from unetseg.infer.exported import Tiling
from unetseg.model import model_config

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".ts", ".torchscript")}
EXPORTERS = {"onnx": ("dynamo", "legacy"), "torchscript": ("script", "trace")}
WHY_FIRST = {
    "dynamo": "torch.onnx.export(dynamo=True): the maintained exporter (torch.export +"
              " onnxscript); its dynamic sizes follow the model's geometry",
    "script": "torch.jit.script compiles the forward as written, with no example input",
}


class ExportError(Exception):
    """No exporter could write the model."""

    exit_code = 1


@dataclass(frozen=True)
class ExportResult:
    """The written file, the exporter used, why, and the parity measured on it."""

    path: Path
    format: str
    exporter: str
    reason: str
    report: ParityReport


def _check_target(out: Path, fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use onnx or torchscript")
    if out.suffix.lower() not in SUFFIXES[fmt]:
        raise UserError(f"{out}: {fmt} files end with {' or '.join(SUFFIXES[fmt])};"
                        " change --out")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: output folder does not exist; create it or change --out")
    if out.is_dir():
        raise UserError(f"{out}: is a folder; give a file name to --out")


def _writer(fmt: str) -> Callable[..., Path]:
    try:
        if fmt == "onnx":
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401

            from unetseg.export.onnx import export_onnx

            return export_onnx
    except ImportError as exc:
        raise UserError(f"ONNX export needs {exc.name}; install the export extra:"
                        " pip install 'unetseg[export]'") from None
    from unetseg.export.torchscript import export_torchscript

    return export_torchscript


def _first_line(exc: BaseException) -> str:
    """One line about an exporter's failure (torch.export puts its cause after a banner)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    cause = next((ln for ln in lines if ln.startswith("<class '")), None)
    detail = cause or (lines[0] if lines else "")
    return f"{type(exc).__name__}: {detail[:200]}" if detail else type(exc).__name__


def _try(write: Callable[..., Path], net: Any, card: Any, out: Path, fmt: str, name: str,
         tiling: Tiling | None, tolerance: float) -> tuple[Path | None, ParityReport | None, str]:
    """Export with one exporter into a temporary file beside ``out`` and verify it.

    Returns (temporary file if parity passed, report if the export succeeded, note).
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=f".{name}{out.suffix}",
                                    dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(net, card, tmp, exporter=name, tiling=tiling)
        report = compare(net, exported_predictor(tmp, fmt), parity_shapes(card.model),
                         tolerance=tolerance)
    except UserError:
        tmp.unlink(missing_ok=True)
        raise
    except ParityError as exc:  # logits of another shape
        tmp.unlink(missing_ok=True)
        return None, None, f"{name} exporter's parity failed ({exc})"
    except Exception as exc:  # exporters raise many types for graphs they cannot handle
        tmp.unlink(missing_ok=True)
        return None, None, f"{name} exporter failed ({_first_line(exc)})"
    if not report.passed:
        tmp.unlink(missing_ok=True)
        return None, report, (f"{name} exporter's parity failed (max |diff|"
                              f" {report.max_abs_diff:.3e} > {tolerance:.0e})")
    return tmp, report, ""


def export_model(model: str | Path, out: str | Path, fmt: str = "onnx", *,
                 exporter: str = "auto", tolerance: float = FP32_TOLERANCE,
                 tiling: Tiling | None = None) -> ExportResult:
    """Export a unetseg model file to ``out`` and verify it against the eager model.

    Args:
        model: a model file (``RUN/best.safetensors``).
        out: the file to write (``.onnx``; ``.pt``, ``.ts`` or ``.torchscript``).
        fmt: ``"onnx"`` or ``"torchscript"``.
        exporter: ``"auto"`` (try the format's exporters in order), or one of ``dynamo``,
            ``legacy`` (ONNX), ``script``, ``trace`` (TorchScript).
        tolerance: largest accepted absolute logit difference.
        tiling: tiling defaults stored in the file (default :class:`Tiling`).

    Raises:
        UserError: bad model file, output name or exporter name, or a missing extra.
        ParityError: every export ran but none matched within ``tolerance`` (exit status 1).
        ExportError: no exporter could export the model (exit status 1).
    """
    from unetseg.modelfile import load_model

    out = Path(out)
    _check_target(out, fmt)
    names = EXPORTERS[fmt] if exporter == "auto" else (exporter,)
    if exporter != "auto" and exporter not in EXPORTERS[fmt]:
        raise UserError(f"--exporter {exporter} does not write {fmt}; use auto or one of"
                        f" {', '.join(EXPORTERS[fmt])}")
    write = _writer(fmt)
    net, card = load_model(model)
    card = replace(card, model=model_config(net))  # the built network's own (depth, padding)
    notes: list[str] = []
    failed: ParityReport | None = None
    for name in names:
        tmp, report, note = _try(write, net, card, out, fmt, name, tiling, tolerance)
        if tmp is not None and report is not None:
            os.replace(tmp, out)
            why = WHY_FIRST.get(name, "") if not notes else "; ".join(notes)
            if exporter != "auto":
                why = "requested with --exporter"
            return ExportResult(out, fmt, name, why, report)
        notes.append(note)
        failed = report or failed
    if failed is not None or any("parity failed" in note for note in notes):
        lines = failed.lines() if failed is not None else []
        raise ParityError("\n".join(["; ".join(notes), *lines]))
    raise ExportError(f"{model}: could not export to {fmt}: " + "; ".join(notes))
