"""The Python API behind the command line: ``predict``, ``evaluate``, ``plan`` and ``demo``.

Each function mirrors one ``unetseg`` command and takes the same options as keywords.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from unetseg.config import PredictConfig, predict_config
from unetseg.data.classes import ClassTable
from unetseg.data.io import image_size, read_image, read_mask
from unetseg.data.masks import class_colours, encode_mask, write_mask
from unetseg.data.pairs import Pair, check_same_size, find_pairs, list_images, read_pair_mask
from unetseg.data.write import write_rgb, write_tiff
from unetseg.errors import UserError
from unetseg.export.fastest import load_fastest
from unetseg.files import output_folder, write_bytes_atomic, write_csv_atomic, write_text_atomic
from unetseg.infer.engine import ImagePredictor
from unetseg.infer.evaluate import Truth, score_images
from unetseg.infer.modelset import ModelSpec
from unetseg.infer.postprocess import apply_postprocessing
from unetseg.infer.predict import logits_to_labels
from unetseg.metrics import dice as dice_of
from unetseg.metrics import iou, mean_iou, pixel_accuracy, summarize
from unetseg.modelfile import ModelCard
from unetseg.progress import progress
from unetseg.report.evaluation import write_evaluation_report
from unetseg.viz import overlay

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from unetseg.infer.omezarr import OmeZarrImage


def _check_readable(paths: Sequence[Path]) -> None:
    """Read every header before any output is written, so a bad file stops the run early."""
    for path in paths:
        image_size(path)


def predict(model: ModelSpec, images: Sequence[str | Path] | str | Path, out: str | Path,
            config: PredictConfig | None = None, *, probabilities: bool = False,
            overlays: bool = True, stream: bool | None = None, max_pixels: int | None = None,
            level: int = 0, label_name: str = "unetseg", overwrite_labels: bool = False,
            volume: bool = False, spacing: Sequence[float] | None = None,
            show_progress: bool = True, **options: Any) -> list[Path]:
    """Predict label images for images of any size and write them into ``out``.

    Volumes (NIfTI and NumPy files always; TIFF stacks and folders of volumes with
    ``volume=True``) are predicted by :func:`predict_volumes`, with ``spacing`` for files
    that carry none.

    For each image ``<stem>``: ``<stem>.png`` holds the labels in the training masks' own
    encoding (gray values such as 0/255, the masks' colours, or a palette PNG with their
    palette) and the class table in a text chunk (:func:`~unetseg.data.masks.label_metadata`),
    ``<stem>_overlay.png`` the classes drawn over the image, and with
    ``probabilities`` ``<stem>_probs.tif`` the class probabilities (K, H, W) float32.
    TIFFs of more than :data:`STREAM_PIXELS` pixels (or any TIFF with ``stream=True``) are
    streamed: read band by band and written as a tiled BigTIFF ``<stem>.tif`` with a
    downsampled overlay, in memory that grows with the image width only, with the same labels
    as in memory. Streamed TIFFs of more than ``max_pixels`` pixels (default
    :data:`~unetseg.data.io.MAX_PIXELS`) are refused from their header as likely bombs.

    OME-Zarr images (``.zarr`` folders, NGFF 0.4 or 0.5) are always streamed: pyramid level
    ``level`` of every 2-D plane is read band by band and its labels are written into the image
    itself, as the OME-Zarr label image ``<image>/labels/<label_name>`` with a label pyramid
    (:mod:`unetseg.infer.omezarr`); ``out`` gets the overlay. An existing label image of that
    name is replaced only with ``overwrite_labels``.

    ``config`` (a :class:`~unetseg.config.PredictConfig`) and ``options`` (its fields as
    keywords, on top: ``tile``, ``overlap``, ``batch_size``, ``device``, ``tta``, ``backend``,
    ``precision``) say how to predict. ``tta`` augments every tile at test time (``flip``,
    ``d4``, ``rot:N``; not for streamed TIFFs). The ``onnxruntime`` backend (``auto`` picks it
    for ``.onnx`` files) runs a file written by ``unetseg export`` with ONNX Runtime on the CPU,
    through the same tiling and blending; for other files ``auto`` picks ONNX Runtime where it
    was measured faster than PyTorch for the model on this machine
    (:mod:`unetseg.export.fastest`). ``precision`` ``auto`` predicts in bf16 on CPUs with
    native bf16 when the model's labels agree with fp32 on the first image's centre (see
    :mod:`unetseg.infer.precision`).

    ``model`` is a model file, or a model set: a run folder of ``train --folds`` (its fold
    models' mean class probabilities, then the post-processing chosen on their held-out
    predictions; not for streamed TIFFs, whose labels are never whole in memory) or several
    model files (a list, or joined by commas); see :mod:`unetseg.infer.modelset`. Returns the
    label image paths.

    An instance model (``train --task instance``) writes per image ``<stem>_instances.png``
    (16-bit object labels, 0 background; ``<stem>_instances.tif``, 32-bit, above 65535
    objects), ``<stem>_overlay.png`` (each object outlined in its own colour),
    ``<stem>_objects.csv`` (per object: id, area, centroid, bounding box, mean intensity per
    channel, whether it touches the image's edge; :func:`~unetseg.infer.instances.measure_objects`)
    and with ``probabilities`` ``<stem>_probs.tif`` (its object and seed maps, (2, H, W)).
    The network's output is blended over the whole image before the objects are split
    (:mod:`unetseg.infer.instances`), so tiles cut no object; a streamed TIFF becomes a tiled
    BigTIFF ``<stem>_instances.tif`` whose objects keep one id across the bands
    (:mod:`unetseg.infer.instance_bands`). Returns the instance images.
    """
    from unetseg.infer.omezarr import is_zarr_folder

    cfg = predict_config(config, **options)
    given = [images] if isinstance(images, str | Path) else list(images)
    volumes = [Path(p) for p in given if volume or _is_volume_only(p)]
    if volumes:
        done = predict_volumes(model, volumes, out, cfg, spacing=spacing, overlays=overlays,
                               show_progress=show_progress)
        given = [p for p in given if Path(p) not in volumes]
        if not given:
            return done
        return done + predict(model, given, out, cfg, probabilities=probabilities,
                              overlays=overlays, stream=stream, max_pixels=max_pixels,
                              level=level, label_name=label_name,
                              overwrite_labels=overwrite_labels, show_progress=show_progress)
    zarrs = list(dict.fromkeys(Path(p) for p in given if is_zarr_folder(p)))
    others = [p for p in given if not is_zarr_folder(p)]
    paths = list_images(others) if others or not zarrs else []
    to_stream = [p for p in paths if _streams(p, stream)]
    omezarrs = _open_omezarrs(zarrs, level, max_pixels, label_name, overwrite_labels,
                              tta=cfg.tta, probabilities=probabilities)
    loaded = load_fastest(model, cfg, streamed=to_stream + zarrs)
    predictor, card = loaded.predictor, loaded.card
    if (to_stream or zarrs) and loaded.postprocessing:
        log.warning("%s: streamed TIFFs and OME-Zarr images are not post-processed (their"
                    " labels are never whole in memory)", (to_stream + zarrs)[0])
    _check_readable(paths)
    _check_streamable([p for p in paths if _streams(p, stream)], max_pixels)
    streamed = [p for p in paths if _streams(p, stream)] if cfg.tta else []
    if streamed:
        raise UserError(f"{streamed[0]}: --tta does not apply to streamed TIFFs; drop --tta"
                        " (or --stream)")
    from unetseg.infer.omezarr import check_omezarr_channels

    for ome in omezarrs:
        check_omezarr_channels(ome, card.model.in_channels)
    out = output_folder(out)
    clashes = [p for p in paths for suffix in (".png", ".tif", "_instances.png",
                                               "_instances.tif")
               if (out / f"{p.stem}{suffix}").resolve() == p.resolve()]
    if clashes:
        raise UserError(f"{clashes[0]}: predicting into the input folder would overwrite it;"
                        " choose another --out")
    palette = class_colours(card.classes)
    written = []
    for path in progress(paths, desc="predict", unit="image", disable=not show_progress):
        if _streams(path, stream):
            written.append(_predict_streamed(predictor, card, path, out, overlays=overlays,
                                             max_pixels=max_pixels,
                                             show_progress=show_progress))
            continue
        image = read_image(path)
        predictor.check_channels(image, path)
        logits = predictor.logits(image)  # either backend's predictor
        if card.instance is not None:
            written.append(_write_objects(image, logits, card, out, path.stem,
                                          overlays=overlays, probabilities=probabilities))
            continue
        ids = apply_postprocessing(logits_to_labels(logits).numpy(), loaded.postprocessing)
        write_mask(out / f"{path.stem}.png", ids, card.classes)  # in the masks' encoding
        if overlays:
            write_rgb(out / f"{path.stem}_overlay.png", overlay(image, ids, palette))
        if probabilities:
            write_tiff(out / f"{path.stem}_probs.tif", torch.softmax(logits, 0).numpy())
        written.append(out / f"{path.stem}.png")
    for ome in omezarrs:
        written.append(_predict_omezarr(predictor, card, ome, out, overlays=overlays,
                                        label_name=label_name, overwrite=overwrite_labels,
                                        show_progress=show_progress))
    return written


def _write_objects(image: np.ndarray, logits: torch.Tensor, card: ModelCard, out: Path,
                   stem: str, *, overlays: bool, probabilities: bool) -> Path:
    """An instance model's files for one image (see :func:`predict`); returns the labels'."""
    from unetseg.data.write import write_instances
    from unetseg.infer.instances import instance_maps, instances_from_maps, object_csv
    from unetseg.viz import object_outlines

    assert card.instance is not None
    maps = instance_maps(logits, card.instance)
    labels = instances_from_maps(maps, card.instance)
    path = write_instances(out, stem, labels)
    write_text_atomic(out / f"{stem}_objects.csv", object_csv(labels, image))
    if overlays:
        write_rgb(out / f"{stem}_overlay.png", object_outlines(image, labels))
    if probabilities:
        write_tiff(out / f"{stem}_probs.tif", maps.stack())
    return path


def _is_volume_only(path: str | Path) -> bool:
    """A file that can only be a volume (NIfTI, NumPy), never a 2-D image."""
    from unetseg.data.volumes import volume_suffix

    return Path(path).is_file() and volume_suffix(path) in (".nii", ".nii.gz", ".npy")


def predict_volumes(model: ModelSpec, volumes: Sequence[str | Path] | str | Path,
                    out: str | Path, config: PredictConfig | None = None, *,
                    spacing: Sequence[float] | None = None, overlays: bool = True,
                    show_progress: bool = True, **options: Any) -> list[Path]:
    """Predict the labels of volumes (TIFF stacks, OME-TIFF, NIfTI, NumPy; a folder gives its
    volume files) and write them into ``out``, one file per volume in its own format, on its
    voxels: ``<stem>.tif`` (ImageJ stack with the spacing; OME-TIFF for ``.ome.tif``),
    ``<stem>.nii.gz`` (the input's affine) or ``<stem>.npy``; with ``overlays``,
    ``<stem>_views.png`` (orthogonal views and a slice montage, :func:`~unetseg.viz.plot_volume`).

    A 3D model runs the 3D sliding window (a window of ``tile`` voxels along each axis, or
    planned by :func:`~unetseg.infer.volume.plan_volume_tile`; neighbours overlap by
    ``overlap``, None: 0.5, 0: not at all); a 2D model predicts slice by slice (the baseline
    for any 3D result); a valid-padding 3D U-Net the paper's overlap-tile strategy with
    mirrored borders. ``spacing`` (z, y, x) is used where a file has none.
    Returns the label files.

    Every volume is streamed along z: slices are read as the windows need them
    (:func:`~unetseg.data.volumes.open_volume`), only one window depth of logits is held, and
    labels are written slab by slab (:func:`~unetseg.data.volumes.write_volume_slabs`), so
    memory grows with the window and the slice size, not the volume's depth; the labels equal
    those of the whole volume in memory (:func:`~unetseg.infer.volume.predict_volume_slabs`).
    The overlay picture is gathered from the same slabs and a second read, its contrast from
    the planes it shows.

    Raises:
        UserError: a model set or an instance model (volumes take one semantic model), a
            volume the model's channels do not fit, or an unreadable file.
    """
    from unetseg.data.volumes import (
        VOLUME_SUFFIXES,
        open_volume,
        smallest_label_dtype,
        volume_files,
        volume_stem,
        volume_suffix,
        write_volume_slabs,
    )
    from unetseg.infer.engine import resolve_device
    from unetseg.infer.modelset import resolve_model
    from unetseg.infer.volume import predict_volume_slabs
    from unetseg.modelfile import load_model
    from unetseg.viz import VolumePlanes, plot_volume_planes

    cfg = predict_config(config, **options)
    resolved = resolve_model(model)
    if not isinstance(resolved, Path):
        raise UserError(f"{resolved.name or model}: volumes are predicted with one model file,"
                        " not a model set; give one member")
    net, card = load_model(resolved, resolve_device(cfg.device))
    if card.instance is not None:
        raise UserError(f"{resolved}: an instance model; volumes take a semantic model")
    given = [volumes] if isinstance(volumes, str | Path) else list(volumes)
    paths: list[Path] = []
    for raw in map(Path, given):
        if raw.is_dir():
            paths += volume_files(raw).values()
        else:
            paths.append(raw)
    if not paths:
        raise UserError(f"{', '.join(map(str, given))}: no volume files found; give"
                        f" {', '.join(VOLUME_SUFFIXES)} files")
    out = output_folder(out)
    palette = class_colours(card.classes)
    tile = (cfg.tile,) * 3 if cfg.tile else None
    values = np.asarray(card.classes.values)
    label_type = smallest_label_dtype(int(values.min()), int(values.max()))
    class_values = values.astype(label_type)  # ids -> the masks' values, as 2D labels are
    written = []
    for path in progress(paths, desc="predict", unit="volume", disable=not show_progress):
        suffix, stem = volume_suffix(path), volume_stem(path)
        if path.name.lower().endswith((".ome.tif", ".ome.tiff")):
            suffix = ".ome.tif"
        target = out / f"{stem}{'.nii.gz' if suffix == '.nii' else suffix}"
        if target.resolve() == path.resolve():
            raise UserError(f"{path}: predicting into the input folder would overwrite it;"
                            " choose another --out")
        with open_volume(path, spacing=spacing) as source:
            if source.channels != card.model.in_channels:
                raise UserError(f"{path}: the volume has {source.channels} channel(s); the"
                                f" model takes {card.model.in_channels}")
            planes = VolumePlanes(source.shape) if overlays else None

            def label_slabs(source: Any = source, planes: VolumePlanes | None = planes
                            ) -> Iterator[np.ndarray]:
                for z0, logits in predict_volume_slabs(
                        net, card.stats, source.read, source.shape, tile=tile,
                        overlap=0.5 if cfg.overlap is None else cfg.overlap,
                        batch_size=cfg.batch_size):
                    ids = logits_to_labels(logits.transpose(0, 1)).numpy()  # (n, H, W)
                    if planes is not None:
                        planes.add(z0, ids=ids)
                    yield class_values[ids]

            written.append(write_volume_slabs(target, label_slabs(), shape=source.shape,
                                              dtype=label_type, like=source))
            if planes is not None:
                depth, slab = source.shape[0], max(1, (tile or (16,))[0])
                for z0 in range(0, depth, slab):
                    planes.add(z0, image=source.read(z0, min(depth, z0 + slab)))
                plot_volume_planes(planes, out / f"{stem}_views.png", spacing=source.spacing,
                                   palette=palette,
                                   title=f"{path.name}: {card.model.spatial_dims}D model")
    return written


def evaluate_volumes(model: ModelSpec, data: str | Path, out: str | Path | None = None,
                     config: PredictConfig | None = None, *,
                     spacing: Sequence[float] | None = None, tolerance: float = 1.0,
                     show_progress: bool = True, **options: Any) -> Evaluation:
    """Score a model on a volume data set (``data/images`` + ``data/masks``, one volume per
    file, paired by name; see :func:`~unetseg.data.volumes.check_volumes`).

    Per volume and class: IoU and Dice (from the volume's confusion matrix), HD95 and the
    normalised surface Dice at ``tolerance`` (:mod:`unetseg.metrics_boundary`), both in the
    volumes' physical units (their spacing, else ``spacing``, else voxels). The summary holds
    the pooled confusion matrix's scores and each class's mean HD95 and NSD over the volumes.
    With ``out``, writes ``metrics.json`` and ``per_volume.csv``. Returns an
    :class:`Evaluation` whose rows are the volumes (``predictions`` empty).

    Raises:
        UserError: a data set ``check`` finds problems in (the first is named).
    """
    from unetseg.data.volumes import check_volumes, read_volume, read_volume_mask, volume_files
    from unetseg.infer.engine import resolve_device
    from unetseg.infer.modelset import resolve_model
    from unetseg.infer.volume import predict_volume_logits
    from unetseg.metrics import confusion_matrix
    from unetseg.metrics_boundary import hd95, mean_over_images, surface_dice
    from unetseg.modelfile import load_model

    cfg = predict_config(config, **options)
    report = check_volumes(data, spacing=spacing)
    if report.problems:
        raise UserError(report.problems[0])
    resolved = resolve_model(model)
    if not isinstance(resolved, Path):
        raise UserError(f"{resolved.name or model}: volumes are scored with one model file")
    net, card = load_model(resolved, resolve_device(cfg.device))
    k, names = card.classes.num_classes, list(card.classes.names)
    images, masks = volume_files(Path(data) / "images"), volume_files(Path(data) / "masks")
    total = torch.zeros(k, k, dtype=torch.long)
    rows, hds, nsds = [], [], []
    for row in progress(report.rows, desc="evaluate", unit="volume",
                        disable=not show_progress):
        stem = row["stem"]
        volume = read_volume(images[stem], spacing=spacing)
        truth = card.classes.encode(read_volume_mask(masks[stem], spacing=spacing).array,
                                    str(masks[stem]))
        logits = predict_volume_logits(net, card.stats, volume.array,
                                       tile=(cfg.tile,) * 3 if cfg.tile else None,
                                       overlap=cfg.overlap, batch_size=cfg.batch_size)
        pred = logits_to_labels(logits.transpose(0, 1)).numpy()
        cm = confusion_matrix(torch.as_tensor(pred), torch.as_tensor(truth), k)
        total += cm
        hd = hd95(pred, truth, k, spacing=volume.spacing)
        nsd = surface_dice(pred, truth, k, tolerance, spacing=volume.spacing)
        hds.append(hd)
        nsds.append(nsd)
        line: dict[str, Any] = {"volume": stem}
        for i, name in enumerate(names):
            line[f"iou/{name}"] = _round(float(iou(cm)[i]))
            line[f"dice/{name}"] = _round(float(dice_of(cm)[i]))
            line[f"hd95/{name}"] = _round(float(hd[i]))
            line[f"nsd/{name}"] = _round(float(nsd[i]))
        rows.append(line)
    summary = summarize(total, names)
    hd_class, hd_mean = mean_over_images(np.array(hds))
    nsd_class, nsd_mean = mean_over_images(np.array(nsds))
    for i, name in enumerate(names):
        summary["per_class"][name]["hd95"] = _round(float(hd_class[i]))
        summary["per_class"][name]["nsd"] = _round(float(nsd_class[i]))
    summary.update(mean_hd95=_round(hd_mean), mean_nsd=_round(nsd_mean),
                   nsd_tolerance=tolerance, volumes=len(rows),
                   units="the volumes' spacing" if all(r["spacing"] for r in report.rows)
                   else "voxels where a volume has no spacing")
    if out is not None:
        folder = output_folder(out)
        write_text_atomic(folder / "metrics.json", json.dumps(
            {"summary": summary, "per_volume": rows}, indent=2))
        write_csv_atomic(folder / "per_volume.csv", rows)
    return Evaluation(summary, rows, {})


def _round(value: float) -> float | None:
    """A JSON number: 6 decimals, None for NaN (undefined)."""
    return None if math.isnan(value) else round(value, 6)


STREAM_PIXELS = 64 * 2**20


def _streams(path: Path, stream: bool | None) -> bool:
    if path.suffix.lower() not in (".tif", ".tiff") or stream is False:
        return False
    height, width = image_size(path)
    return bool(stream) or height * width > STREAM_PIXELS


def _check_streamable(paths: Sequence[Path], max_pixels: int | None) -> None:
    """Open every TIFF to be streamed before any output is written: a pixel count over
    ``max_pixels`` or a layout that cannot be read band by band stops the run early."""
    if max_pixels is not None and max_pixels < 1:
        raise UserError(f"--max-pixels {max_pixels}: not a pixel count; give a positive"
                        " number, e.g. --max-pixels 2000000000")
    from unetseg.infer.tiff_bands import TiffBandReader

    for path in paths:
        TiffBandReader(path, max_pixels=max_pixels).close()


def _predict_streamed(predictor: ImagePredictor, card: ModelCard, path: Path, out: Path, *,
                      overlays: bool, max_pixels: int | None, show_progress: bool) -> Path:
    """Stream ``path`` into ``out/<stem>.tif`` with the tiling that in-memory prediction plans
    for an image of its size (:meth:`ImagePredictor.tiling`), so the labels are the same."""
    from unetseg.infer.stream import predict_large_tiff

    palette = class_colours(card.classes)

    def save_preview(image: np.ndarray, ids: np.ndarray) -> None:
        write_rgb(out / f"{path.stem}_overlay.png", overlay(image, ids, palette))

    target = out / f"{path.stem}.tif"
    height, width = image_size(path)
    tile, overlap, batch = predictor.tiling(height, width)
    if predictor.choice is None:
        predictor.choose_precision(_middle_band(path, height, max_pixels))
    if card.instance is not None:
        return _predict_streamed_objects(predictor, card, path, out, tile=tile, overlap=overlap,
                                         batch=batch, overlays=overlays, max_pixels=max_pixels,
                                         show_progress=show_progress)
    with predictor.autocast():
        predict_large_tiff(predictor.model, card.stats, card.classes, path, target, tile=tile,
                           overlap=overlap, batch_size=batch, max_pixels=max_pixels,
                           preview=save_preview if overlays else None,
                           show_progress=show_progress)
    return target


def _predict_streamed_objects(predictor: ImagePredictor, card: ModelCard, path: Path, out: Path,
                              *, tile: int, overlap: float, batch: int, overlays: bool,
                              max_pixels: int | None, show_progress: bool) -> Path:
    """An instance model streamed over a large TIFF (:mod:`unetseg.infer.instance_bands`):
    ``<stem>_instances.tif``, ``<stem>_objects.csv`` and a downsampled outline overlay."""
    from unetseg.infer.instance_bands import predict_large_tiff_objects
    from unetseg.viz import object_outlines

    assert card.instance is not None

    def save_preview(image: np.ndarray, labels: np.ndarray) -> None:
        write_rgb(out / f"{path.stem}_overlay.png", object_outlines(image, labels))

    with predictor.autocast():
        target, table = predict_large_tiff_objects(
            predictor.model, card.stats, card.instance, path, out, path.stem, tile=tile,
            overlap=overlap, batch_size=batch, max_pixels=max_pixels,
            preview=save_preview if overlays else None, show_progress=show_progress)
    write_text_atomic(out / f"{path.stem}_objects.csv", table)
    return target


def _middle_band(path: Path, height: int, max_pixels: int | None) -> np.ndarray:
    """The middle rows of a streamed TIFF (C, <=512, W): the sample on which ``auto`` precision
    is checked (:func:`~unetseg.infer.precision.sample_window` takes its centre)."""
    from unetseg.infer.precision import SAMPLE_SIDE
    from unetseg.infer.tiff_bands import TiffBandReader

    top = max(0, (height - SAMPLE_SIDE) // 2)
    with TiffBandReader(path, max_pixels=max_pixels) as reader:
        return reader.rows(top, min(height, top + SAMPLE_SIDE))


def _open_omezarrs(paths: Sequence[Path], level: int, max_pixels: int | None, label_name: str,
                   overwrite: bool, *, tta: str | None, probabilities: bool
                   ) -> list[OmeZarrImage]:
    """Open every OME-Zarr image from its metadata before anything is predicted or written:
    a bad image, level or label name stops the run early."""
    if not paths:
        return []
    if tta:
        raise UserError(f"{paths[0]}: --tta does not apply to OME-Zarr images (they are"
                        " streamed); drop --tta")
    if probabilities:
        raise UserError(f"{paths[0]}: --probabilities does not apply to OME-Zarr images (they"
                        " are streamed); drop --probabilities")
    if max_pixels is not None and max_pixels < 1:
        raise UserError(f"--max-pixels {max_pixels}: not a pixel count; give a positive"
                        " number, e.g. --max-pixels 2000000000")
    from unetseg.infer.omezarr import import_ome_zarr, label_target, open_omezarr

    opened = []
    for path in paths:
        opened.append(open_omezarr(path, level, max_pixels=max_pixels))
        label_target(path, label_name, overwrite=overwrite)
        import_ome_zarr(path)
    return opened


def _predict_omezarr(predictor: ImagePredictor, card: ModelCard, image: OmeZarrImage,
                     out: Path, *, overlays: bool, label_name: str, overwrite: bool,
                     show_progress: bool) -> Path:
    """Stream an OME-Zarr image's level into ``<image>/labels/<label_name>`` with the tiling
    in-memory prediction plans for a plane of its size, so the labels are the same."""
    from unetseg.infer.omezarr import OmeZarrBandReader, image_stem, predict_omezarr
    from unetseg.infer.precision import SAMPLE_SIDE

    palette = class_colours(card.classes)

    def save_preview(rows: np.ndarray, ids: np.ndarray) -> None:
        write_rgb(out / f"{image_stem(image.path)}_overlay.png", overlay(rows, ids, palette))

    tile, overlap, batch = predictor.tiling(image.height, image.width)
    if predictor.choice is None:
        top = max(0, (image.height - SAMPLE_SIDE) // 2)
        with OmeZarrBandReader(image, image.planes()[0]) as reader:
            predictor.choose_precision(reader.rows(top, min(image.height, top + SAMPLE_SIDE)))
    with predictor.autocast():
        return predict_omezarr(predictor.model, card.stats, card.classes, image, label_name,
                               tile=tile, overlap=overlap, batch_size=batch,
                               overwrite=overwrite, preview=save_preview if overlays else None,
                               show_progress=show_progress)


@dataclass(frozen=True)
class Evaluation:
    """Totals over all images (``summary``) and one row per image (``per_image``)."""

    summary: dict[str, Any]
    per_image: list[dict[str, Any]]
    predictions: dict[str, np.ndarray]


def _per_image_row(stem: str, cm: torch.Tensor, hd95s: np.ndarray, classes: ClassTable
                   ) -> dict[str, Any]:
    """One image's scores; ``hd95s`` (K,) are its per-class HD95s in pixels."""
    defined = hd95s[~np.isnan(hd95s)]
    row: dict[str, Any] = {"image": stem, "pixel_accuracy": float(pixel_accuracy(cm)),
                           "mean_iou": float(mean_iou(cm)),
                           "mean_hd95": float(defined.mean()) if defined.size else math.nan}
    for name, value in zip(classes.names, iou(cm).tolist()):
        row[f"iou/{name}"] = value
    for name, value in zip(classes.names, hd95s.tolist()):
        row[f"hd95/{name}"] = value
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


HD95_RULE = ("HD95: the larger of the two 95th percentiles of the distances (pixels) from each"
             " boundary pixel of the predicted region of a class to the nearest of the true"
             " region's, and back; null for a class absent from the prediction or the truth;"
             " per class the mean over the images where it is defined")


def _hd95_summary(per_image: list[np.ndarray], names: Sequence[str]) -> dict[str, Any]:
    """``mean_hd95`` and each class's mean HD95 over the images (NaN as None)."""
    from unetseg.metrics_boundary import mean_over_images

    per_class, overall = mean_over_images(np.array(per_image).reshape(len(per_image), len(names)))
    return {"mean_hd95": None if math.isnan(overall) else overall,
            "hd95": {n: None if math.isnan(v) else float(v) for n, v in zip(names, per_class)}}


def _truths(pairs: Sequence[Pair], predictor: ImagePredictor, classes: ClassTable
            ) -> Iterator[Truth]:
    """Each pair's image and true class ids, read and checked one at a time."""
    for pair in pairs:
        image = read_image(pair.image)
        predictor.check_channels(image, pair.image)
        mask = read_pair_mask(pair)
        check_same_size(pair, image.shape[1:], mask.shape)
        yield pair.stem, image, torch.from_numpy(encode_mask(mask, classes)).long()


def evaluate(model: ModelSpec, data: str | Path, out: str | Path | None = None,
             config: PredictConfig | None = None, *, isbi: bool = False, volume: bool = False,
             spacing: Sequence[float] | None = None, tolerance: float = 1.0,
             show_progress: bool = True, **options: Any) -> Evaluation:
    """Predict every image of ``data`` (``images/`` + ``masks/``) and score it against its mask.

    One confusion matrix per image and their sum give per-class IoU, Dice, precision, recall,
    pixel accuracy and mean IoU (a class absent from both prediction and truth is undefined and
    left out of the means; see :mod:`unetseg.metrics`). Each image's per-class HD95, the 95th
    percentile Hausdorff distance between the predicted and true class boundaries in pixels
    (:mod:`unetseg.metrics_boundary`), is in its row; the summary holds each class's mean over
    the images (``per_class[name]["hd95"]``) and ``mean_hd95``. With ``out``, writes
    ``metrics.json``, ``per_image.csv`` and ``report.html`` (a page to read: tables, the
    confusion matrix, the worst images and their errors; :mod:`unetseg.report.evaluation`)
    there. ``config`` and ``options`` say how to predict, as for
    :func:`predict`; ``tta`` augments every tile at test time (see :mod:`unetseg.infer.tta`).
    ``model`` may be a model set, as for :func:`predict`: its post-processing is applied to the
    labels before they are scored, and the summary names it (``postprocessing``).

    A volume data set (NIfTI or ``.npy`` files, or TIFF stacks with ``volume=True``) is scored
    by :func:`evaluate_volumes`, with ``spacing`` and the surface Dice's ``tolerance``.

    ``isbi=True`` (2-class models: class 0 the boundaries, class 1 the objects, as ISBI 2012's
    0 = membrane, 255 = cell) adds the ISBI 2012 challenge's pixel, Rand and warping errors of
    the class-1 probability over thresholds 0.0..0.9 (:mod:`unetseg.metrics_isbi`), pooled over
    the images, as ``summary["isbi"]``.

    An instance model (``train --task instance``) is scored object by object instead
    (:mod:`unetseg.metrics_instance`: objects matched at IoU 0.5..0.95, the DSB 2018 score,
    precision, recall, F1, panoptic quality, counts): per image in ``per_image.csv`` and
    overall in ``metrics.json`` (``summary["task"] == "instance"``). The true objects are
    ``DATA/instances/<stem>.*``, else the connected components of the masks' object classes;
    ``predictions`` holds the predicted object labels.
    """
    from unetseg.data.volumes import has_volume_only_files
    from unetseg.metrics_boundary import hd95  # scipy: not for predict

    if volume or has_volume_only_files(data):
        return evaluate_volumes(model, data, out, config, spacing=spacing, tolerance=tolerance,
                                show_progress=show_progress, **options)
    from unetseg.metrics_isbi import IsbiCounts, isbi_counts, isbi_summary

    cfg = predict_config(config, **options)
    tta = cfg.tta
    loaded = load_fastest(model, cfg)
    predictor, card = loaded.predictor, loaded.card
    if card.instance is not None:
        if isbi:
            raise UserError(f"{model}: --isbi scores semantic models; this is an instance"
                            " model; drop --isbi")
        return _evaluate_instances(model, data, out, predictor, card, tta,
                                   show_progress=show_progress)
    if isbi and card.classes.num_classes != 2:
        raise UserError(f"{model}: --isbi needs a 2-class model (boundary, object) but this one"
                        f" has {card.classes.num_classes} classes; drop --isbi")
    pairs = find_pairs(data)
    folder = output_folder(out) if out is not None else None
    k = card.classes.num_classes
    rows, predictions = [], {}
    counts: list[IsbiCounts] = []
    total = torch.zeros(k, k, dtype=torch.int64)
    hd95s: list[np.ndarray] = []
    steps = loaded.postprocessing
    scores = score_images(predictor.logits, _truths(pairs, predictor, card.classes), k,
                          postprocess=(lambda ids: torch.from_numpy(apply_postprocessing(
                              ids.numpy(), steps))) if steps else None)
    for score in progress(scores, total=len(pairs), desc="evaluate", unit="image",
                      disable=not show_progress):
        if isbi:
            counts.append(isbi_counts(torch.softmax(score.logits, 0)[1].numpy(),
                                      score.truth.numpy() == 1))
        total += score.confusion
        predictions[score.stem] = score.labels.numpy()
        hd95s.append(hd95(predictions[score.stem], score.truth.numpy(), k))
        rows.append(_per_image_row(score.stem, score.confusion, hd95s[-1], card.classes))
    boundary = _hd95_summary(hd95s, card.classes.names)
    summary = {"model": str(model), "data": str(data), "images": len(pairs),
               **summarize(total, card.classes.names), "mean_hd95": boundary["mean_hd95"],
               "confusion_matrix": total.tolist(), "class_values": list(card.classes.values),
               "absent_class_rule": "a class absent from both prediction and truth scores null"
                                    " (undefined) and is left out of the means",
               "hd95_rule": HD95_RULE}
    for name, value in boundary["hd95"].items():
        summary["per_class"][name]["hd95"] = value
    if tta:
        summary["tta"] = tta
    if "members" in card.info:
        summary["members"] = card.info["members"]
    if steps:
        summary["postprocessing"] = [s.to_dict(card.classes.names) for s in steps]
    if counts:
        summary["isbi"] = {"boundary_class": card.classes.names[0],
                           "object_class": card.classes.names[1],
                           **isbi_summary(sum(counts[1:], counts[0]))}
    if folder is not None:
        write_text_atomic(folder / "metrics.json", json.dumps(summary, indent=2))
        write_csv_atomic(folder / "per_image.csv", rows)
        write_evaluation_report(folder / "report.html", summary, rows, pairs, predictions,
                                card.classes)
    return Evaluation(summary, rows, predictions)


INSTANCE_RULE = ("objects match when their IoU is above the threshold (0.5, 0.55, ..., 0.95);"
                 " the DSB score is the mean over the thresholds of TP / (TP + FP + FN), per"
                 " image, then over the images; precision, recall, F1 and PQ count the objects"
                 " of all images together; ignored pixels belong to no object")


def _instance_truths(pairs: Sequence[Pair], predictor: Any, card: ModelCard
                     ) -> Iterator[tuple[Pair, np.ndarray, np.ndarray, np.ndarray]]:
    """Each pair with its image, true object labels and ignored pixels, read one at a time:
    ``instances/<stem>.*`` beside the masks, else the connected components of the object
    classes of the mask."""
    from unetseg.data.classes import IGNORE_INDEX
    from unetseg.data.instance_targets import pair_instances
    from unetseg.data.weights import object_class_ids

    objects = object_class_ids(card.classes,
                               card.run.data.weight_objects if card.run is not None else None)
    for pair in pairs:
        image = read_image(pair.image)
        predictor.check_channels(image, pair.image)
        mask = read_pair_mask(pair)
        check_same_size(pair, image.shape[1:], mask.shape)
        ids = encode_mask(mask, card.classes)
        ignored = ids == IGNORE_INDEX
        truth = pair_instances(pair.mask, pair.stem, ids, objects)
        truth[ignored] = 0
        yield pair, image, truth, ignored


def _instance_row(stem: str, scores: Any) -> dict[str, Any]:
    """One image's object scores for ``per_image.csv`` (NaN as None)."""
    row = {"image": stem, "dsb_score": scores.dsb_score, "f1_0.5": scores.f1[0],
           "precision_0.5": scores.precision[0], "recall_0.5": scores.recall[0],
           "pq": scores.pq, "sq": scores.sq, "rq": scores.rq, "objects_true": scores.n_true,
           "objects_pred": scores.n_pred, "count_error": scores.count_error}
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def _evaluate_instances(model: ModelSpec, data: str | Path, out: str | Path | None,
                        predictor: Any, card: ModelCard, tta: str | None, *,
                        show_progress: bool) -> Evaluation:
    """:func:`evaluate` of an instance model: object scores per image and overall
    (:mod:`unetseg.metrics_instance`)."""
    from unetseg.config import to_dict
    from unetseg.infer.instances import instances_from_logits
    from unetseg.metrics_instance import instance_scores, total_instance_scores
    from unetseg.report.instances import write_instance_report

    assert card.instance is not None
    pairs = find_pairs(data)
    folder = output_folder(out) if out is not None else None
    rows, per_image, predictions = [], [], {}
    for pair, image, truth, ignored in progress(
            _instance_truths(pairs, predictor, card), total=len(pairs), desc="evaluate",
            unit="image", disable=not show_progress):
        labels = instances_from_logits(predictor.logits(image), card.instance)
        labels[ignored] = 0
        scores = instance_scores(truth, labels)
        per_image.append(scores)
        predictions[pair.stem] = labels
        rows.append(_instance_row(pair.stem, scores))
    if not per_image:
        raise UserError(f"{data}: no image/mask pairs to evaluate")
    total = total_instance_scores(per_image)
    summary = {"model": str(model), "data": str(data), "task": "instance", **total,
               "f1_0.5": total["f1"][0], "precision_0.5": total["precision"][0],
               "recall_0.5": total["recall"][0], "postprocess": to_dict(card.instance),
               "instance_rule": INSTANCE_RULE}
    if tta:
        summary["tta"] = tta
    if folder is not None:
        write_text_atomic(folder / "metrics.json", json.dumps(summary, indent=2))
        write_csv_atomic(folder / "per_image.csv", rows)
        write_instance_report(folder / "report.html", summary, rows, pairs, predictions,
                              lambda pair: next(_instance_truths([pair], predictor, card))[2])
    return Evaluation(summary, rows, predictions)


# --------------------------------------------------------------------------------------- demo

DEMO_HELD_OUT = 6


@dataclass(frozen=True)
class DemoResult:
    folder: Path
    seconds: float
    summary: dict[str, Any]


def demo_data_root() -> Path:
    """The bundled ISBI 2012 training pairs (30 EM slices, 0 = membrane, 255 = cell)."""
    return Path(str(resources.files("unetseg") / "demo_data" / "isbi2012"))


def _copy_demo_split(folder: Path) -> tuple[Path, Path]:
    """Copy the bundled pairs into ``folder/data``: the first 24 to train, the last 6 to test."""
    src = demo_data_root()
    stems = sorted(p.stem for p in (src / "images").glob("*.png"))
    parts = {"train": stems[:-DEMO_HELD_OUT], "test": stems[-DEMO_HELD_OUT:]}
    for part, names in parts.items():
        for sub in ("images", "masks"):
            target = folder / "data" / part / sub
            target.mkdir(parents=True, exist_ok=True)
            for stem in names:
                write_bytes_atomic(target / f"{stem}.png", (src / sub / f"{stem}.png").read_bytes())
    return folder / "data" / "train", folder / "data" / "test"


def demo(out: str | Path = "unetseg-demo", *, time_budget_s: float = 420.0, epochs: int = 40,
         width: int | None = None, device: str = "auto", show_progress: bool = True
         ) -> DemoResult:
    """Train a U-Net on 24 bundled ISBI 2012 slices, then predict and score the other 6.

    ``width`` None plans it from the time budget and the device (16 on a laptop CPU for the
    default 7 minutes, 64 on a GPU; see :mod:`unetseg.train.plan`).

    Of the 24, a seeded fifth validates each epoch and picks the best model; the 6 held-out
    slices are used only for the final scores.

    Everything lands in ``out``: ``data/`` (the split), ``run/`` (models, metrics.csv,
    curves.png, report.html), ``predictions/`` (labels and overlays), ``evaluation/``
    (metrics.json, per_image.csv, report.html) and ``examples.png`` (image, truth and
    prediction side by side).
    """
    from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from unetseg.train.fit import fit
    from unetseg.viz import plot_examples

    started = time.perf_counter()
    folder = Path(out)
    if (folder / "run" / "resume.safetensors").exists():
        raise UserError(f"{folder}: holds a finished demo; remove it or pass another --out")
    train_dir, test_dir = _copy_demo_split(output_folder(folder))
    cfg = RunConfig(
        model=ModelConfig(width=width, depth=4, up="transpose"),
        data=DataConfig(val_fraction=0.2, patch_size=256, class_names=("membrane", "cell")),
        train=TrainConfig(epochs=epochs, batch_size=4, lr=2e-3, time_limit_s=time_budget_s,
                          device=device),
    )
    result = fit(train_dir, folder / "run", cfg, show_progress=show_progress, plan=None)
    model = result.best_model
    predict(model, test_dir / "images", folder / "predictions", device=device,
            show_progress=show_progress)
    evaluation = evaluate(model, test_dir, folder / "evaluation", device=device,
                          show_progress=show_progress)
    rows = []
    for pair in find_pairs(test_dir):
        truth = ClassTable.from_values((0, 255)).encode(read_mask(pair.mask))
        rows.append((pair.stem, read_image(pair.image), truth, evaluation.predictions[pair.stem]))
    plot_examples(rows[:3], ("membrane", "cell"), folder / "examples.png")
    return DemoResult(folder, time.perf_counter() - started, evaluation.summary)


@dataclass(frozen=True)
class PlanResult:
    """A data set's fingerprint and the plan made from it, and the files they were written
    to (``fingerprint.json``, ``plan.json``)."""

    fingerprint: Any  # unetseg.data.fingerprint.Fingerprint
    plan: Any  # unetseg.train.autoplan.Plan
    fingerprint_path: Path
    plan_path: Path


def plan(data: str | Path, out: str | Path = ".", *, time_budget: float | None = None,
         device: str = "auto", classes: Sequence[int] | None = None,
         class_names: Sequence[str] | None = None, ignore_value: int | None = None,
         palette: str | None = None, show_progress: bool = True) -> PlanResult:
    """Measure ``data``'s fingerprint (:mod:`unetseg.data.fingerprint`) in one checked pass
    over its pairs and plan a run from it, the device and ``time_budget`` seconds
    (:mod:`unetseg.train.autoplan`: patch size, depth, batch size, width timed on the
    device, normalisation, loss and the steps the budget buys, each with its reason); write
    ``fingerprint.json`` and ``plan.json`` into ``out``. ``unetseg train DATA --plan
    OUT/plan.json`` trains with the plan, edited or not. The class options are ``train``'s.

    Raises:
        UserError: the data has errors (``unetseg check`` lists them) or an option is wrong.
    """
    from unetseg.config import DataConfig, RunConfig, TrainConfig, check_run_config
    from unetseg.data.doctor import examine_data, fingerprint_of
    from unetseg.data.fingerprint import FingerprintBuilder
    from unetseg.data.report import require_clean
    from unetseg.infer.engine import resolve_device
    from unetseg.train.autoplan import plan_for_data

    cfg = RunConfig(data=DataConfig(
        class_values=None if classes is None else tuple(classes),
        class_names=None if class_names is None else tuple(class_names),
        ignore_value=ignore_value, palette=palette),
        train=TrainConfig(time_limit_s=time_budget, device=device))
    check_run_config(cfg)
    builder = FingerprintBuilder()
    report, reads = examine_data(data, cfg.data, progress=show_progress, fingerprint=builder)
    require_clean(report)
    fingerprint = fingerprint_of(report, reads, builder)
    chosen = plan_for_data(fingerprint, cfg, resolve_device(device))
    folder = output_folder(out)
    fingerprint_path, plan_path = folder / "fingerprint.json", folder / "plan.json"
    write_text_atomic(fingerprint_path, json.dumps(fingerprint.to_dict(), indent=2))
    write_text_atomic(plan_path, json.dumps(chosen.to_dict(), indent=2))
    return PlanResult(fingerprint, chosen, fingerprint_path, plan_path)
