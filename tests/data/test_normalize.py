"""Tests for unetseg.data.normalize."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unetseg.data.normalize import MIN_STD, ChannelStats, channel_stats, normalize


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    # different sizes; a large offset makes a naive sum of squares lose precision
    return [
        (rng.normal(size=(2, h, w)) * [[[0.5]], [[3.0]]] + [[[1000.0]], [[-2.0]]]).astype(
            np.float32
        )
        for h, w in ((5, 7), (9, 4), (1, 30))
    ]


def test_channel_stats_match_concatenation() -> None:
    images = _images()
    pixels = np.concatenate([im.reshape(2, -1).astype(np.float64) for im in images], axis=1)
    stats = channel_stats(iter(images))
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(stats.std, pixels.std(axis=1), rtol=1e-9)


def test_constant_channel_std_floored() -> None:
    stats = channel_stats([np.full((1, 4, 4), 0.3, np.float32)])
    assert stats.std == (MIN_STD,)
    assert stats.mean[0] == pytest.approx(0.3)


def test_channel_stats_errors() -> None:
    with pytest.raises(ValueError):
        channel_stats([])
    with pytest.raises(ValueError):
        channel_stats([np.zeros((1, 2, 2)), np.zeros((3, 2, 2))])


def test_normalize_torch_and_numpy() -> None:
    stats = ChannelStats(mean=(1.0, -2.0), std=(0.5, 4.0))
    x = np.random.default_rng(0).normal(size=(3, 2, 4, 5)).astype(np.float64)
    expected = (x - np.array([1.0, -2.0])[:, None, None]) / np.array([0.5, 4.0])[:, None, None]
    batch = normalize(torch.from_numpy(x), stats)
    assert batch.dtype == torch.float32 and batch.shape == x.shape
    np.testing.assert_allclose(batch.numpy(), expected, rtol=1e-5, atol=1e-6)
    single = normalize(torch.from_numpy(x[0]).half(), stats)
    np.testing.assert_allclose(single.numpy(), expected[0], rtol=2e-3, atol=2e-3)
    arr = normalize(x[1], stats)
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, expected[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="C=2"):
        normalize(torch.zeros(1, 3, 4, 4), stats)


def test_stats_dict_round_trip() -> None:
    stats = channel_stats(_images())
    assert ChannelStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
    with pytest.raises(ValueError):
        ChannelStats.from_dict({"mean": [0.0]})
