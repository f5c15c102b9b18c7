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

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unetseg.config import ModelConfig
from unetseg.errors import UserError
from unetseg.export.verify import (
    FP32_TOLERANCE,
    ExportError,
    ParityError,
    ParityReport,
    compare,
    exported_predictor,
    parity_shapes,
)
from unetseg.infer.exported import Tiling
from unetseg.model import model_config

if TYPE_CHECKING:
    from unetseg.infer.modelset import ModelSpec

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "bioimageio")
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".ts", ".torchscript"),
            "bioimageio": (".zip",)}
EXPORTERS = {"onnx": ("dynamo", "legacy"), "torchscript": ("script", "trace")}
WHY_FIRST = {
    "dynamo": "torch.onnx.export(dynamo=True): the maintained exporter (torch.export +"
              " onnxscript); its dynamic sizes follow the model's geometry",
    "script": "torch.jit.script compiles the forward as written, with no example input",
}


@dataclass(frozen=True)
class ExportResult:
    """The written file, the exporter used, why, and the parity measured on it.

    A bioimage.io package holds two exports: ``parts`` are their results (ONNX, TorchScript),
    ``report`` their parity together and ``notes`` the description's validation warnings.
    """

    path: Path
    format: str
    exporter: str
    reason: str
    report: ParityReport
    parts: tuple[ExportResult, ...] = ()
    notes: tuple[str, ...] = ()


def _check_target(out: Path, fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use {', '.join(FORMATS)}")
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


def _load(model: ModelSpec) -> tuple[Any, Any]:
    """The network to export and its card: one model file's network, or a model set's
    :class:`~unetseg.infer.ensemble.EnsembleNet` (see :mod:`unetseg.infer.modelset`)."""
    from unetseg.infer.ensemble import load_ensemble
    from unetseg.infer.modelset import ModelSet, resolve_model
    from unetseg.modelfile import load_model, read_card

    source = resolve_model(model)
    net: Any
    if isinstance(source, ModelSet):
        if any(read_card(m).model.spatial_dims == 3 for m in source.members):
            raise UserError(f"{source.name}: a model set of 3D networks; one graph averaging"
                            " 3D members is not exported yet, so export one member (e.g."
                            " RUN/fold-0/best.safetensors)")
        net, card = load_ensemble(source.members)
        if source.postprocessing:
            log.warning("%s: the exported graph does not include the model set's"
                        " post-processing (%d step(s))", source.name, len(source.postprocessing))
    else:
        check_volume_export(source, read_card(source).model)
        net, card = load_model(source)
        card = replace(card, model=model_config(net))  # the built network's own (depth, padding)
    return net, card


def check_volume_export(source: Path, cfg: ModelConfig) -> None:
    """Refuse a 3D network the export cannot carry honestly: valid padding (unetseg predicts
    volumes with the same-padding sliding window only, and the graph's legal input sizes would
    differ per axis, which the file cannot state).

    Raises:
        UserError: naming the model file and the fix.
    """
    if cfg.spatial_dims == 3 and cfg.padding == "valid":
        raise UserError(f"{source}: a 3D valid-padding network; volumes are exported (and"
                        " predicted) with same padding only; retrain it with padding same")


def export_model(model: ModelSpec, out: str | Path, fmt: str = "onnx", *,
                 exporter: str = "auto", tolerance: float = FP32_TOLERANCE,
                 tiling: Tiling | None = None, sample: str | Path | None = None,
                 author: str | None = None, name: str | None = None) -> ExportResult:
    """Export a unetseg model file to ``out`` and verify it against the eager model.

    Args:
        model: a model file (``RUN/best.safetensors``), or a model set (a run folder of
            ``train --folds``, or several model files): one graph averaging the members'
            class probabilities, each member normalising inside it; without the set's
            post-processing.
        out: the file to write (``.onnx``; ``.pt``, ``.ts`` or ``.torchscript``; ``.zip``).
        fmt: ``"onnx"``, ``"torchscript"`` or ``"bioimageio"`` (a BioImage Model Zoo package
            holding both, see :mod:`unetseg.export.bioimageio`; one model file only).
        exporter: ``"auto"`` (try the format's exporters in order), or one of ``dynamo``,
            ``legacy`` (ONNX), ``script``, ``trace`` (TorchScript).
        tolerance: largest accepted absolute logit difference.
        tiling: tiling defaults stored in the file (default :class:`Tiling`).
        sample: bioimageio: an image like the training images (same channels, same file
            type); a crop of it becomes the package's test input and cover.
        author: bioimageio: the package's author (default ``"unetseg user"``).
        name: bioimageio: the package's name (default from the class names).

    Raises:
        UserError: bad model file, output name or exporter name, or a missing extra.
        ParityError: every export ran but none matched within ``tolerance`` (exit status 1).
        ExportError: no exporter could export the model, or a package's description does not
            validate (exit status 1).
    """
    out = Path(out)
    _check_target(out, fmt)
    if fmt == "bioimageio":
        return _export_package(_one_model_file(model), out, exporter=exporter, tolerance=tolerance,
                               tiling=tiling, sample=sample, author=author, name=name)
    if sample is not None or author is not None or name is not None:
        raise UserError("--sample, --author and --name describe a bioimage.io package; drop"
                        " them or use --format bioimageio")
    names = EXPORTERS[fmt] if exporter == "auto" else (exporter,)
    if exporter != "auto" and exporter not in EXPORTERS[fmt]:
        raise UserError(f"--exporter {exporter} does not write {fmt}; use auto or one of"
                        f" {', '.join(EXPORTERS[fmt])}")
    write = _writer(fmt)
    net, card = _load(model)
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


def _one_model_file(model: ModelSpec) -> Path:
    """The model file a bioimage.io package holds: a model set has several, so it is refused."""
    from unetseg.infer.modelset import ModelSet, resolve_model
    from unetseg.modelfile import read_card

    source = resolve_model(model)
    if isinstance(source, ModelSet):
        raise UserError(f"{source.name}: a model set; a bioimage.io package holds one model file,"
                        " so export one member (e.g. RUN/fold-0/best.safetensors)")
    if read_card(source).model.spatial_dims == 3:
        raise UserError(f"{source}: a 3D network; bioimage.io packages of volume models are not"
                        " written yet (their test tensors and axes are 2-D); use --format onnx"
                        " or torchscript")
    return Path(source)


def _export_package(model: Path, out: Path, *, exporter: str, tolerance: float,
                    tiling: Tiling | None, sample: str | Path | None, author: str | None,
                    name: str | None) -> ExportResult:
    """A bioimage.io package holding the verified ONNX and TorchScript exports."""
    from unetseg.export.bioimageio import require_bioimageio, write_package

    require_bioimageio()
    if exporter != "auto":
        raise UserError(f"--exporter {exporter}: a bioimage.io package holds both formats,"
                        " each from its first exporter that passes; drop --exporter")
    if sample is None:
        raise UserError("--format bioimageio needs --sample IMAGE: an image like the training"
                        " images, whose crop and prediction become the package's test tensors"
                        " and cover")
    parts: list[ExportResult] = []

    def export_weights(fmt: str, path: Path) -> tuple[str, ParityReport]:
        result = export_model(model, path, fmt, tolerance=tolerance, tiling=tiling)
        parts.append(result)
        return result.exporter, result.report

    package = write_package(model, out, export_weights, sample=Path(sample), author=author,
                            name=name)
    report = ParityReport(tuple(d for part in parts for d in part.report.diffs), tolerance)
    used = ", ".join(f"{part.format} {part.exporter}" for part in parts)
    return ExportResult(package.path, "bioimageio", used, "ONNX and TorchScript weights, each"
                        " verified against PyTorch; description validated by bioimageio.spec",
                        report, tuple(parts), package.warnings)
