"""Pictures: prediction overlays, training curves, example grids.

matplotlib is imported inside the functions (Agg backend), so importing this module is cheap.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.files import atomic_path

_BASE_COLOURS = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
], dtype=np.uint8)


def class_palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours, distinct for the first 15 classes, golden-angle hues beyond."""
    if num_classes <= len(_BASE_COLOURS):
        return _BASE_COLOURS[:num_classes].copy()
    extra = [colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95)
             for i in range(num_classes - len(_BASE_COLOURS))]
    return np.concatenate([_BASE_COLOURS, (np.array(extra) * 255).astype(np.uint8)])


def display_rgb(image: np.ndarray, limits: tuple[float, float] | None = None) -> np.ndarray:
    """An image (C, H, W) in any range as (H, W, 3) uint8, stretched between its 1st and 99th
    percentiles (or the given ``limits``); gray is repeated, more than 3 channels keep the
    first 3."""
    x = image.astype(np.float32)
    lo, hi = np.percentile(x, [1, 99]) if limits is None else limits
    x = np.clip((x - lo) / max(float(hi - lo), 1e-8), 0, 1)
    x = np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x[:3]
    if x.shape[0] == 2:
        x = np.concatenate([x, x[:1]], axis=0)
    return (x.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, ids: np.ndarray, palette: np.ndarray, *, alpha: float = 0.4,
            skip: Sequence[int] = (), limits: tuple[float, float] | None = None) -> np.ndarray:
    """Blend class colours over an image. ``ids`` (H, W); ids < 0 and ids in ``skip`` stay
    uncoloured; ``limits`` as for :func:`display_rgb`. Returns (H, W, 3) uint8."""
    rgb = display_rgb(image, limits).astype(np.float32)
    ids = np.asarray(ids)
    paint = ids >= 0
    for k in skip:
        paint &= ids != k
    colours = palette[np.clip(ids, 0, len(palette) - 1)].astype(np.float32)
    rgb[paint] = (1 - alpha) * rgb[paint] + alpha * colours[paint]
    return rgb.round().astype(np.uint8)


def _save_figure(fig: Any, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Training loss and validation mean IoU per epoch, side by side, as a PNG."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3)
    left.set(xlabel="epoch", ylabel="training loss", title="Loss")
    scores = [(h["epoch"], h["val_mean_iou"]) for h in history
              if h.get("val_mean_iou") is not None]
    if scores:
        right.plot(*zip(*scores), marker="o", ms=3, color="tab:green")
        best = max(scores, key=lambda s: s[1])
        right.annotate(f"best {best[1]:.3f}", best, textcoords="offset points", xytext=(0, -14),
                       ha="center")
    else:
        right.text(0.5, 0.5, "no validation split", ha="center", va="center",
                   transform=right.transAxes, color="gray")
    right.set(xlabel="epoch", ylabel="mean IoU", title="Validation mean IoU", ylim=(0, 1))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _save_figure(fig, path)


def plot_examples(rows: Sequence[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]],
                  class_names: Sequence[str], path: str | Path) -> None:
    """A grid with one row per image: the image, the truth overlay (if any), the prediction
    overlay, and a class legend. Each row is (title, image (C,H,W), truth ids or None, pred ids).
    """
    plt = _pyplot()
    from matplotlib.patches import Patch

    palette = class_palette(len(class_names))
    cols = 3 if any(r[2] is not None for r in rows) else 2
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.2 * cols, 3.2 * len(rows)),
                             squeeze=False)
    for row, (title, image, truth, pred) in zip(axes, rows):
        panels = [(display_rgb(image), title)]
        if cols == 3:
            panels.append((overlay(image, truth, palette) if truth is not None
                           else display_rgb(image), "truth"))
        panels.append((overlay(image, pred, palette), "prediction"))
        for ax, (picture, label) in zip(row, panels):
            ax.imshow(picture)
            ax.set_title(label, fontsize=9)
            ax.axis("off")
    handles = [Patch(color=palette[i] / 255, label=n) for i, n in enumerate(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _save_figure(fig, path)


def mask_outline(ids: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with a 4-neighbour of another id (the borders between classes)."""
    ids = np.asarray(ids)
    edge = np.zeros(ids.shape, bool)
    vertical = ids[1:, :] != ids[:-1, :]
    horizontal = ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def object_colours(count: int) -> np.ndarray:
    """(count + 1, 3) uint8 colours of object ids 0..count: golden-angle hues, so neighbouring
    ids differ; row 0 (background) is black."""
    hues = (np.arange(count + 1) * 0.618034) % 1.0
    colours = np.array([colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues]) * 255
    colours = colours.round().astype(np.uint8).reshape(count + 1, 3)
    colours[0] = 0
    return colours


def object_outlines(image: np.ndarray, labels: np.ndarray,
                    limits: tuple[float, float] | None = None) -> np.ndarray:
    """The image (C, H, W) as (H, W, 3) uint8 (see :func:`display_rgb`) with each object of
    ``labels`` (H, W; 0 background) outlined in its own colour (:func:`object_colours`): its
    pixels with a 4-neighbour of another label, or on the image's edge."""
    labels = np.asarray(labels)
    rgb = display_rgb(image, limits)
    edge = mask_outline(labels)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    edge &= labels > 0
    colours = object_colours(int(labels.max()) if labels.size else 0)
    rgb[edge] = colours[labels[edge]]
    return rgb


def draw_outline(image: np.ndarray, ids: np.ndarray,
                 colour: tuple[int, int, int] = (255, 215, 0),
                 limits: tuple[float, float] | None = None) -> np.ndarray:
    """The image (C, H, W) as (H, W, 3) uint8 (see :func:`display_rgb`) with the class borders
    of ``ids`` drawn on it."""
    rgb = display_rgb(image, limits)
    rgb[mask_outline(ids)] = colour
    return rgb


def plot_picture_grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[Sequence[str]],
                      path: str | Path, *, cell: float = 2.8) -> None:
    """A grid of (H, W, 3) uint8 pictures, one list per row, with a title over each."""
    plt = _pyplot()
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cell * cols, cell * len(rows)),
                             squeeze=False)
    for ax_row, pictures, names in zip(axes, rows, titles):
        for ax in ax_row:
            ax.axis("off")
        for ax, picture, name in zip(ax_row, pictures, names):
            ax.imshow(picture)
            ax.set_title(name, fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


def plot_weight_maps(rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                     path: str | Path) -> None:
    """One row per mask: the image with its class borders, and the loss weight map as a heat
    map with a colour bar. Each row is (title, image (C, H, W), ids (H, W), weights (H, W))."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 2, figsize=(7.4, 3.3 * len(rows)), squeeze=False)
    for (left, right), (title, image, ids, weights) in zip(axes, rows):
        left.imshow(draw_outline(image, ids))
        left.set_title(f"{title}: image and mask borders", fontsize=8)
        shown = right.imshow(weights, cmap="inferno", interpolation="nearest")
        right.set_title(f"weights (max {float(np.max(weights)):.2f})", fontsize=8)
        fig.colorbar(shown, ax=right, fraction=0.046, pad=0.04)
        for ax in (left, right):
            ax.axis("off")
    fig.tight_layout()
    _save_figure(fig, path)


# ------------------------------------------------------------------------ report pictures


def figure_png(fig: Any) -> bytes:
    """The figure as PNG bytes (to embed in a page), and closed."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    return buffer.getvalue()


def confusion_png(cm: np.ndarray, class_names: Sequence[str]) -> bytes:
    """Two heat maps of a (K, K) confusion matrix (rows = truth, columns = prediction): the
    pixel counts (log colour scale) and the rows normalised to sum to 1 (a row is the share
    of that true class predicted as each class; empty rows stay blank). Cells are written in
    for K <= 12. Returns PNG bytes."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    cm = np.asarray(cm, dtype=np.float64)
    k = len(class_names)
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = cm / cm.sum(axis=1, keepdims=True)
    side = min(12.0, 2.5 + 0.45 * k)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side))
    panels = ((cm, "pixels", LogNorm(vmin=1, vmax=max(2.0, cm.max())), "{:.0f}"),
              (rows, "share of the true class", None, "{:.2f}"))
    for ax, (values, title, norm, text) in zip(axes, panels):
        shown = ax.imshow(np.where(values > 0, values, np.nan) if norm else values,
                          cmap="Blues", norm=norm, vmin=None if norm else 0,
                          vmax=None if norm else 1)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        ax.set(title=title, xlabel="predicted", ylabel="true", xticks=range(k), yticks=range(k))
        ax.set_xticklabels(class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticklabels(class_names, fontsize=8)
        if k <= 12:
            for (i, j), v in np.ndenumerate(values):
                if np.isfinite(v):
                    dark = (norm(max(v, 1.0)) if norm else v) > 0.5  # shade on the colour scale
                    ax.text(j, i, text.format(v), ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
    fig.tight_layout()
    return figure_png(fig)


def class_bars_png(values: Sequence[float | None], class_names: Sequence[str],
                   colours: np.ndarray, *, label: str = "IoU") -> bytes:
    """Horizontal bars of one score per class in [0, 1] (None or NaN: written "undefined"),
    in the classes' colours (K, 3) uint8. Returns PNG bytes."""
    plt = _pyplot()
    k = len(class_names)
    scores = [np.nan if v is None else float(v) for v in values]
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.32 * k))
    ax.barh(range(k), np.nan_to_num(scores), color=np.asarray(colours) / 255, edgecolor="black",
            linewidth=0.5)
    for i, v in enumerate(scores):
        ax.text(0.01 if np.isnan(v) else v + 0.01, i,
                "undefined" if np.isnan(v) else f"{v:.3f}", va="center", fontsize=8)
    ax.set(xlim=(0, 1.12), xlabel=label, yticks=range(k))
    ax.set_yticklabels(class_names, fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


def error_maps(image: np.ndarray, truth: np.ndarray, pred: np.ndarray,
               palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a prediction is wrong, per class, over the image (C, H, W) dimmed to a third.

    A wrong pixel is a false positive of the class predicted there and a false negative of its
    true class, so two maps are drawn: the first paints each wrong pixel in the colour of the
    class it was wrongly predicted as (false positives), the second in the colour of the class
    it truly is (false negatives). Correct and ignored (negative truth) pixels stay dimmed.
    ``truth``, ``pred``: (H, W) class ids; ``palette``: (K, 3) uint8.
    Returns two (H, W, 3) uint8 pictures.
    """
    dim = (display_rgb(image).astype(np.float32) / 3).round().astype(np.uint8)
    truth, pred = np.asarray(truth), np.asarray(pred)
    wrong = (truth >= 0) & (truth != pred)
    top = len(palette) - 1
    false_pos, false_neg = dim.copy(), dim.copy()
    false_pos[wrong] = palette[np.clip(pred[wrong], 0, top)]
    false_neg[wrong] = palette[np.clip(truth[wrong], 0, top)]
    return false_pos, false_neg


# --------------------------------------------------------------------------- volumes


def volume_limits(volume: np.ndarray) -> tuple[float, float]:
    """The 1st and 99th percentiles of a volume (C, D, H, W): one contrast for all its views."""
    lo, hi = np.percentile(volume.astype(np.float32), [1, 99])
    return float(lo), float(hi)


def _stretch_rows(picture: np.ndarray, factor: int) -> np.ndarray:
    """Repeat each row ``factor`` times: slices ``factor`` times thicker than pixels are wide
    are shown at their true proportions."""
    return np.repeat(picture, factor, axis=0) if factor > 1 else picture


class VolumePlanes:
    """The planes :func:`plot_volume` shows of a volume ``(C, D, H, W)`` and its class ids
    ``(D, H, W)``, gathered slab by slab (:meth:`add`), so that a volume never held whole can
    be pictured: the axial slice, coronal row and sagittal column through ``point`` (default
    the centre) and the montage's ``count`` slices (:func:`montage_slices`).

    Attributes:
        point: ``(z, y, x)``.
        montage: the montage's slice indices.
        images, labels: plane name (``axial``, ``coronal``, ``sagittal``, or a slice index)
            -> ``(C, ., .)`` image and ``(., .)`` ids planes; filled by :meth:`add`.
    """

    def __init__(self, shape: Sequence[int], point: Sequence[int] | None = None, *,
                 count: int = 9):
        depth, height, width = (int(v) for v in shape)
        z, y, x = point if point is not None else (depth // 2, height // 2, width // 2)
        self.shape = (depth, height, width)
        self.point = (int(z), int(y), int(x))
        self.montage = montage_slices(depth, count)
        self.images: dict[str | int, np.ndarray] = {}
        self.labels: dict[str | int, np.ndarray] = {}

    @classmethod
    def of(cls, volume: np.ndarray, ids: np.ndarray | None = None,
           point: Sequence[int] | None = None, *, count: int = 9) -> VolumePlanes:
        """The planes of a volume held whole."""
        planes = cls(volume.shape[1:], point, count=count)
        planes.add(0, volume, ids)
        return planes

    def add(self, z0: int, image: np.ndarray | None = None, ids: np.ndarray | None = None
            ) -> None:
        """Take the planes' share of slices ``[z0, z0 + n)``: ``image`` ``(C, n, H, W)`` and/or
        ``ids`` ``(n, H, W)``."""
        for store, slab, lead in ((self.images, image, (slice(None),)),
                                  (self.labels, ids, ())):
            if slab is None:
                continue
            n = slab.shape[len(lead)]
            z, y, x = self.point
            depth = self.shape[0]
            for name, cut in (("coronal", (*lead, slice(None), y)),
                              ("sagittal", (*lead, slice(None), slice(None), x))):
                part = slab[cut]
                if name not in store:
                    store[name] = np.zeros((*part.shape[:len(lead)], depth, part.shape[-1]),
                                           part.dtype)
                store[name][(*lead, slice(z0, z0 + n))] = part
            keys: list[str | int] = ["axial", *self.montage]
            for key in keys:
                at = z if key == "axial" else int(key)
                if z0 <= at < z0 + n:
                    store[key] = np.array(slab[(*lead, at - z0)])

    def limits(self) -> tuple[float, float]:
        """The 1st and 99th percentiles of the gathered image planes (the contrast of a volume
        not held whole; :func:`volume_limits` of one that is)."""
        values = np.concatenate([p.astype(np.float32).ravel() for p in self.images.values()])
        lo, hi = np.percentile(values, [1, 99])
        return float(lo), float(hi)

    def _palette(self, palette: np.ndarray | None) -> np.ndarray | None:
        if palette is not None or not self.labels:
            return palette
        return class_palette(max(int(np.max(p)) for p in self.labels.values()) + 1)

    def _picture(self, key: str | int, limits: tuple[float, float],
                 palette: np.ndarray | None, alpha: float, skip: Sequence[int]) -> np.ndarray:
        labels = self.labels.get(key)
        if labels is None or palette is None:
            return display_rgb(self.images[key], limits)
        return overlay(self.images[key], labels, palette, alpha=alpha, skip=skip, limits=limits)

    def views(self, *, limits: tuple[float, float] | None = None,
              palette: np.ndarray | None = None, spacing: Sequence[float] | None = None,
              alpha: float = 0.4, skip: Sequence[int] = (0,)) -> dict[str, np.ndarray]:
        """:func:`orthogonal_views` of the gathered planes (``limits`` default:
        :meth:`limits`)."""
        limits = limits or self.limits()
        palette = self._palette(palette)
        factor = 1
        if spacing is not None:
            factor = max(1, round(float(spacing[0]) / float(spacing[1])))
        views = {}
        for name in ("axial", "coronal", "sagittal"):
            picture = self._picture(name, limits, palette, alpha, skip)
            views[name] = picture if name == "axial" else _stretch_rows(picture, factor)
        return views

    def montage_picture(self, *, limits: tuple[float, float] | None = None,
                        palette: np.ndarray | None = None, alpha: float = 0.4,
                        skip: Sequence[int] = (0,)) -> np.ndarray:
        """:func:`slice_montage`'s picture of the gathered slices."""
        limits = limits or self.limits()
        palette = self._palette(palette)
        _, height, width = self.shape
        cols = int(np.ceil(np.sqrt(len(self.montage))))
        rows = int(np.ceil(len(self.montage) / cols))
        out = np.full((rows * (height + 1) - 1, cols * (width + 1) - 1, 3), 255, np.uint8)
        for i, z in enumerate(self.montage):
            r, c = divmod(i, cols)
            out[r * (height + 1):r * (height + 1) + height,
                c * (width + 1):c * (width + 1) + width] = self._picture(z, limits, palette,
                                                                         alpha, skip)
        return out


def orthogonal_views(volume: np.ndarray, ids: np.ndarray | None = None,
                     point: Sequence[int] | None = None, *,
                     palette: np.ndarray | None = None,
                     spacing: Sequence[float] | None = None, alpha: float = 0.4,
                     skip: Sequence[int] = (0,)) -> dict[str, np.ndarray]:
    """The three planes through ``point`` (z, y, x; default the centre) of a volume (C, D, H, W),
    with the class ids (D, H, W) blended over them when given.

    Returns:
        ``{"axial": (H, W, 3), "coronal": (D', W, 3), "sagittal": (D', H, 3)}`` uint8, where
        ``D' = D * round(z spacing / y spacing)`` rows (each slice repeated, so an anisotropic
        volume keeps its proportions); all three share the volume's contrast.
    """
    volume = np.asarray(volume)
    if ids is not None and palette is None:
        palette = class_palette(int(np.max(ids)) + 1 if np.size(ids) else 1)
    return VolumePlanes.of(volume, ids, point, count=0).views(
        limits=volume_limits(volume), palette=palette, spacing=spacing, alpha=alpha, skip=skip)


def montage_slices(depth: int, count: int = 9) -> list[int]:
    """``count`` slice indices spread evenly over ``depth`` slices (all of them if fewer)."""
    if depth <= count:
        return list(range(depth))
    if count < 2:
        return [depth // 2][:count]
    return [round(i * (depth - 1) / (count - 1)) for i in range(count)]


def slice_montage(volume: np.ndarray, ids: np.ndarray | None = None, *, count: int = 9,
                  palette: np.ndarray | None = None, alpha: float = 0.4,
                  skip: Sequence[int] = (0,)) -> tuple[np.ndarray, list[int]]:
    """Axial slices of a volume (C, D, H, W) spread over its depth, side by side in a grid of
    ``ceil(sqrt(n))`` columns (1-pixel white gaps), overlaid with ``ids`` (D, H, W) if given.

    Returns:
        the montage (rows, cols, 3) uint8 and the slice indices it shows, row by row.
    """
    if ids is not None and palette is None:
        palette = class_palette(int(np.max(ids)) + 1 if np.size(ids) else 1)
    planes = VolumePlanes.of(volume, ids, count=count)
    picture = planes.montage_picture(limits=volume_limits(volume), palette=palette,
                                     alpha=alpha, skip=skip)
    return picture, planes.montage


def plot_volume(volume: np.ndarray, ids: np.ndarray | None, path: str | Path, *,
                point: Sequence[int] | None = None, spacing: Sequence[float] | None = None,
                palette: np.ndarray | None = None, title: str = "") -> None:
    """One picture of a volume and its labels: the three orthogonal views through ``point`` and
    a montage of axial slices, titled with the planes' positions."""
    if ids is not None and palette is None:
        palette = class_palette(int(np.max(ids)) + 1 if np.size(ids) else 1)
    plot_volume_planes(VolumePlanes.of(volume, ids, point), path, limits=volume_limits(volume),
                       spacing=spacing, palette=palette, title=title)


def plot_volume_planes(planes: VolumePlanes, path: str | Path, *,
                       limits: tuple[float, float] | None = None,
                       spacing: Sequence[float] | None = None,
                       palette: np.ndarray | None = None, title: str = "") -> None:
    """:func:`plot_volume` of gathered planes (a volume streamed slab by slab); ``limits``
    default to the planes' own (:meth:`VolumePlanes.limits`)."""
    limits = limits or planes.limits()
    views = planes.views(limits=limits, palette=palette, spacing=spacing)
    montage = planes.montage_picture(limits=limits, palette=palette)
    z, y, x = planes.point
    names = [f"axial z={z}", f"coronal y={y}", f"sagittal x={x}",
             f"slices {', '.join(map(str, planes.montage))}"]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    for ax, picture, name in zip(axes, [*views.values(), montage], names, strict=True):
        ax.imshow(picture)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path)
