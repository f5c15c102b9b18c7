"""Crash safety: training killed with SIGKILL anywhere resumes to the same run; a diverging
loss stops with a clear message and keeps the last good checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from unetseg.cli import main
from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig, to_dict
from unetseg.errors import UserError
from unetseg.files import is_temp_file
from unetseg.modelfile import load_model, read_card
from unetseg.train.fit import fit

EPOCHS, STEPS = 2, 2
CFG = RunConfig(model=ModelConfig(depth=2, width=4),
                data=DataConfig(patch_size=32, val_fraction=0.34),
                train=TrainConfig(epochs=EPOCHS, steps_per_epoch=STEPS, batch_size=2))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on a shared, busy CPU, idle-spinning worker threads make these
    tiny models many times slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Runs in a child process: trains CFG and, at the chosen point of the second epoch, writes a
# marker file and sleeps until the test kills it. The points are reached by wrapping unetseg's
# own functions from outside, so the library carries no test hooks.
DRIVER = r"""
import json, sys, time
from pathlib import Path
import unetseg.modelfile as modelfile
import unetseg.train.checkpoint as checkpoint
import unetseg.train.fit as fit_module
from unetseg.config import RunConfig, from_dict

data, run, point, marker, cfg_file, steps = sys.argv[1:7]
steps = int(steps)

def park():
    Path(marker).write_text(point)
    time.sleep(600)

if point == "mid-epoch":  # inside epoch 2, after its first optimiser step
    real_preparer, calls = fit_module._batch_preparer, [0]
    def preparer(*args, **kwargs):
        prepare = real_preparer(*args, **kwargs)
        def wrapped(*batch):
            calls[0] += 1
            if calls[0] == steps + 2:
                park()
            return prepare(*batch)
        return wrapped
    fit_module._batch_preparer = preparer
else:  # while epoch 2 writes "last" or "resume": half of the temporary file is on disk
    real_save, calls = checkpoint.save_file, [0]
    def save_file(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        if Path(filename).name.startswith("." + point + "."):
            calls[0] += 1
            if calls[0] == 2:
                data_ = Path(filename).read_bytes()
                Path(filename).write_bytes(data_[: len(data_) // 2])
                park()
    checkpoint.save_file = modelfile.save_file = save_file
cfg = from_dict(RunConfig, json.loads(Path(cfg_file).read_text()))
fit_module.fit(data, run, cfg, show_progress=False)
"""

POINTS = ("mid-epoch", "last", "resume")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from helpers import write_dataset

    return write_dataset(tmp_path_factory.mktemp("crash") / "data", 3, size=(40, 48))


@pytest.fixture(scope="module")
def uninterrupted(data: Path) -> Path:
    return fit(data, data.parent / "reference", CFG, show_progress=False).last_model


def _optimizer_steps(resume_file: Path) -> tuple[int, int]:
    """(the loop's step counter, AdamW's own step count of the first parameter)."""
    with safe_open(str(resume_file), framework="pt") as fh:
        state = json.loads(fh.metadata()["state"])
        adam = int(fh.get_tensor("optim/0/step").item())
    return state["optimizer_steps"], adam


def _kill_at_points(data: Path, root: Path) -> dict[str, Path]:
    """Start one child per point, wait until each is parked there, SIGKILL them all."""
    cfg_file = root / "cfg.json"
    cfg_file.write_text(json.dumps(to_dict(CFG)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # three children share the cores
    children = {}
    for point in POINTS:
        run, marker = root / f"run-{point}", root / f"{point}.ready"
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(data), str(run), point, str(marker),
             str(cfg_file), str(STEPS)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env)
        children[point] = (proc, run, marker)
    deadline = time.monotonic() + 240
    for point, (proc, _, marker) in children.items():
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"{point}: child ended: {proc.stderr.read().decode()}")
            assert time.monotonic() < deadline, f"{point}: never reached"
            time.sleep(0.05)
    for proc, _, _ in children.values():
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    return {point: run for point, (_, run, _) in children.items()}


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_run(data: Path, uninterrupted,
                                                                  tmp_path: Path):
    runs = _kill_at_points(data, tmp_path)
    reference = load_file(str(uninterrupted))
    for point, run in runs.items():
        # what a kill leaves: epoch 1 committed, epoch 2 at most as a temporary file
        temps = [p.name for p in run.iterdir() if is_temp_file(p)]
        assert bool(temps) == (point != "mid-epoch"), (point, temps)
        assert read_card(run / "resume.safetensors").run is not None
        assert _optimizer_steps(run / "resume.safetensors") == (STEPS, STEPS)
        load_model(run / "last.safetensors")  # readable, whatever the kill interrupted
        assert main(["-q", "train", str(data), "--out", str(run), "--resume"]) == 0, point
        assert not [p for p in run.iterdir() if is_temp_file(p)], point
        assert _optimizer_steps(run / "resume.safetensors") == (EPOCHS * STEPS,) * 2, point
        rows = (run / "metrics.csv").read_text().splitlines()
        assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"], point
        resumed = load_file(str(run / "last.safetensors"))
        assert resumed.keys() == reference.keys()
        for key, value in reference.items():  # one thread everywhere: the same arithmetic
            assert torch.equal(resumed[key], value), f"{point}: {key}"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    import unetseg.train.fit as fit_module

    real, calls = fit_module.build_loss, [0]

    def poisoned(*args, **kwargs):
        loss_fn = real(*args, **kwargs)

        def loss(*batch):
            calls[0] += 1
            value = loss_fn(*batch)
            return value * float("nan") if calls[0] > STEPS + 1 else value  # epoch 2, step 2

        return loss

    monkeypatch.setattr(fit_module, "build_loss", poisoned)
    run, saved = tmp_path / "run", {}

    def after_epoch(row: dict) -> None:
        saved.update({n: (run / n).read_bytes() for n in ("last.safetensors",
                                                          "resume.safetensors")})

    with pytest.raises(UserError, match="diverged: the loss became nan at step 2.*lower --lr"):
        fit(data, run, CFG, show_progress=False, callbacks=[after_epoch])
    for name, content in saved.items():
        assert (run / name).read_bytes() == content, name  # epoch 1's files, untouched
    model, card = load_model(run / "last.safetensors")
    assert card.info["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not [p for p in run.iterdir() if is_temp_file(p)]


def test_huge_learning_rate_ends_with_one_line(data: Path, tmp_path: Path, capsys):
    code = main(["-q", "train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--steps-per-epoch", "4", "--batch-size", "2", "--width", "4", "--depth", "2",
                 "--patch-size", "32", "--lr", "1e30"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "diverged" in err[0] and "--lr" in err[0]
    assert not (tmp_path / "run" / "last.safetensors").exists()
