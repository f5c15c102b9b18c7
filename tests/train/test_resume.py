"""``--resume``: the loop state's format, and what a resumed run repeats of an uninterrupted one."""

import json
import math
import time
from pathlib import Path

import pytest
import torch
from helpers import StopAfter
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from unetseg.train.fit import fit
from unetseg.train.state import RunState

# the loop-state keys of resume.safetensors as unetseg 0.1.0 wrote them for a run without a
# time budget (from a file that version wrote)
PREVIOUS_KEYS = ("epoch", "epochs", "history", "best_score", "bad_epochs", "elapsed_s",
                 "optimizer_steps", "train_s", "timed_steps", "scheduler", "scaler")


def small_cfg(**train) -> RunConfig:
    return RunConfig(
        model=ModelConfig(depth=2, width=4),
        data=DataConfig(patch_size=32, val_fraction=0.34),
        train=TrainConfig(**{"epochs": 3, "batch_size": 2, "steps_per_epoch": 3, **train}),
    )


def interrupted(data: Path, run: Path, cfg: RunConfig, epoch: int) -> Path:
    with pytest.raises(KeyboardInterrupt):
        fit(data, run, cfg, show_progress=False, callbacks=[StopAfter(epoch)])
    return run


def rewrite_loop_state(resume_file: Path, change) -> None:
    """Replace the JSON loop state of ``resume_file`` with ``change(state)``."""
    with safe_open(str(resume_file), framework="pt") as fh:
        meta = dict(fh.metadata())
    meta["state"] = json.dumps(change(json.loads(meta["state"])))
    save_file(load_file(str(resume_file)), str(resume_file), metadata=meta)


def test_run_state_round_trips_through_json():
    state = RunState(epochs=7, epoch=3, last_epoch_steps=5, history=[{"epoch": 3}],
                     best_score=0.5, bad_epochs=1, elapsed_s=12.5, optimizer_steps=30,
                     train_s=9.0, timed_steps=30, stopped=None)
    assert RunState.from_json(json.loads(json.dumps(state.to_json()))) == state
    fresh = RunState.from_json(json.loads(json.dumps(RunState(epochs=2).to_json())))
    assert fresh.best_score == -math.inf


def test_run_state_reads_older_states():
    # before step times were kept: no optimizer_steps, train_s, timed_steps
    older = {"epoch": 2, "epochs": 4, "history": [], "best_score": 0.25, "bad_epochs": 0,
             "elapsed_s": 8.0, "scheduler": {}, "scaler": {}}
    state = RunState.from_json(older)
    assert (state.epoch, state.epochs, state.best_score, state.elapsed_s) == (2, 4, 0.25, 8.0)
    assert (state.optimizer_steps, state.train_s, state.timed_steps) == (0, 0.0, 0)
    assert state.last_epoch_steps is None and state.stopped is None


def test_a_resume_file_of_the_previous_format_resumes_exactly(disc_data: Path,
                                                              tmp_path: Path):
    full = fit(disc_data, tmp_path / "full", small_cfg(), show_progress=False)
    run = interrupted(disc_data, tmp_path / "run", small_cfg(), 1)
    rewrite_loop_state(run / "resume.safetensors",
                       lambda state: {k: state[k] for k in PREVIOUS_KEYS})
    resumed = fit(disc_data, run, resume=True, show_progress=False)
    assert resumed.history == [
        {**row, "elapsed_s": resumed.history[i]["elapsed_s"]}
        for i, row in enumerate(full.history)]
    a, b = load_file(str(full.last_model)), load_file(str(resumed.last_model))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Clock:
    """A ``time.perf_counter`` that advances one second a call: every epoch of a run, and of a
    resumed one, takes the same time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def budgeted_cfg() -> RunConfig:
    # width and epoch length left to the planner; 3 s an epoch by Clock: 8 of a 25 s budget
    return RunConfig(model=ModelConfig(depth=2), data=DataConfig(patch_size=32, val_fraction=0.34),
                     train=TrainConfig(epochs=20, batch_size=2, time_limit_s=25.0))


def planned(run: Path) -> tuple:
    saved = json.loads((run / "config.json").read_text())
    return saved["planned_width"], saved["planned_epochs"]


@pytest.mark.parametrize("stop", ["early", "last"])
def test_a_budgeted_resume_follows_the_uninterrupted_schedule(
        disc_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread, stop):
    monkeypatch.setattr(time, "perf_counter", Clock())
    full = fit(disc_data, tmp_path / "full", budgeted_cfg(), show_progress=False)
    assert full.stopped == "time_limit" and 2 < len(full.history) < 20
    epoch = 2 if stop == "early" else len(full.history)
    monkeypatch.setattr(time, "perf_counter", Clock())
    run = interrupted(disc_data, tmp_path / "run", budgeted_cfg(), epoch)
    monkeypatch.setattr(time, "perf_counter", Clock())
    resumed = fit(disc_data, run, resume=True, show_progress=False)
    assert resumed.history == full.history  # epochs, steps, learning rates, seconds counted
    assert resumed.stopped == full.stopped
    assert planned(run) == planned(tmp_path / "full") != (None, None)
    a, b = load_file(str(full.last_model)), load_file(str(resumed.last_model))
    assert all(torch.equal(a[k], b[k]) for k in a)
