"""Qt for the napari plugin's tests: offscreen, and probed once in a child process first.

A Qt platform that cannot start (missing system libraries) aborts the process instead of
raising, so whether Qt runs, and whether it gets an OpenGL context (which the viewer's canvas
needs: Qt 5's offscreen platform has one only on an X display, such as the Xvfb that
pytest-xvfb starts), is asked of a child process. Tests needing Qt skip where it cannot run;
the viewer is napari's ``make_napari_viewer`` where OpenGL works, else a ``ViewerModel`` (the
same layer list, no canvas).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

MANIFEST = Path(__file__).resolve().parents[2] / "src" / "unetseg" / "napari" / "napari.yaml"

_PROBE = """
from qtpy.QtGui import QOffscreenSurface, QOpenGLContext
from qtpy.QtWidgets import QApplication
app = QApplication([])
context, surface = QOpenGLContext(), QOffscreenSurface()
surface.create()
print("gl" if context.create() and context.makeCurrent(surface) else "qt")
"""


@functools.cache
def qt_support() -> str:
    """``"gl"`` (Qt with OpenGL), ``"qt"`` (Qt without OpenGL) or why Qt cannot run."""
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                              timeout=120, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return "starting a Qt application timed out"
    words = done.stdout.split()
    if done.returncode == 0 and words and words[-1] in ("gl", "qt"):
        return words[-1]
    lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    return f"no Qt application can be created here ({lines[0] if lines else done.returncode})"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test that needs Qt before any fixture runs: pytest-qt's session-wide ``qapp``
    would be created first, and abort the process where Qt cannot start."""
    if "qt" in getattr(item, "fixturenames", ()) and qt_support() not in ("gl", "qt"):
        pytest.skip(qt_support())


@pytest.fixture
def qt(one_torch_thread: None) -> str:
    """Skip unless a Qt application can be created; ``"gl"`` or ``"qt"``. Predictions run on
    one torch thread (see ``one_torch_thread``)."""
    support = qt_support()
    if support not in ("gl", "qt"):
        pytest.skip(support)
    return support


def _register_plugin() -> None:
    """Register the manifest with npe2 where the package is not installed with its entry point
    (a checkout on ``PYTHONPATH``). Once, before napari reads the plugins, and never undone:
    napari's application registers each registered plugin's commands once."""
    from importlib.metadata import entry_points

    if any(ep.name == "unetseg" for ep in entry_points(group="napari.manifest")):
        return  # napari discovers it
    try:
        import npe2
    except ImportError:
        return
    manager = npe2.PluginManager.instance()
    try:
        manager.get_manifest("unetseg")
    except KeyError:
        manager.register(npe2.PluginManifest.from_file(MANIFEST))


_register_plugin()


@pytest.fixture
def unetseg_plugin():
    """npe2's plugin manager, with the plugin registered."""
    npe2 = pytest.importorskip("npe2")

    manager = npe2.PluginManager.instance()
    manager.discover()
    assert manager.get_manifest("unetseg").name == "unetseg"
    return manager


@pytest.fixture
def viewer(qt: str, request: pytest.FixtureRequest, qtbot):
    """napari's test viewer where OpenGL works, else a ``ViewerModel``."""
    if qt == "gl":
        return request.getfixturevalue("make_napari_viewer")()
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture
def gl_viewer(qt: str, request: pytest.FixtureRequest, unetseg_plugin):
    """napari's test viewer with the plugin registered; skips without OpenGL."""
    if qt != "gl":
        pytest.skip("no OpenGL context for the viewer's canvas (Qt 5 offscreen needs an X"
                    " display, e.g. Xvfb with pytest-xvfb)")
    return request.getfixturevalue("make_napari_viewer")()
