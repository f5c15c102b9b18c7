"""Volume files (image stacks, CT and MRI scans) to arrays with their voxel spacing, and back.

Formats, by suffix:

* ``.tif``/``.tiff`` (and ``.ome.tif``): a multi-page TIFF stack, one page per slice, or an
  OME-TIFF. Spacing from OME's ``PhysicalSize{Z,Y,X}`` or from ImageJ's ``spacing`` (z) and
  the resolution tags (y, x).
* ``.nii``/``.nii.gz``: NIfTI-1/2 through nibabel (extra ``nifti``). Its voxel axes are
  ``(x, y, z)``; they are reversed to ``(z, y, x)`` here, and :func:`write_volume` reverses them
  back and keeps the input's affine, so a prediction lies where its scan lies in a viewer.
* ``.npy``: ``(D, H, W)`` or ``(C, D, H, W)``; no spacing.

Every array here is slowest axis first: images ``(C, D, H, W)``, masks ``(D, H, W)``, spacing
``(z, y, x)`` in the file's unit (micrometres for microscopy, millimetres for CT and MRI).
Problems with a file are one-line :class:`~unetseg.errors.UserError` naming it and the fix.
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from unetseg.errors import UserError
from unetseg.files import atomic_path

VOLUME_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz", ".npy")
SPACING_TOLERANCE = 1e-3
"""Relative difference below which two spacings are the same (headers round differently)."""

PathLike = str | os.PathLike[str]
Spacing = tuple[float, float, float]


@dataclass(frozen=True)
class Volume:
    """A volume as read: the voxels, their spacing and, for NIfTI, the scanner geometry.

    Attributes:
        array: images ``(C, D, H, W)`` in the file's dtype; masks ``(D, H, W)`` integers.
        spacing: ``(z, y, x)`` voxel size in the file's unit, or None when the file has none
            (see :func:`with_spacing`).
        affine: NIfTI's 4 x 4 voxel-to-world matrix (for the file's own ``(x, y, z)`` axes),
            else None.
        path: the file.
    """

    array: np.ndarray
    spacing: Spacing | None
    affine: np.ndarray | None
    path: Path

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)``."""
        d, h, w = self.array.shape[-3:]
        return int(d), int(h), int(w)


def volume_suffix(path: PathLike) -> str:
    """The format suffix of ``path`` (``.nii.gz`` counts as one), lower case."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def is_volume_file(path: PathLike) -> bool:
    return volume_suffix(path) in VOLUME_SUFFIXES


def anisotropy(spacing: Sequence[float] | None) -> float:
    """Coarsest over finest voxel size (1.0 for cubes or unknown spacing)."""
    if not spacing:
        return 1.0
    return max(spacing) / min(spacing)


def parse_spacing(text: str) -> Spacing:
    """``"z,y,x"`` (``--spacing``) as three positive floats.

    Raises:
        UserError: not three positive numbers.
    """
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise UserError(f"--spacing {text!r}: give three positive sizes z,y,x, e.g. 4,1,1")
    return values[0], values[1], values[2]


def with_spacing(volume: Volume, spacing: Sequence[float] | None) -> Volume:
    """``volume`` with ``spacing`` where the file carries none; a file's own spacing wins."""
    if volume.spacing is not None or spacing is None:
        return volume
    return Volume(volume.array, tuple(float(v) for v in spacing),  # type: ignore[arg-type]
                  volume.affine, volume.path)


# --------------------------------------------------------------------------- reading


def read_volume(path: PathLike, *, spacing: Sequence[float] | None = None) -> Volume:
    """An image volume ``(C, D, H, W)``; ``spacing`` where the file carries none.

    Raises:
        UserError: a missing, unreadable or non-volume file, or an unknown suffix.
    """
    volume = _read(Path(path), "image")
    array = volume.array
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise UserError(f"{volume.path}: expected a volume (D, H, W) or (C, D, H, W), found"
                        f" shape {array.shape}; save one volume per file")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise UserError(f"{volume.path}: holds NaN or infinite values; replace them first")
    return with_spacing(Volume(array, volume.spacing, volume.affine, volume.path), spacing)


def read_volume_mask(path: PathLike, *, spacing: Sequence[float] | None = None) -> Volume:
    """A label volume ``(D, H, W)`` of integer class values.

    Raises:
        UserError: as :func:`read_volume`, or a mask with channels or non-integer values.
    """
    volume = _read(Path(path), "mask")
    array = volume.array
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise UserError(f"{volume.path}: a mask volume must be (D, H, W), found shape"
                        f" {array.shape}; save one label per voxel")
    if array.dtype.kind == "f":
        if not (np.isfinite(array).all() and np.array_equal(array, np.round(array))):
            raise UserError(f"{volume.path}: mask holds non-integer values; save class ids")
        array = array.astype(np.int64)
    elif array.dtype.kind == "b":
        array = array.astype(np.uint8)
    elif array.dtype.kind not in "iu":
        raise UserError(f"{volume.path}: mask of type {array.dtype}; save integer class ids")
    return with_spacing(Volume(array, volume.spacing, volume.affine, volume.path), spacing)


def _read(path: Path, what: str) -> Volume:
    if not path.is_file():
        raise UserError(f"{path}: no such file; check the path")
    suffix = volume_suffix(path)
    try:
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path)
        if suffix in (".nii", ".nii.gz"):
            return _read_nifti(path)
        if suffix == ".npy":
            return Volume(np.load(path, allow_pickle=False), None, None, path)
    except UserError:
        raise
    except MemoryError:
        raise UserError(f"{path}: not enough memory to read this {what} volume") from None
    except Exception as exc:  # readers raise many unrelated types for corrupt input
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"{path}: cannot read the {what} volume ({text}); check that the"
                        " file is complete") from exc
    raise UserError(f"{path}: unknown volume format; use {', '.join(VOLUME_SUFFIXES)}")


def _read_tiff(path: Path) -> Volume:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes.upper()
        spacing = _ome_spacing(tif) if tif.is_ome else _imagej_spacing(tif)
    return Volume(_arrange_tiff(data, axes, path), spacing, None, path)


def _arrange_tiff(data: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """A TIFF series ``data`` with ``axes`` as ``(C, ...)`` or ``(...)``: the channel axis (C or
    S) first and a single time point dropped; views only, so a memory map stays one."""
    channel = next((axes.index(a) for a in "CS" if a in axes), None)
    if channel is not None:
        data = np.moveaxis(data, channel, 0)
        axes = axes[channel] + axes[:channel] + axes[channel + 1:]
    keep = [i for i, a in enumerate(axes) if a not in "T" or data.shape[i] > 1]
    if len(keep) < data.ndim:  # a single time point
        data = data.reshape([data.shape[i] for i in keep])
    if data.ndim == 2 or (data.ndim == 3 and channel is not None):
        raise UserError(f"{path}: a single 2-D image, not a stack; give one page per slice"
                        " (or use it as a 2-D image)")
    return data


def _ome_spacing(tif: tifffile.TiffFile) -> Spacing | None:
    try:
        image = tifffile.xml2dict(tif.ome_metadata or "")["OME"]["Image"]
        pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
        values = tuple(float(pixels[f"PhysicalSize{a}"]) for a in "ZYX")
    except (KeyError, TypeError, ValueError):
        return None
    return values if all(v > 0 for v in values) else None  # type: ignore[return-value]


def _imagej_spacing(tif: tifffile.TiffFile) -> Spacing | None:
    meta = tif.imagej_metadata or {}
    if "spacing" not in meta:
        return None
    page = tif.pages.first
    sizes = []
    for tag in ("YResolution", "XResolution"):
        value = page.tags.get(tag)
        num, den = value.value if value is not None else (1, 1)
        sizes.append(den / num if num else 1.0)
    return float(meta["spacing"]), float(sizes[0]), float(sizes[1])


def _nibabel() -> Any:
    try:
        import nibabel
    except ImportError:
        raise UserError("NIfTI files need nibabel; pip install 'unetseg[nifti]'") from None
    return nibabel


def _read_nifti(path: Path) -> Volume:
    image = _nibabel().load(str(path))
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4:  # (x, y, z, c) -> (c, z, y, x)
        data = data.transpose(3, 2, 1, 0)
    elif data.ndim == 3:
        data = data.transpose(2, 1, 0)
    else:
        raise UserError(f"{path}: NIfTI of {data.ndim} dimensions; give one 3-D volume")
    zooms = tuple(float(v) for v in image.header.get_zooms()[:3])
    spacing = (zooms[2], zooms[1], zooms[0]) if all(v > 0 for v in zooms) else None
    return Volume(np.ascontiguousarray(data), spacing, np.asarray(image.affine), path)


# --------------------------------------------------------------------------- lazy reading


class VolumeSource:
    """An image volume on disk, read a slab of slices at a time (:func:`open_volume`), so that
    a volume larger than memory can be predicted: only the slices asked for are read.

    Attributes:
        path: the file.
        shape: ``(D, H, W)``.
        channels: C.
        dtype: the voxels' type as :meth:`read` returns them (NIfTI's scaling applied).
        spacing: ``(z, y, x)`` voxel size, or None (see :func:`with_spacing`).
        affine: NIfTI's voxel-to-world matrix, else None.
        slices_read: slices handed out by :meth:`read` so far (what a caller can check its
            reads against).
    """

    def __init__(self, path: Path, read: Callable[[int, int], np.ndarray],
                 shape: tuple[int, ...], dtype: np.dtype[Any], spacing: Spacing | None,
                 affine: np.ndarray | None, close: Callable[[], None] = lambda: None):
        if len(shape) == 3:
            shape = (1, *shape)
        if len(shape) != 4:
            raise UserError(f"{path}: expected a volume (D, H, W) or (C, D, H, W), found"
                            f" shape {shape}; save one volume per file")
        self.path = path
        self.channels = int(shape[0])
        self.shape: tuple[int, int, int] = (int(shape[1]), int(shape[2]), int(shape[3]))
        self.dtype = np.dtype(dtype)
        self.spacing = spacing
        self.affine = affine
        self.slices_read = 0
        self._read, self._close = read, close

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices ``[z0, z1)`` as a new ``(C, z1 - z0, H, W)`` array in :attr:`dtype`.

        Raises:
            UserError: the file cannot be read there, or holds NaN or infinite values.
        """
        if not 0 <= z0 < z1 <= self.shape[0]:
            raise ValueError(f"slices [{z0}, {z1}) outside a volume of {self.shape[0]}")
        try:
            slab = np.ascontiguousarray(self._read(z0, z1))
        except MemoryError:
            raise UserError(f"{self.path}: not enough memory to read slices {z0}-{z1 - 1}")\
                from None
        except Exception as exc:  # readers raise many unrelated types for corrupt input
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise UserError(f"{self.path}: cannot read slices {z0}-{z1 - 1} ({text}); check"
                            " that the file is complete") from exc
        if slab.ndim == 3:
            slab = slab[None]
        slab = slab.reshape(self.channels, z1 - z0, *self.shape[1:])
        if slab.dtype.kind == "f" and not np.isfinite(slab).all():
            raise UserError(f"{self.path}: holds NaN or infinite values; replace them first")
        self.slices_read += z1 - z0
        return slab

    def close(self) -> None:
        self._close()

    def __enter__(self) -> VolumeSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_volume(path: PathLike, *, spacing: Sequence[float] | None = None) -> VolumeSource:
    """An image volume ``(C, D, H, W)`` to read slab by slab, without reading it whole:

    * TIFF: a memory map when the series is stored uncompressed in one piece, else the pages a
      slab needs (one page per slice and channel); a layout of another kind is read whole.
    * NIfTI: nibabel's array proxy, sliced along z (a ``.nii`` is memory-mapped; a ``.nii.gz``
      is decompressed from its start for each slab, slower but still a slab in memory).
    * ``.npy``: a read-only memory map.

    ``spacing`` stands in where the file carries none. Use it as a context manager (or call
    :meth:`VolumeSource.close`).

    Raises:
        UserError: as :func:`read_volume`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; check the path")
    suffix = volume_suffix(path)
    if suffix not in VOLUME_SUFFIXES:
        raise UserError(f"{path}: unknown volume format; use {', '.join(VOLUME_SUFFIXES)}")
    try:
        if suffix in (".tif", ".tiff"):
            source = _open_tiff(path)
        elif suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            source = VolumeSource(path, _slabs_of(array), array.shape, array.dtype, None, None)
        else:
            source = _open_nifti(path)
    except UserError:
        raise
    except Exception as exc:  # readers raise many unrelated types for corrupt input
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"{path}: cannot read the image volume ({text}); check that the"
                        " file is complete") from exc
    if source.spacing is None and spacing is not None:
        source.spacing = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    return source


def _slabs_of(array: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """Slabs of an array (a memory map, or a volume read whole) as new arrays."""
    return lambda z0, z1: np.array(array[..., z0:z1, :, :])


def _open_tiff(path: Path) -> VolumeSource:
    tif = tifffile.TiffFile(path)
    try:
        series = tif.series[0]
        axes, shape = series.axes.upper(), tuple(series.shape)
        spacing = _ome_spacing(tif) if tif.is_ome else _imagej_spacing(tif)
        if series.dataoffset is not None:  # uncompressed, in one piece
            mapped = _arrange_tiff(tifffile.memmap(path, series=0, mode="r"), axes, path)
            tif.close()
            return VolumeSource(path, _slabs_of(mapped), mapped.shape, mapped.dtype, spacing,
                                None)
        page_axes = series.keyframe.axes.upper()
        lead = axes[:len(axes) - len(page_axes)]
        pages = np.arange(math.prod(shape[:len(lead)])).reshape(shape[:len(lead)])
        pages = pages.reshape(pages.shape + (1, 1))
        if (page_axes != "YX" or axes[len(lead):] != "YX" or len(series.pages) != pages.size
                or pages.size == 0):
            data = _arrange_tiff(series.asarray(), axes, path)
            tif.close()
            return VolumeSource(path, _slabs_of(data), data.shape, data.dtype, spacing, None)
        index = _arrange_tiff(pages, axes, path)[..., 0, 0]  # (D,) or (C, D) page numbers
        if index.ndim not in (1, 2):
            raise UserError(f"{path}: a TIFF of axes {axes}; save one volume (Z, Y, X) or"
                            " (C, Z, Y, X) per file")
        height, width = shape[-2:]

        def read(z0: int, z1: int) -> np.ndarray:
            wanted = index[..., z0:z1]
            data = tif.asarray(key=wanted.ravel().tolist(), series=0)
            return data.reshape(*wanted.shape, height, width)

        return VolumeSource(path, read, (*index.shape, height, width), series.dtype, spacing,
                            None, tif.close)
    except BaseException:
        tif.close()
        raise


def _open_nifti(path: Path) -> VolumeSource:
    image = _nibabel().load(str(path))
    proxy = image.dataobj
    if len(proxy.shape) not in (3, 4):
        raise UserError(f"{path}: NIfTI of {len(proxy.shape)} dimensions; give one 3-D volume")
    x, y, z = proxy.shape[:3]
    channels = proxy.shape[3] if len(proxy.shape) == 4 else 1

    def read(z0: int, z1: int) -> np.ndarray:
        data = np.asanyarray(proxy[:, :, z0:z1])
        return data.transpose(3, 2, 1, 0) if data.ndim == 4 else data.transpose(2, 1, 0)

    zooms = tuple(float(v) for v in image.header.get_zooms()[:3])
    spacing = (zooms[2], zooms[1], zooms[0]) if all(v > 0 for v in zooms) else None
    dtype = read(0, 1).dtype  # the scaled type, as a whole read gives it
    return VolumeSource(path, read, (channels, z, y, x), dtype, spacing,
                        np.asarray(image.affine))


# --------------------------------------------------------------------------- checks


def check_same_geometry(image: Volume, mask: Volume) -> None:
    """Refuse a mask that does not lie on its image's voxels.

    Raises:
        UserError: different ``(D, H, W)``, or spacings that differ by more than
            :data:`SPACING_TOLERANCE` (relative) on any axis.
    """
    if image.shape != mask.shape:
        raise UserError(f"{mask.path}: mask volume {mask.shape} does not match its image"
                        f" {image.path.name} {image.shape}; save them on the same voxels")
    if image.spacing is None or mask.spacing is None:
        return
    if any(abs(a - b) > SPACING_TOLERANCE * max(a, b)
           for a, b in zip(image.spacing, mask.spacing, strict=True)):
        raise UserError(f"{mask.path}: spacing {_fmt(mask.spacing)} differs from its image's"
                        f" {_fmt(image.spacing)} ({image.path.name}); resample the mask onto"
                        " the image's voxels")


def _fmt(spacing: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in spacing)


# --------------------------------------------------------------------------- writing


def write_volume(path: PathLike, array: np.ndarray, like: Volume | None = None) -> Path:
    """Write a label (or any) volume ``(D, H, W)`` in the format of ``path``'s suffix, with
    ``like``'s spacing (and, for NIfTI, its affine and axis order), so that it overlays the
    input in a viewer.

    TIFF: an ImageJ stack (``spacing`` and resolution tags), or OME-TIFF for ``.ome.tif``
    (physical sizes). NIfTI: the input's affine, else the spacing on the diagonal.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_volume takes (D, H, W), got {array.shape}")
    spacing = like.spacing if like is not None else None
    suffix = volume_suffix(path)
    if suffix in (".tif", ".tiff"):
        if path.name.lower().endswith((".ome.tif", ".ome.tiff")):
            meta: dict[str, Any] = {"axes": "ZYX"}
            if spacing is not None:
                meta.update(PhysicalSizeZ=spacing[0], PhysicalSizeY=spacing[1],
                             PhysicalSizeX=spacing[2])
            tifffile.imwrite(path, array, ome=True, metadata=meta, compression="zlib")
        else:
            kwargs: dict[str, Any] = {}
            if spacing is not None:
                kwargs["resolution"] = (1.0 / spacing[2], 1.0 / spacing[1])
            tifffile.imwrite(path, _imagej_dtype(array), imagej=True, compression="zlib",
                             metadata={"axes": "ZYX",
                                       **({"spacing": spacing[0]} if spacing else {})},
                             **kwargs)
    elif suffix in (".nii", ".nii.gz"):
        nib = _nibabel()
        if like is not None and like.affine is not None:
            affine = like.affine
        else:
            sx, sy, sz = (spacing[2], spacing[1], spacing[0]) if spacing else (1.0, 1.0, 1.0)
            affine = np.diag([sx, sy, sz, 1.0])
        data = np.ascontiguousarray(_narrow(array).transpose(2, 1, 0))
        image = nib.Nifti1Image(data, affine)
        image.header.set_zooms(tuple(float(np.linalg.norm(affine[:3, i])) for i in range(3)))
        nib.save(image, str(path))
    elif suffix == ".npy":
        np.save(path, array, allow_pickle=False)
    else:
        raise UserError(f"{path}: unknown volume format; use {', '.join(VOLUME_SUFFIXES)}")
    return path


def smallest_label_dtype(low: int, high: int) -> np.dtype[Any]:
    """The smallest integer type every format here writes that holds ``[low, high]``
    (uint8, uint16, int16, int32, else int64), chosen before the labels exist, from their
    class values."""
    for dtype in (np.uint8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def write_volume_slabs(path: PathLike, slabs: Iterable[np.ndarray], *,
                       shape: Sequence[int], dtype: Any,
                       like: Volume | VolumeSource | None = None) -> Path:
    """Write a volume ``shape`` ``(D, H, W)`` of ``dtype`` given as slabs ``(n, H, W)`` in z
    order (together exactly D slices), holding one slab at a time: the streaming form of
    :func:`write_volume`, with the same formats, spacing and NIfTI affine from ``like``.

    TIFF and OME-TIFF are written page by page (ImageJ stacks take uint8, uint16 or float32;
    other types become float32), NIfTI and ``.npy`` as their header then the slabs' bytes (a
    NIfTI's ``(x, y, z)`` voxels in Fortran order lie in the file as ``(z, y, x)`` in C order,
    so each slab is one piece; ``.nii.gz`` through gzip), so no writer holds more than a slab,
    nor maps the file into memory. The file appears only once whole
    (:func:`~unetseg.files.atomic_path`).

    Raises:
        UserError: an unknown suffix or a folder that cannot take the file.
        ValueError: slabs of another height or width, or not D slices in all.
    """
    path = Path(path)
    depth, height, width = (int(v) for v in shape)
    dtype = np.dtype(dtype)
    suffix = volume_suffix(path)
    if suffix not in VOLUME_SUFFIXES:
        raise UserError(f"{path}: unknown volume format; use {', '.join(VOLUME_SUFFIXES)}")
    spacing = like.spacing if like is not None else None
    checked = _checked_slabs(slabs, (depth, height, width), dtype)
    with atomic_path(path) as tmp:
        if suffix in (".tif", ".tiff"):
            _write_tiff_pages(tmp, checked, (depth, height, width), dtype, spacing,
                              ome=path.name.lower().endswith((".ome.tif", ".ome.tiff")))
        elif suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.lib.format.write_array_header_1_0(fh, {
                    "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                    "shape": (depth, height, width)})
                for _, slab in checked:
                    fh.write(np.ascontiguousarray(slab).tobytes())
        else:
            affine = like.affine if like is not None else None
            _write_nifti_slabs(tmp, checked, (depth, height, width), dtype, spacing, affine,
                               gz=suffix == ".nii.gz")
    return path


def _checked_slabs(slabs: Iterable[np.ndarray], shape: tuple[int, int, int],
                   dtype: np.dtype[Any]) -> Iterator[tuple[int, np.ndarray]]:
    """``(z0, slab as dtype)`` in order; ValueError for a wrong slab or count."""
    depth, height, width = shape
    z0 = 0
    for slab in slabs:
        slab = np.asarray(slab)
        if slab.ndim != 3 or slab.shape[1:] != (height, width) or z0 + len(slab) > depth:
            raise ValueError(f"slab {slab.shape} at slice {z0} does not fit a volume {shape}")
        yield z0, slab.astype(dtype, copy=False)
        z0 += len(slab)
    if z0 != depth:
        raise ValueError(f"{z0} slices written of a volume of {depth}")


def _write_tiff_pages(path: Path, slabs: Iterator[tuple[int, np.ndarray]],
                      shape: tuple[int, int, int], dtype: np.dtype[Any],
                      spacing: Spacing | None, *, ome: bool) -> None:
    if ome:
        meta: dict[str, Any] = {"axes": "ZYX"}
        if spacing is not None:
            meta.update(PhysicalSizeZ=spacing[0], PhysicalSizeY=spacing[1],
                         PhysicalSizeX=spacing[2])
        kwargs: dict[str, Any] = {"ome": True, "metadata": meta}
    else:
        if dtype not in (np.uint8, np.uint16, np.float32):
            dtype = np.dtype(np.uint8 if dtype.kind == "b" else np.float32)
        kwargs = {"imagej": True,
                  "metadata": {"axes": "ZYX", **({"spacing": spacing[0]} if spacing else {})}}
        if spacing is not None:
            kwargs["resolution"] = (1.0 / spacing[2], 1.0 / spacing[1])
    pages = (page.astype(dtype, copy=False) for _, slab in slabs for page in slab)
    tifffile.imwrite(path, pages, shape=shape, dtype=dtype, compression="zlib", **kwargs)
    if next(pages, None) is not None:  # also runs the count check at the slabs' end
        raise ValueError(f"more than {shape[0]} slices written")


NIFTI_DATA_OFFSET = 352
"""Where a single-file NIfTI-1 without extensions keeps its voxels."""


def _write_nifti_slabs(path: Path, slabs: Iterator[tuple[int, np.ndarray]],
                       shape: tuple[int, int, int], dtype: np.dtype[Any],
                       spacing: Spacing | None, affine: np.ndarray | None, *, gz: bool) -> None:
    nib = _nibabel()
    depth, height, width = shape
    if affine is None:
        sx, sy, sz = (spacing[2], spacing[1], spacing[0]) if spacing else (1.0, 1.0, 1.0)
        affine = np.diag([sx, sy, sz, 1.0])
    header = nib.Nifti1Image(np.zeros((1, 1, 1), dtype), affine).header
    header.set_data_shape((width, height, depth))
    header.set_data_dtype(dtype)
    header.set_zooms(tuple(float(np.linalg.norm(affine[:3, i])) for i in range(3)))
    header.set_data_offset(NIFTI_DATA_OFFSET)
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as fh:
        header.write_to(fh)
        fh.write(b"\0" * (NIFTI_DATA_OFFSET - fh.tell()))
        for _, slab in slabs:
            fh.write(np.ascontiguousarray(slab, dtype=header.get_data_dtype()).tobytes())


def _imagej_dtype(array: np.ndarray) -> np.ndarray:
    """ImageJ stacks hold uint8, uint16 or float32."""
    if array.dtype in (np.uint8, np.uint16, np.float32):
        return array
    if array.dtype.kind in "iub" and array.min() >= 0 and array.max() <= 65535:
        return array.astype(np.uint16)
    return array.astype(np.float32)


def _narrow(array: np.ndarray) -> np.ndarray:
    """Integer labels in the smallest NIfTI type that holds them (nibabel refuses int64)."""
    if array.dtype.kind not in "iub" or array.size == 0:
        return array.astype(np.float32) if array.dtype == np.float64 else array
    low, high = int(array.min()), int(array.max())
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return array.astype(dtype)
    return array.astype(np.float64)


# --------------------------------------------------------------------------- data sets


def volume_stem(path: PathLike) -> str:
    """The name of a volume file without its format suffix (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    suffix = volume_suffix(name)
    stem = name[: -len(suffix)] if name.lower().endswith(suffix) else Path(name).stem
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def volume_files(folder: Path) -> dict[str, Path]:
    """Stem -> volume file of a folder (hidden files skipped)."""
    return {volume_stem(p): p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and is_volume_file(p)}


def has_volume_only_files(data: PathLike) -> bool:
    """Whether ``data/images`` holds NIfTI or NumPy files (which can only be volumes)."""
    images = Path(data) / "images"
    return images.is_dir() and any(volume_suffix(p) in (".nii", ".nii.gz", ".npy")
                                   for p in images.iterdir())


@dataclass
class VolumeCheck:
    """What ``unetseg check`` says about a volume data set: one row per pair, and problems
    (one line each, naming the file and the fix)."""

    rows: list[dict[str, Any]]
    problems: list[str]

    @property
    def clean(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"volumes": self.rows, "problems": self.problems}


def check_volumes(data: PathLike, *, spacing: Sequence[float] | None = None) -> VolumeCheck:
    """Read every pair of ``data/images`` and ``data/masks`` volumes (paired by stem) and report
    each one's shape, channels, spacing, anisotropy and class values; refuse masks whose shape
    or spacing differ from their image's (:func:`check_same_geometry`), unpaired files and
    unreadable ones. ``spacing`` stands in for files that carry none."""
    data = Path(data)
    for sub in ("images", "masks"):
        if not (data / sub).is_dir():
            raise UserError(f"{data / sub}: no such folder; a volume data set holds images/"
                            " and masks/ with one volume per file, paired by name")
    images, masks = volume_files(data / "images"), volume_files(data / "masks")
    problems = [f"{images[s]}: no mask volume of that name in {data / 'masks'}; add one or"
                " remove the image" for s in sorted(set(images) - set(masks))]
    problems += [f"{masks[s]}: no image volume of that name in {data / 'images'}"
                 for s in sorted(set(masks) - set(images))]
    rows = []
    for stem in sorted(set(images) & set(masks)):
        try:
            image = read_volume(images[stem], spacing=spacing)
            mask = read_volume_mask(masks[stem], spacing=spacing)
            check_same_geometry(image, mask)
        except UserError as exc:
            problems.append(str(exc))
            continue
        rows.append({"stem": stem, "shape": list(image.shape),
                     "channels": int(image.array.shape[0]),
                     "spacing": list(image.spacing) if image.spacing else None,
                     "anisotropy": round(anisotropy(image.spacing), 3),
                     "mask_values": [int(v) for v in np.unique(mask.array)]})
    if not rows and not problems:
        problems.append(f"{data / 'images'}: no volume files ({', '.join(VOLUME_SUFFIXES)})")
    return VolumeCheck(rows, problems)


def format_volume_check(report: VolumeCheck) -> str:
    """The report as a table, one line per volume, then the problems."""
    lines = [f"{len(report.rows)} volume pair(s)"]
    for r in report.rows:
        sp = _fmt(r["spacing"]) if r["spacing"] else "none (give --spacing z,y,x)"
        lines.append(f"  {r['stem']}: {'x'.join(map(str, r['shape']))} voxels,"
                     f" {r['channels']} channel(s), spacing {sp}, anisotropy"
                     f" {r['anisotropy']:g}, mask values {r['mask_values']}")
    if report.problems:
        lines.append(f"{len(report.problems)} problem(s):")
        lines += [f"  {p}" for p in report.problems]
    else:
        lines.append("no problems found")
    return "\n".join(lines)
