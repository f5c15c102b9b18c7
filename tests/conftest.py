"""Shared fixtures: tiny synthetic datasets written to disk (CPU only, seconds to build)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def disc_pair(size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A gray image with bright discs on a noisy background and its 0/255 mask."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), bool)
    for _ in range(4):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(5, max(6, min(h, w) // 4))
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    image = 60 + 120 * mask + rng.normal(0, 12, (h, w))
    return np.clip(image, 0, 255).astype(np.uint8), (mask * 255).astype(np.uint8)


def write_dataset(root: Path, n: int, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i in range(n):
        image, mask = disc_pair(size, seed + i)
        Image.fromarray(image).save(root / "images" / f"img{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{i:02d}.png")
    return root


@pytest.fixture
def disc_data(tmp_path: Path) -> Path:
    """Six 64x64 gray images with 0/255 disc masks in tmp/data/{images,masks}."""
    return write_dataset(tmp_path / "data", 6)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a shared, busy CPU, idle-spinning worker threads make tiny
    models many times slower. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def isbi_root() -> Path:
    root = SHARED_DATA / "isbi2012" / "train"
    if not (root / "images").is_dir():
        pytest.skip("../shared/data/isbi2012 is not present")
    return root


@pytest.fixture(autouse=True, scope="session")
def machine_independent_choices(tmp_path_factory: pytest.TempPathFactory):
    """``auto`` precision and backend decide as on a CPU without native bf16 and without ONNX
    Runtime, so every test predicts the same in fp32 PyTorch on every machine (the tests of
    those choices fake the machine they need); measurements and exported graphs are cached in
    a temporary folder, also for the command-line processes tests start. Session-wide, so
    module-scoped fixtures (a served model) load under it too."""
    import unetseg.export.fastest as fastest
    import unetseg.infer.precision as precision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "cpu_native_bf16", lambda: None)
        patch.setattr(fastest, "onnxruntime_installed", lambda: False)
        patch.setenv("UNETSEG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


class StopAfter:
    """A training callback that interrupts the run like Ctrl-C after a given epoch."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def __call__(self, row: dict) -> None:
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt
