"""A screenshot of the napari plugin for the README, from a short run on the bundled data.

Trains a U-Net on 24 of the bundled ISBI 2012 slices for ``--budget`` seconds (or takes
``--model``), opens one of the 6 held-out slices in a napari viewer, docks the plugin's widget
as napari does (from the npe2 manifest), predicts the slice with it and photographs the whole
window. Runs headless on an X display: under ``xvfb-run`` when there is no ``DISPLAY``
(Debian: ``xvfb``, and for Qt's xcb platform ``libxcb-icccm4 libxcb-keysyms1
libxcb-xinerama0``), with Mesa's software OpenGL. Qt's offscreen platform does not do: on
it the canvas comes out black, with or without ``QT_OPENGL=software`` and
``LIBGL_ALWAYS_SOFTWARE=1``, even on an X display; a shown window on xcb is drawn. The picture
is reduced to 256 colours to stay small::

    python benchmarks/napari_screenshot.py --budget 150 --out benchmarks/results/napari-widget.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from unetseg.api import demo_data_root

MANIFEST = Path(__file__).resolve().parents[1] / "src" / "unetseg" / "napari" / "napari.yaml"
WINDOW = (1400, 720)
HELD_OUT = "27"


def train(folder: Path, budget: float) -> Path:
    """A model trained on the first 24 bundled slices for ``budget`` seconds."""
    from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from unetseg.train.fit import fit

    src = demo_data_root()
    stems = sorted(p.stem for p in (src / "images").glob("*.png"))[:24]
    for sub in ("images", "masks"):
        (folder / "train" / sub).mkdir(parents=True)
        for stem in stems:
            shutil.copy(src / sub / f"{stem}.png", folder / "train" / sub / f"{stem}.png")
    cfg = RunConfig(
        model=ModelConfig(depth=4, up="transpose"),
        data=DataConfig(val_fraction=0.2, patch_size=256, class_names=("membrane", "cell")),
        train=TrainConfig(epochs=200, batch_size=4, lr=2e-3, time_limit_s=budget))
    return fit(folder / "train", folder / "run", cfg).best_model


def ensure_display() -> None:
    """Run on an X display with Qt's xcb platform: this script again under ``xvfb-run`` (which
    stops its Xvfb after Qt has let go of it) when there is no display."""
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    if os.environ.get("DISPLAY"):
        return
    if not shutil.which("xvfb-run"):
        raise SystemExit("no X display and no xvfb-run: install xvfb (apt-get install xvfb)")
    os.execvp("xvfb-run", ["xvfb-run", "-a", "-s", "-screen 0 1920x1080x24", sys.executable,
                           *sys.argv])


def register_plugin() -> None:
    """The manifest registered with npe2 when the package is not installed with it."""
    import npe2

    manager = npe2.PluginManager.instance()
    manager.discover()
    try:
        manager.get_manifest("unetseg")
    except KeyError:
        manager.register(npe2.PluginManifest.from_file(MANIFEST))


def screenshot(model: Path, target: Path) -> None:
    import napari
    from napari._qt import qt_main_window
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    register_plugin()
    qt_main_window.SHOW_QT_WARNING = False  # no toast about PyQt5 in the picture
    viewer = napari.Viewer(show=True, title="napari: unetseg")
    viewer.window._qt_window.resize(*WINDOW)
    pixels = np.asarray(Image.open(demo_data_root() / "images" / f"{HELD_OUT}.png"))
    layer = viewer.add_image(pixels, name=f"isbi2012-{HELD_OUT}")
    _dock, widget = viewer.window.add_plugin_dock_widget("unetseg", "Predict (U-Net)")
    widget.model_file.value = model
    widget.image_layer.value = layer
    widget.predict()
    while widget.worker is not None:
        QApplication.processEvents()
        time.sleep(0.02)
    print(widget.status.value)
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    print(f"canvas: mean RGB {canvas[..., :3].mean():.1f} (near 0: a black canvas, no OpenGL)")
    window = viewer.screenshot(canvas_only=False, flash=False)
    picture = Image.fromarray(window[..., :3]).quantize(256)
    target.parent.mkdir(parents=True, exist_ok=True)
    picture.save(target, optimize=True)
    print(f"wrote {target} ({window.shape[1]} x {window.shape[0]})")
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a model file; trains one when left out")
    parser.add_argument("--budget", type=float, default=150.0, help="training seconds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/napari-widget.png"))
    args = parser.parse_args()
    ensure_display()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or train(Path(tmp), args.budget)
        screenshot(model, args.out)


if __name__ == "__main__":
    main()
