"""BioImage Model Zoo packages: a model file as a bioimage.io model (spec 0.5), and back.

``unetseg export MODEL --format bioimageio --sample IMAGE --out model.zip`` writes a zip for
the zoo's consumers (Fiji's deepImageJ, ilastik, napari, ``bioimageio.core``), which run it
without unetseg:

* the description (``rdf.yaml``), built and validated with ``bioimageio.spec``;
* weights as ONNX and TorchScript (the verified exports of :mod:`unetseg.export.pipeline`),
  both mapping normalised images to logits;
* the normalisation in the spec's own terms: ``scale_linear`` per channel with
  ``gain = 1 / (scale * std)`` and ``offset = -mean / std``, where ``scale`` is the sample's
  full range (255 for 8-bit, 65535 for 16-bit, 1 for float) that :func:`read_image` divides by;
  this is unetseg's ``(x / scale - mean) / std`` with no ``eps``
  (``bioimageio.core``'s ``fixed_zero_mean_unit_variance`` divides by ``std + 1e-6``); a model
  normalised per image gets ``zero_mean_unit_variance`` over y and x, one with percentile
  clipping ``scale_linear``, ``clip`` and ``scale_linear`` (:func:`_preprocessing`);
* ``softmax`` over the channel axis as postprocessing: the output is class probabilities
  (K, H, W), one channel per class, named after the classes; the label image is their argmax;
* test tensors (a crop of ``--sample`` and the eager PyTorch model's probabilities for it),
  a cover (the crop beside its prediction drawn over it), ``README.md`` with the class table, a
  validation section and the citations, the U-Net paper (by DOI) in ``cite`` (unetseg has no
  DOI or public address yet, which ``cite`` needs: it is named in the description, the tags,
  ``README.md`` and ``config.unetseg``), and the model file itself
  (``unetseg.safetensors``), from which ``unetseg predict`` loads the package again
  (:func:`package_model_file`).

Sizes: the input takes ``min + n * step`` pixels per side (``step = 2**depth``).
Same padding: the output axis declares a halo of
:func:`~unetseg.model.geometry.receptive_radius` pixels (107 at depth 4), the width of the
border whose outputs see the zero padding of the convolutions, rounded up to a multiple of
``step`` (112): tiling tools cut windows that overlap by twice the halo and crop it from each,
so tiles join without seams, and every window starts on the pooling grid of the whole image (a
U-Net's output changes everywhere when its input shifts by other amounts). ``min`` is
``2 * halo + step``, the smallest multiple of ``step`` that leaves pixels after cropping. With
instance or group normalisation every window is normalised on its own, so tiles differ from
the whole image a little everywhere, as in unetseg's own tiling.
Valid padding: ``min`` is the smallest legal side (188 at depth 4) and the output is smaller by
``2 * valid_margin`` (``size.offset``), the halo the network crops itself. The spec expresses
that and bioimage.io's model test passes, but bioimageio.core 0.11's tiled prediction fails on
outputs smaller than their input (whole images run).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.errors import UserError
from unetseg.export.verify import ExportError, ParityReport
from unetseg.model.geometry import (
    min_legal_input_size,
    receptive_radius,
    valid_margin,
    valid_output_size,
)
from unetseg.modelfile import ModelCard

DESCRIPTIONS = ("bioimageio.yaml", "rdf.yaml")
"""File names of a bioimage.io description, the current one first."""
MODEL_FILE = "unetseg.safetensors"
"""The attached unetseg model file inside a package."""
INPUT_ID, OUTPUT_ID = "image", "probabilities"
DEFAULT_AUTHOR = "unetseg user"
LICENSE = "MIT"
UNET_CITATION = ("Ronneberger, O., Fischer, P., Brox, T.: U-Net: Convolutional Networks for"
                 " Biomedical Image Segmentation. MICCAI 2015, LNCS 9351, pp. 234-241")
UNET_DOI = "10.1007/978-3-319-24574-4_28"
TEST_SIDE = 256
"""Largest side of the test input (unless the smallest legal side is larger)."""
SAMPLE_SCALES = {"uint8": 255.0, "uint16": 65535.0, "bool": 1.0}
"""What :func:`~unetseg.data.io.read_image` divides stored samples by; floats: 1."""

ExportWeights = Callable[[str, Path], tuple[str, ParityReport]]
"""(format, file) -> (exporter used, parity): a verified ONNX or TorchScript export."""


def require_bioimageio() -> None:
    """:class:`UserError` naming the extra when bioimageio.spec is not installed."""
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise UserError("--format bioimageio needs bioimageio.spec; install the bioimageio"
                        " extra: pip install 'unetseg[bioimageio]'") from None


@dataclass(frozen=True)
class Geometry:
    """Sizes the package declares, per spatial side, in pixels.

    ``min_size + n * step`` are the input sides; the output is ``input + offset`` with a
    ``halo`` to crop when tiling (same padding) or ``offset = -2 * margin`` (valid padding).
    """

    min_size: int
    step: int
    halo: int
    offset: int

    def legal_below(self, side: int) -> int:
        """The largest declared input side <= ``side`` (``side`` >= ``min_size``)."""
        return self.min_size + (side - self.min_size) // self.step * self.step


def geometry(padding: str, depth: int, up: str = "transpose") -> Geometry:
    """The declared sizes of a U-Net (see the module's text)."""
    step, margin = 2**depth, valid_margin(depth)
    if padding == "valid":
        low = min_legal_input_size(depth)
        assert valid_output_size(low, depth) == low - 2 * margin
        return Geometry(low, step, 0, -2 * margin)
    halo = -(-receptive_radius(depth, up) // step) * step
    return Geometry(2 * halo + step, step, halo, 0)


@dataclass(frozen=True)
class Sample:
    """The test input cut from ``--sample``: stored samples (C, h, w), their dtype as the
    package declares it, and the scale :func:`read_image` divides them by."""

    samples: np.ndarray
    dtype: str
    scale: float

    @property
    def image(self) -> np.ndarray:
        """As :func:`~unetseg.data.io.read_image` returns it: float32 (C, h, w)."""
        return self.samples.astype(np.float32) / np.float32(self.scale)


def read_sample(path: Path, card: ModelCard, geo: Geometry) -> Sample:
    """A centre crop of ``path`` with declared sides of at most :data:`TEST_SIDE` (or the
    smallest declared side), in its stored dtype."""
    from unetseg.data.io import read_image_samples

    data = read_image_samples(path)
    if data.shape[0] != card.model.in_channels:
        raise UserError(f"{path}: --sample has {data.shape[0]} channel(s), the model takes"
                        f" {card.model.in_channels}; pass an image like the training images")
    height, width = data.shape[1:]
    if min(height, width) < geo.min_size:
        raise UserError(f"{path}: --sample is {height} x {width} pixels; the package's test"
                        f" input needs at least {geo.min_size} x {geo.min_size}; pass a larger"
                        " image")
    cap = max(TEST_SIDE, geo.min_size)
    h, w = geo.legal_below(min(height, cap)), geo.legal_below(min(width, cap))
    top, left = (height - h) // 2, (width - w) // 2
    crop = np.ascontiguousarray(data[:, top:top + h, left:left + w])
    if crop.dtype == np.bool_:
        return Sample(crop.astype(np.uint8), "uint8", 1.0)
    if crop.dtype.name in SAMPLE_SCALES:
        return Sample(crop, crop.dtype.name, SAMPLE_SCALES[crop.dtype.name])
    return Sample(crop.astype(np.float32), "float32", 1.0)


def _probabilities(net: Any, card: ModelCard, image: np.ndarray) -> np.ndarray:
    """The eager model's class probabilities (1, K, h', w') float32 for an image (C, h, w)."""
    import torch

    from unetseg.data.normalize import normalize

    with torch.inference_mode():
        x = normalize(torch.from_numpy(image), card.stats)[None]
        return torch.softmax(net(x).float(), dim=1).numpy()


def _cover(sample: Sample, probabilities: np.ndarray, card: ModelCard, geo: Geometry
           ) -> np.ndarray:
    """The test input (cut to the output's extent) beside its prediction drawn over it:
    (h', 2 w', 3) uint8, the 2:1 shape the zoo's gallery shows."""
    from unetseg.data.masks import class_colours
    from unetseg.viz import display_rgb, overlay

    ids = probabilities[0].argmax(axis=0)
    cut = -geo.offset // 2
    image = sample.image[:, cut:sample.image.shape[1] - cut, cut:sample.image.shape[2] - cut]
    return np.concatenate([display_rgb(image), overlay(image, ids, class_colours(card.classes))],
                          axis=1)


def _name(card: ModelCard, name: str | None) -> str:
    """The resource name: letters, digits, ``_+- ()`` only, 5 to 64 characters."""
    import re

    text = name or "unetseg U-Net " + " ".join(card.classes.names)
    text = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", text).strip()[:64].strip()
    if len(text) < 5:
        raise UserError(f"--name {name!r}: a bioimage.io name needs 5 to 64 letters, digits,"
                        " spaces or _+-(); choose another")
    return text


def _class_rows(card: ModelCard) -> list[dict[str, Any]]:
    from unetseg.data.masks import class_colours

    colours = class_colours(card.classes).tolist()
    return [{"id": i, "name": name, "value": value, "color": colours[i]}
            for i, (name, value) in enumerate(zip(card.classes.names, card.classes.values))]


def _scale_linear(gains: list[float], offsets: list[float]) -> dict[str, Any]:
    """A ``scale_linear`` step, per channel when there are several."""
    if len(gains) == 1:
        return {"id": "scale_linear", "kwargs": {"gain": gains[0], "offset": offsets[0]}}
    return {"id": "scale_linear", "kwargs": {"axis": "channel", "gain": gains,
                                             "offset": offsets}}


def _preprocessing(card: ModelCard, scale: float) -> list[dict[str, Any]]:
    """The model card's normalisation in the spec's steps, then float32:

    * ``dataset``: ``scale_linear`` computing ``(x / scale - mean) / std`` per channel;
    * ``image``: ``zero_mean_unit_variance`` over y and x, per sample and channel (the spec
      divides by ``std + eps``, eps 1e-6 of the stored scale; unetseg floors the sd at 1e-6);
    * ``percentile``: ``scale_linear`` mapping each channel's clip bounds ``low``..``high``
      to 0..1, ``clip`` to 0..1 (one range for every channel, as the spec's ``clip`` takes),
      then ``scale_linear`` back and on to ``(x - mean) / std``.
    """
    stats = card.stats
    float32 = {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}
    if stats.scheme == "image":
        return [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"], "eps": 1e-6}},
                float32]
    if stats.scheme == "percentile":
        assert stats.low is not None and stats.high is not None
        spans = [h - lo for lo, h in zip(stats.low, stats.high)]
        to_unit = _scale_linear(
            [1.0 / (scale * d) if d > 0 else 0.0 for d in spans],
            [-lo / d if d > 0 else 0.0 for lo, d in zip(stats.low, spans)])
        back = _scale_linear([d / s for d, s in zip(spans, stats.std)],
                             [(lo - m) / s for lo, m, s in zip(stats.low, stats.mean, stats.std)])
        return [to_unit, {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}}, back, float32]
    return [_scale_linear([1.0 / (scale * s) for s in stats.std],
                          [-m / s for m, s in zip(stats.mean, stats.std)]), float32]


def _preprocessing_text(stats: Any, scale: float) -> str:
    """What the preprocessing computes, for the package's README.md."""
    if stats.scheme == "image":
        return ("Preprocessing (`zero_mean_unit_variance` over y and x) z-scores each image and"
                " channel by its own mean and standard deviation, as unetseg's per-image"
                " normalisation does.")
    where = ("the training images' statistics in unetseg's scale (8-bit / 255, 16-bit / 65535,"
             " float as is)")
    if stats.scheme == "percentile":
        return (f"Preprocessing (`scale_linear`, `clip`, `scale_linear`, per channel) clips"
                f" `x / {scale:g}` to low {list(stats.low)} and high {list(stats.high)} (the"
                f" training images' 0.5th and 99.5th percentiles), then computes"
                f" `(x - mean) / std` with mean {list(stats.mean)} and std {list(stats.std)},"
                f" {where}.")
    return (f"Preprocessing (`scale_linear`, per channel) computes `(x / {scale:g} - mean) / std`"
            f" with mean {list(stats.mean)} and std {list(stats.std)}, {where}.")


def _documentation(card: ModelCard, sample: Sample, geo: Geometry, name: str,
                   exporters: dict[str, str]) -> str:
    """The package's README.md."""
    import unetseg

    cfg, stats = card.model, card.stats
    rows = "\n".join(f"| {r['id']} | {r['name']} | {r['value']} | "
                     f"#{''.join(f'{c:02x}' for c in r['color'])} |" for r in _class_rows(card))
    if cfg.padding == "valid":
        sizes = (f"Input sides of {geo.min_size} + {geo.step}n pixels (valid padding); the"
                 f" output is {-geo.offset} pixels smaller per side (a border of"
                 f" {-geo.offset // 2} pixels, cropped by the network itself).")
    else:
        sizes = (f"Input sides of {geo.min_size} + {geo.step}n pixels; the output has the"
                 f" input's size. The network pads internally, so other sides run too. Tiling"
                 f" tools should crop a halo of {geo.halo} pixels per side from each tile's"
                 " output (declared on the output axes): the border whose outputs see the"
                 " convolutions' zero padding, a multiple of"
                 f" {geo.step} so that tiles start on the pooling grid.")
        if cfg.norm in ("instance", "group"):
            sizes += (f" With {cfg.norm} normalisation each tile is normalised on its own, so"
                      " tiled outputs differ a little from whole-image outputs.")
    info = {k: v for k, v in card.info.items() if isinstance(v, int | float | str)}
    scores = "\n".join(f"- {k}: {v}" for k, v in info.items()) or "- (none stored)"
    return f"""# {name}

A 2D U-Net (Ronneberger et al. 2015) for semantic segmentation into
{card.classes.num_classes} classes, trained and packaged with unetseg {unetseg.__version__}.

## Classes

Output channel `id` holds the probability of the class; the label image is the argmax over
the channels. `value` is the class's value in the training masks.

| id | name | value | colour |
|---|---|---|---|
{rows}

## Input

{cfg.in_channels} channel(s), axes batch, channel, y, x; {sample.dtype} samples as stored in the
training images. {_preprocessing_text(stats, sample.scale)}
{sizes}

## Output

`{OUTPUT_ID}`: float32 (batch, channel, y, x), the softmax of the network's logits over the
class channel (postprocessing `softmax`).

## Network

depth {cfg.depth}, base width {cfg.width}, padding {cfg.padding}, upsampling {cfg.up},
normalisation {cfg.norm}. Weights: ONNX (exporter {exporters.get('onnx')}) and TorchScript
(exporter {exporters.get('torchscript')}), both verified against PyTorch at export (largest
absolute logit difference at most 1e-4). `{MODEL_FILE}` is the unetseg model file itself:
`unetseg predict model.zip IMAGES --out DIR` runs it.

## Validation

The test tensors are a crop of a sample image and the PyTorch model's probabilities for it;
`bioimageio test model.zip` reproduces them with each weight format. To score the model on
your own annotated images: `unetseg evaluate model.zip DATA --out report/` (DATA/images and
DATA/masks). Scores stored with the model at training time:

{scores}

## Citation

- {UNET_CITATION}. doi:{UNET_DOI}
- unetseg {unetseg.__version__}: U-Net semantic segmentation (train, predict, evaluate, ship),
  the software that trained and packaged this model.
"""


def _description(card: ModelCard, sample: Sample, geo: Geometry, files: dict[str, Path],
                 *, name: str, author: str, exporters: dict[str, str],
                 parameters: int) -> dict[str, Any]:
    """The bioimage.io model description (format 0.5) as YAML content."""
    import torch
    from bioimageio.spec.model.v0_5 import ModelDescr

    import unetseg

    cfg = card.model
    space_in = [{"type": "space", "id": axis,
                 "size": {"min": geo.min_size, "step": geo.step}} for axis in ("y", "x")]
    space_out: list[dict[str, Any]] = []
    for axis in ("y", "x"):
        out: dict[str, Any] = {"type": "space", "id": axis,
                               "size": {"tensor_id": INPUT_ID, "axis_id": axis,
                                        "offset": geo.offset}}
        if geo.halo:
            out["halo"] = geo.halo
        space_out.append(out)
    channels_in = [f"channel{i}" for i in range(cfg.in_channels)]
    data_range = [0.0, sample.scale] if sample.dtype != "float32" else [None, None]
    return {
        "format_version": ModelDescr.implemented_format_version,
        "type": "model",
        "name": name,
        "description": (f"U-Net semantic segmentation into {card.classes.num_classes} classes"
                        f" ({', '.join(card.classes.names)}), trained and packaged with"
                        f" unetseg {unetseg.__version__}"),
        "authors": [{"name": author}],
        "license": LICENSE,
        "cite": [{"text": UNET_CITATION, "doi": UNET_DOI}],
        "tags": ["unetseg", "unet", "semantic-segmentation", "2d", "pytorch", "onnx",
                 "torchscript"],
        "documentation": {"source": files["documentation"].name},
        "covers": [{"source": files["cover"].name}],
        "attachments": [{"source": files["model"].name}],
        "inputs": [{
            "id": INPUT_ID,
            "description": f"image ({sample.dtype}), as stored in the training images",
            "axes": [{"type": "batch"},
                     {"type": "channel", "channel_names": channels_in}, *space_in],
            "test_tensor": {"source": files["test_input"].name},
            "sample_tensor": {"source": files["sample_input"].name},
            "data": {"type": sample.dtype, "range": data_range},
            "preprocessing": _preprocessing(card, sample.scale),
        }],
        "outputs": [{
            "id": OUTPUT_ID,
            "description": "class probabilities (softmax of the logits); labels are the argmax",
            "axes": [{"type": "batch"},
                     {"type": "channel", "channel_names": list(card.classes.names)},
                     *space_out],
            "test_tensor": {"source": files["test_output"].name},
            "sample_tensor": {"source": files["sample_output"].name},
            "data": {"type": "float32", "range": [0.0, 1.0]},
            "postprocessing": [{"id": "softmax", "kwargs": {"axis": "channel"}}],
        }],
        "weights": {
            "torchscript": {"source": files["torchscript"].name,
                            "pytorch_version": str(torch.__version__).split("+")[0],
                            "comment": f"torch.jit.{exporters['torchscript']} of the unetseg"
                                       " model file (attached)"},
            "onnx": {"source": files["onnx"].name, "opset_version": _opset(files["onnx"]),
                     "parent": "torchscript",
                     "comment": f"torch.onnx.export ({exporters['onnx']}) of the unetseg"
                                " model file (attached); same graph as the TorchScript"},
        },
        "config": {
            "bioimageio": {"architecture_type": "U-Net", "task": "semantic segmentation",
                           "model_parameter_count": parameters},
            "unetseg": {"version": unetseg.__version__, "model_file": MODEL_FILE,
                        "classes": _class_rows(card), "input_scale": sample.scale,
                        "card": json.loads(card.to_json())},
        },
    }


def _opset(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return max(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


@dataclass(frozen=True)
class PackageResult:
    """The written package, the exporters used and each format's parity with PyTorch."""

    path: Path
    exporters: dict[str, str]
    reports: dict[str, ParityReport]
    warnings: tuple[str, ...]


def write_package(model: Path, out: Path, export_weights: ExportWeights, *,
                  sample: Path, author: str | None = None, name: str | None = None
                  ) -> PackageResult:
    """Write ``model`` as a bioimage.io model package ``out`` (``.zip``), validated with
    bioimage.io's spec. ``export_weights`` writes the verified ONNX and TorchScript files.

    Raises:
        UserError: a missing extra, a bad sample, name or output path.
        ExportError: the description does not validate (the message lists the errors).
    """
    require_bioimageio()
    import tifffile

    from unetseg.modelfile import load_model

    if out.suffix.lower() != ".zip":
        raise UserError(f"{out}: a bioimage.io package is a .zip file; change --out")
    net, card = load_model(model)
    if card.instance is not None:
        raise UserError(f"{model}: an instance model; its objects come from a watershed outside"
                        " the network, which a bioimage.io package cannot describe; export it"
                        " with --format onnx or torchscript")
    geo = geometry(card.model.padding, card.model.depth, card.model.up)
    test = read_sample(Path(sample), card, geo)
    probabilities = _probabilities(net, card, test.image)
    title = _name(card, name)
    with tempfile.TemporaryDirectory(prefix="unetseg-bioimageio-") as tmp:
        folder = Path(tmp)
        files = {"onnx": folder / "weights.onnx", "torchscript": folder / "weights.pt",
                 "test_input": folder / "test_input.npy",
                 "test_output": folder / "test_output.npy", "cover": folder / "cover.png",
                 "sample_input": folder / "sample_input.tif",
                 "sample_output": folder / "sample_output.tif",
                 "documentation": folder / "README.md", "model": folder / MODEL_FILE}
        exporters, reports = {}, {}
        for fmt in ("onnx", "torchscript"):
            exporters[fmt], reports[fmt] = export_weights(fmt, files[fmt])
        np.save(files["test_input"], test.samples[None])
        np.save(files["test_output"], probabilities)
        tifffile.imwrite(files["sample_input"], test.samples)
        tifffile.imwrite(files["sample_output"], probabilities[0])
        from unetseg.data.write import write_rgb

        write_rgb(files["cover"], _cover(test, probabilities, card, geo))
        files["documentation"].write_text(_documentation(card, test, geo, title, exporters))
        shutil.copyfile(model, files["model"])
        content = _description(card, test, geo, files, name=title,
                               author=author or DEFAULT_AUTHOR, exporters=exporters,
                               parameters=sum(p.numel() for p in net.parameters()))
        warnings = _save(content, folder, out)
    return PackageResult(out, exporters, reports, warnings)


def _save(content: dict[str, Any], folder: Path, out: Path) -> tuple[str, ...]:
    """Validate ``content`` and write it as a package at ``out`` (atomically); returns the
    validation's warnings."""
    from bioimageio.spec import (
        InvalidDescr,
        ValidationContext,
        build_description,
        save_bioimageio_package,
    )

    from unetseg.files import atomic_path

    context = ValidationContext(root=folder, file_name=DESCRIPTIONS[0], perform_io_checks=True)
    descr = build_description(content, context=context)
    summary = descr.validation_summary
    if isinstance(descr, InvalidDescr) or summary.status == "failed":
        errors = "; ".join(": ".join(filter(None, (".".join(map(str, e.loc)), e.msg)))
                           for e in summary.errors)
        raise ExportError(f"{out}: the bioimage.io description does not validate: {errors}")
    with atomic_path(out) as tmp:
        save_bioimageio_package(descr, output_path=tmp)
    return tuple(": ".join(filter(None, (".".join(map(str, w.loc)), w.msg)))
                 for w in summary.warnings)


# ------------------------------------------------------------------------------ reading back


def is_package(path: str | Path) -> bool:
    """Whether ``path`` is a bioimage.io package: a zip or a folder with a description."""
    path = Path(path)
    if path.is_dir():
        return any((path / n).is_file() for n in DESCRIPTIONS)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n in archive.namelist() for n in DESCRIPTIONS)


def package_model_file(path: str | Path, cache: Path) -> Path:
    """The unetseg model file inside a package written by unetseg: the attached
    ``unetseg.safetensors`` (a zip's copy is extracted once into ``cache``, named by its
    SHA-256, so the backend timings cached per model file apply to it).

    Raises:
        UserError: a package without that attachment (not written by unetseg).
    """
    import hashlib

    path = Path(path)
    hint = ("unetseg predicts the packages that unetseg export --format bioimageio wrote; run"
            " others with bioimageio.core or a zoo consumer")
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise UserError(f"{path}: a bioimage.io package without {MODEL_FILE}; {hint}")
        return path / MODEL_FILE
    with zipfile.ZipFile(path) as archive:
        if MODEL_FILE not in archive.namelist():
            raise UserError(f"{path}: a bioimage.io package without {MODEL_FILE}; {hint}")
        data = archive.read(MODEL_FILE)
    from unetseg.files import write_bytes_atomic

    target = cache / "bioimageio" / f"{hashlib.sha256(data).hexdigest()[:32]}.safetensors"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, data)
    return target
