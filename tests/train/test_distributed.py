"""Data-parallel training: N processes follow the trajectory of one process with the same batch.

The model uses group norm: batch norm normalises each process's share of the batch with that
share's own statistics, so without SyncBatchNorm (GPU only) its forward pass, and hence the
trajectory, legitimately differs from one process normalising the whole batch. The loss is
cross-entropy: its mean over the whole batch is the mean of the processes' means (equal pixel
counts, no ignored pixels), while a batch-level Dice is not an average over samples.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import StopAfter
from safetensors.torch import load_file

from unetseg.cli import main
from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from unetseg.data.augment import apply_params, sample_params
from unetseg.data.normalize import ChannelStats
from unetseg.errors import UserError
from unetseg.model import UNet
from unetseg.modelfile import load_model
from unetseg.train import distributed
from unetseg.train.distributed import DistEnv
from unetseg.train.fit import _batch_preparer, fit

CFG = RunConfig(
    model=ModelConfig(depth=2, width=4, norm="group"),
    data=DataConfig(patch_size=32, val_fraction=0.34),
    train=TrainConfig(epochs=3, batch_size=4, steps_per_epoch=2, loss="ce"),
)
RUN_FILES = {"best.safetensors", "last.safetensors", "resume.safetensors", "config.json",
             "metrics.csv", "curves.png", "report.html", "plan.json", "fingerprint.json"}


# ----------------------------------------------------------------------------- plain functions


def test_env_is_read_like_torchrun_sets_it():
    assert DistEnv.from_environ({}) == DistEnv(0, 0, 1)
    env = DistEnv.from_environ({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (env.rank, env.local_rank, env.world_size, env.is_main) == (3, 1, 4, False)
    with pytest.raises(UserError, match="does not fit"):
        DistEnv.from_environ({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(UserError, match="integers"):
        DistEnv.from_environ({"WORLD_SIZE": "two"})


def test_each_rank_reads_its_rows_of_every_global_batch():
    ranks = [distributed.shard_indices(12, 4, DistEnv(r, r, 2)) for r in range(2)]
    assert ranks == [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7, 10, 11]]
    assert distributed.shard_indices(10, 4, DistEnv()) == list(range(8))  # drop_last
    assert distributed.batch_shard(6, DistEnv(2, 0, 3)) == slice(4, 6)
    with pytest.raises(UserError, match="multiple of 4"):
        distributed.batch_shard(6, DistEnv(0, 0, 4))


def test_a_rank_augments_its_samples_as_in_the_whole_batch():
    cfg = RunConfig(train=TrainConfig(batch_size=4))
    stats = ChannelStats((0.5,), (0.2,))
    images, masks = torch.rand(4, 1, 24, 24), torch.randint(0, 2, (4, 24, 24))
    whole = _batch_preparer(cfg, stats, torch.device("cpu"), 3)
    part = _batch_preparer(cfg, stats, torch.device("cpu"), 3, slice(2, 4))
    for _ in range(2):  # the generators stay in step from batch to batch
        x, y = whole(images, masks)
        x2, y2 = part(images[2:], masks[2:])
        assert torch.equal(x[2:], x2) and torch.equal(y[2:], y2)
    params = sample_params(4, cfg.augment, torch.Generator().manual_seed(0), height=24, width=24)
    full = apply_params(images, masks, params)
    rows = apply_params(images[1:3], masks[1:3], params.rows(slice(1, 3)))
    assert torch.equal(full[0][1:3], rows[0]) and torch.equal(full[1][1:3], rows[1])


def test_one_process_trains_the_plain_model():
    model = UNet(1, 2, depth=1, width=2)
    assert distributed.distribute(model, DistEnv(), torch.device("cpu")) is model
    with pytest.raises(UserError, match="needs GPUs"):
        distributed.distribute(model, DistEnv(0, 0, 2), torch.device("cpu"), sync_batchnorm=True)


def test_cli_rejects_a_batch_that_does_not_split(disc_data: Path, tmp_path: Path, capsys):
    code = main(["-q", "train", str(disc_data), "--out", str(tmp_path / "run"), "--nproc", "2",
                 "--batch-size", "3"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["unetseg: error: --batch-size 3 does not split over 2 processes; use a"
                   " multiple of 2"]
    assert main(["-q", "train", str(disc_data), "--out", str(tmp_path / "run"),
                 "--nproc", "0"]) == 2
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- two processes


def _record_writes(root: Path, writes: list[str]) -> None:
    """Note every file or folder this process creates, changes or moves under ``root``."""
    prefix = str(root)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    changing = {"os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.truncate"}

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                       else bool((flags or 0) & write_flags))
        else:
            path, writing = (args[0] if args else None), event in changing
        if writing and str(path).startswith(prefix):
            writes.append(f"{event} {path}")

    sys.addaudithook(hook)


def _train_worker(data: Path, runs: Path, reports: Path) -> int:
    """One rank: a full run, then a run stopped after epoch 1 and resumed."""
    env = DistEnv.from_environ()
    writes: list[str] = []
    if not env.is_main:
        _record_writes(runs, writes)
    with distributed.leaving_at_the_end():
        full = fit(data, runs / "ddp", CFG, show_progress=False)
        with contextlib.suppress(KeyboardInterrupt):
            fit(data, runs / "resumed", CFG, show_progress=False, callbacks=[StopAfter(1)])
        resumed = fit(data, runs / "resumed", resume=True, show_progress=False)
    report = {"full": full.history, "resumed": resumed.history, "writes": writes}
    (reports / f"rank{env.rank}.json").write_text(json.dumps(report))
    return 0


@pytest.mark.slow
def test_two_processes_follow_one_process_and_resume(disc_data: Path, tmp_path: Path):
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    runs.mkdir()
    reports.mkdir()
    assert distributed.spawn_local(2, _train_worker, disc_data, runs, reports, threads=1) == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = fit(disc_data, tmp_path / "one", CFG, show_progress=False)
    finally:
        torch.set_num_threads(threads)

    rank0, rank1 = (json.loads((reports / f"rank{r}.json").read_text()) for r in range(2))
    assert rank0["full"] == rank1["full"], "the ranks disagree on the logged metrics"
    assert rank1["writes"] == [], "only rank 0 may write files"
    assert {p.name for p in (runs / "ddp").iterdir()} == RUN_FILES

    losses = [row["train_loss"] for row in rank0["full"]]
    expected = [row["train_loss"] for row in one.history]
    assert losses == pytest.approx(expected, rel=1e-4)
    assert [r["val_mean_iou"] for r in rank0["full"]] == pytest.approx(
        [r["val_mean_iou"] for r in one.history], rel=1e-4)
    a, b = load_file(str(one.last_model)), load_file(str(runs / "ddp" / "last.safetensors"))
    assert a.keys() == b.keys()  # no "module." prefix
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)

    # resumed under DDP after a stop at epoch 1: the same run as without the stop
    assert [row["epoch"] for row in rank0["resumed"]] == [1, 2, 3]
    assert [row["train_loss"] for row in rank0["resumed"]] == losses
    c = load_file(str(runs / "resumed" / "last.safetensors"))
    assert all(torch.equal(b[k], c[k]) for k in b)


@pytest.mark.slow
def test_cli_nproc_trains_a_model_that_loads_into_a_plain_unet(disc_data: Path,
                                                              tmp_path: Path, capsys):
    out = tmp_path / "run"
    code = main(["-q", "train", str(disc_data), "--out", str(out), "--nproc", "2", "--epochs",
                 "1", "--steps-per-epoch", "1", "--batch-size", "2", "--width", "4", "--depth",
                 "2", "--patch-size", "32", "--norm", "batch"])
    assert code == 0, capsys.readouterr().err
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert json.loads((out / "config.json").read_text())["processes"] == 2
    model, _ = load_model(out / "last.safetensors")
    assert isinstance(model.inc[1], torch.nn.BatchNorm2d)
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)
