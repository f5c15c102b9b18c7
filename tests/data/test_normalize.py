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


# --------------------------------------------------------------------------- schemes


def test_image_scheme_z_scores_each_image_by_its_own_statistics() -> None:
    from unetseg.data.normalize import normalize

    stats = ChannelStats((0.3, 0.6), (0.2, 0.1), "image")
    x = np.random.default_rng(1).normal(size=(3, 2, 6, 7)) * [[[2.0]], [[0.5]]] + [[[4.0]],
                                                                                   [[-1.0]]]
    by_hand = np.empty_like(x)
    for n in range(3):
        for c in range(2):
            by_hand[n, c] = (x[n, c] - x[n, c].mean()) / x[n, c].std()
    batch = normalize(torch.from_numpy(x), stats)
    np.testing.assert_allclose(batch.numpy(), by_hand, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(normalize(x[1], stats), by_hand[1], rtol=1e-5, atol=1e-5)
    # an image brighter and of more contrast normalises the same
    np.testing.assert_allclose(normalize(torch.from_numpy(3 * x[0] + 5), stats).numpy(),
                               by_hand[0], rtol=1e-4, atol=1e-4)


def test_percentile_scheme_clips_then_z_scores() -> None:
    stats = ChannelStats((0.5,), (0.25,), "percentile", (0.1,), (0.8,))
    x = np.array([[[0.0, 0.1, 0.5], [0.8, 0.95, 3.0]]])
    by_hand = (np.clip(x, 0.1, 0.8) - 0.5) / 0.25
    np.testing.assert_allclose(normalize(x, stats), by_hand, rtol=1e-6)
    np.testing.assert_allclose(normalize(torch.from_numpy(x)[None], stats)[0].numpy(), by_hand,
                               rtol=1e-6)


def test_dataset_stats_of_the_percentile_scheme() -> None:
    from unetseg.data.normalize import dataset_stats

    rng = np.random.default_rng(3)
    images = [rng.normal(size=(1, 20, 30)).astype(np.float32),
              rng.normal(size=(1, 11, 17)).astype(np.float32)]
    images[0][0, 0, :3] = 500.0  # hot pixels
    stats = dataset_stats(images, "percentile")
    pixels = np.concatenate([im.ravel().astype(np.float64) for im in images])
    low, high = np.percentile(pixels, [0.5, 99.5])
    assert stats.low == pytest.approx((low,)) and stats.high == pytest.approx((high,))
    clipped = np.clip(pixels, low, high)
    assert stats.mean == pytest.approx((clipped.mean(),), rel=1e-5)
    assert stats.std == pytest.approx((clipped.std(),), rel=1e-5)
    assert stats.scheme == "percentile" and high < 10
    assert dataset_stats(images, "image").scheme == "image"


@pytest.mark.parametrize("scheme", ["dataset", "image", "percentile"])
def test_training_view_then_training_stats_equal_the_scheme(scheme: str) -> None:
    from unetseg.data.normalize import dataset_stats, training_view

    rng = np.random.default_rng(4)
    images = [(rng.random((2, 15, 13)) * s + o).astype(np.float32)
              for s, o in ((1.0, 0.0), (0.2, 0.7), (3.0, -1.0))]
    stats = dataset_stats(images, scheme)  # type: ignore[arg-type]
    for image in images:
        view = training_view(image, stats)
        np.testing.assert_allclose(normalize(view, stats.training()), normalize(image, stats),
                                   rtol=1e-4, atol=1e-4)
    if scheme == "image":  # the view keeps the data set's scale for augmentation
        view = training_view(images[2], stats)
        assert view.mean(axis=(1, 2)) == pytest.approx(stats.mean, abs=1e-4)


@pytest.mark.parametrize("stats", [ChannelStats((0.5, 0.2), (0.1, 0.3), "image"),
                                   ChannelStats((0.5,), (0.1,), "percentile", (0.0,), (0.9,))])
def test_schemes_round_trip_and_old_files_read_as_dataset(stats: ChannelStats) -> None:
    assert ChannelStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
    assert ChannelStats.from_dict({"mean": [0.5], "std": [0.2]}).scheme == "dataset"
    assert "scheme" not in ChannelStats((0.5,), (0.2,)).to_dict()
    with pytest.raises(ValueError):
        ChannelStats((0.5,), (0.2,), "percentile")  # no bounds
    with pytest.raises(ValueError):
        ChannelStats((0.5,), (0.2,), "typo")  # type: ignore[arg-type]
