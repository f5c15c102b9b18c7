"""Volumes predicted as streams: per-volume statistics in one pass, batches that finish slabs in
order, and ``predict`` reading and writing slab by slab with the labels of the whole volume."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import unetseg.data.volumes as volumes_module
from unetseg.api import predict_volumes
from unetseg.data.classes import ClassTable
from unetseg.data.normalize import ChannelStats
from unetseg.data.volumes import VolumeSource, open_volume, read_volume_mask
from unetseg.infer.volume import (
    normalize_volume,
    predict_volume_logits,
    predict_volume_slabs,
    sliding_window_volume_logits,
    stream_channel_stats,
    stream_volume_logits,
    volume_windows,
)
from unetseg.model import UNet
from unetseg.modelfile import ModelCard, save_model

CLASSES = ClassTable.from_values((0, 255))


def _net(dims: int = 3, seed: int = 0, depth: int = 1) -> UNet:
    torch.manual_seed(seed)
    return UNet(1, 2, depth=depth, width=4 if depth > 1 else 2, spatial_dims=dims).eval()


def _model_file(tmp_path: Path, stats: ChannelStats, dims: int = 3, depth: int = 1
                ) -> tuple[Path, UNet]:
    net = _net(dims, depth=depth)
    path = tmp_path / f"model{dims}d.safetensors"
    save_model(path, net, ModelCard(net.config, CLASSES, stats))
    return path, net


def test_streamed_statistics_are_the_whole_volumes():
    volume = (np.random.default_rng(0).normal(3.0, 2.0, (2, 23, 9, 7)) * 100).astype(np.float32)
    stats = stream_channel_stats(lambda z0, z1: volume[:, z0:z1], 23, 4)
    whole = volume.astype(np.float64).reshape(2, -1)
    np.testing.assert_allclose(stats.mean, whole.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(stats.std, whole.std(axis=1), rtol=1e-12)


def test_a_batch_holds_windows_of_one_first_slice():
    net = _net()
    volume = torch.rand(1, 12, 16, 16)
    starts: list[int] = []
    calls: list[int] = []

    def read(z0, z1):
        starts.append(z0)
        return volume[:, z0:z1]

    def predictor(x):
        calls.append(len(starts))
        return net(x)

    tile = (4, 8, 8)
    with torch.no_grad():
        slabs = list(stream_volume_logits(predictor, read, (12, 16, 16), tile, batch_size=4))
        whole = sliding_window_volume_logits(net, volume, tile, batch_size=4)
    per_start = len(volume_windows((12, 16, 16), tile, 0.5)) // len(starts)
    assert per_start == 9 and calls == [n for n in range(1, len(starts) + 1) for _ in range(3)]
    assert [z0 for z0, _ in slabs] == [0, 2, 4, 6, 8]  # every group finishes its stride
    assert torch.equal(torch.cat([s for _, s in slabs], dim=1), whole)


@pytest.mark.parametrize("scheme", ["dataset", "image"])
def test_slabs_equal_the_whole_volume(scheme: str):
    net = _net()
    raw = (np.random.default_rng(1).random((1, 14, 12, 10)) * 60000).astype(np.uint16)
    stats = ChannelStats((0.4,), (0.2,), scheme)
    got = predict_volume_logits(net, stats, raw, tile=(8, 8, 8), batch_size=3)
    x = torch.from_numpy(raw.astype(np.float32) / 65535)
    if scheme == "image":
        whole = raw.astype(np.float64) / 65535
        own = ChannelStats((float(whole.mean()),), (float(whole.std()),))
        x = normalize_volume(x, own)
    else:
        x = normalize_volume(x, stats)
    with torch.no_grad():
        want = sliding_window_volume_logits(net, x, (8, 8, 8), batch_size=3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(0), want.argmax(0))


def _spy_on_slabs(monkeypatch) -> tuple[list[tuple[int, int]], list[int]]:
    """Record every slab read from a volume file and every label slab written."""
    reads: list[tuple[int, int]] = []
    written: list[int] = []
    original_read, original_write = VolumeSource.read, volumes_module.write_volume_slabs

    def read(self, z0, z1):
        reads.append((z0, z1))
        return original_read(self, z0, z1)

    def write(path, slabs, **kwargs):
        def counted():
            for slab in slabs:
                written.append(len(slab))
                yield slab
        return original_write(path, counted(), **kwargs)

    monkeypatch.setattr(VolumeSource, "read", read)
    monkeypatch.setattr(volumes_module, "write_volume_slabs", write)
    return reads, written


def _traced_peak(run) -> int:
    """The most memory numpy and Python held at once during ``run()`` (torch's own buffers are
    not traced; the slabs read, scaled and written are numpy arrays)."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_predict_streams_a_volume_many_slabs_deep(tmp_path: Path, monkeypatch):
    stats = ChannelStats((0.5,), (0.3,))
    model, net = _model_file(tmp_path, stats, depth=1)
    rng = np.random.default_rng(2)
    shallow = rng.random((1, 16, 16, 16)).astype(np.float32)
    deep = rng.random((1, 96, 16, 16)).astype(np.float32)
    np.save(tmp_path / "shallow.npy", shallow)
    np.save(tmp_path / "deep.npy", deep)

    def run(name: str) -> None:
        predict_volumes(model, tmp_path / name, tmp_path / "out", tile=16, batch_size=4,
                        overlays=False, show_progress=False)

    run("shallow.npy")  # imports and caches, outside the measurement
    base = _traced_peak(lambda: run("shallow.npy"))
    reads, written = _spy_on_slabs(monkeypatch)
    peak = _traced_peak(lambda: run("deep.npy"))
    assert peak - base < (deep.nbytes - shallow.nbytes) / 4, (base, peak)
    assert max(z1 - z0 for z0, z1 in reads) == 16 and max(written) <= 16
    assert sum(written) == 96 and len(written) >= 10
    with torch.no_grad():
        want = sliding_window_volume_logits(
            net, normalize_volume(torch.from_numpy(deep), stats), (16, 16, 16), batch_size=4)
    labels = np.load(tmp_path / "out" / "deep.npy")
    assert labels.dtype == np.uint8
    assert np.array_equal(labels, np.array([0, 255])[want.argmax(0).numpy()])


def test_streamed_tiff_prediction_keeps_its_spacing_and_its_picture(tmp_path: Path,
                                                                    monkeypatch):
    import tifffile

    stats = ChannelStats((0.5,), (0.3,), "image")
    model, net = _model_file(tmp_path, stats)
    stack = (np.random.default_rng(3).random((40, 16, 16)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "s.ome.tif", stack, ome=True, compression="zlib",
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5,
                               "PhysicalSizeX": 0.5})
    reads, written = _spy_on_slabs(monkeypatch)
    predict_volumes(model, tmp_path / "s.ome.tif", tmp_path / "out", tile=16, batch_size=2,
                    show_progress=False)
    assert max(z1 - z0 for z0, z1 in reads) == 16 and max(written) <= 16
    labels = read_volume_mask(tmp_path / "out" / "s.ome.tif")
    assert labels.spacing == (2.0, 0.5, 0.5)
    with open_volume(tmp_path / "s.ome.tif") as source:
        want = torch.cat([s for _, s in predict_volume_slabs(
            net, stats, source.read, source.shape, tile=(16, 16, 16), batch_size=2)], dim=1)
    assert np.array_equal(labels.array, np.array([0, 255])[want.argmax(0).numpy()])
    assert (tmp_path / "out" / "s_views.png").stat().st_size > 1000


def test_a_2d_model_reads_one_slice_at_a_time(tmp_path: Path, monkeypatch):
    stats = ChannelStats((0.5,), (0.3,))
    model, _ = _model_file(tmp_path, stats, dims=2)
    np.save(tmp_path / "v.npy", np.random.default_rng(4).random((6, 16, 16)))
    reads, written = _spy_on_slabs(monkeypatch)
    predict_volumes(model, tmp_path / "v.npy", tmp_path / "out", overlays=False,
                    show_progress=False)
    assert {z1 - z0 for z0, z1 in reads} == {1} and written == [1] * 6
