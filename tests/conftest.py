"""Shared fixtures: tiny synthetic datasets written to disk (CPU only, seconds to build)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SHARED_DATA, write_dataset


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
