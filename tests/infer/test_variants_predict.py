"""Every built-in variant predicts images of any size like the U-Net: one window equals the
forward pass, tiles and streamed bands agree with in-memory tiling, test-time augmentation is
the mean over the transforms, and ``predict`` runs them from a model file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unetseg.api import predict
from unetseg.config import ModelConfig
from unetseg.data.normalize import ChannelStats, normalize
from unetseg.infer.predict import predict_logits, sliding_window_logits
from unetseg.infer.stream import TiffBandReader, plan_windows, stream_labels
from unetseg.infer.tta import with_tta
from unetseg.model import build_model

RUN = ("unet", "residual", "attention", "nested", "resnet18")
"""resnet34 and resnet50 differ from resnet18 in their blocks alone, which
``tests/model/test_variants.py`` runs at any size."""
STATS = ChannelStats((0.5,), (0.25,))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def variant(arch: str, **changes) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(**{"in_channels": 1, "num_classes": 3, "depth": 2, "width": 4,
                         "arch": arch, "norm": "batch", **changes})
    return build_model(cfg).eval()


@pytest.mark.parametrize("arch", RUN)
def test_one_window_is_the_forward_pass(arch: str):
    model = variant(arch, deep_supervision=True)
    image = torch.randn(1, 45, 70)
    with torch.inference_mode():
        expected = model(image[None])[0]
        got = sliding_window_logits(model, image, tile=96, blend="constant")
    assert torch.equal(got, expected)


@pytest.mark.parametrize("arch", RUN)
def test_streamed_bands_equal_tiled_prediction(arch: str, tmp_path: Path):
    rng = np.random.default_rng(0)
    image = (rng.random((131, 157)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", image, tile=(32, 48), compression="zlib")
    model = variant(arch)
    tile = 64
    x = normalize(torch.from_numpy(image[None] / np.float32(255)), STATS)
    with torch.inference_mode():
        reference = predict_logits(model, x, tile=tile, batch_size=2)
        other_batch = predict_logits(model, x, tile=tile, batch_size=5)
    torch.testing.assert_close(other_batch, reference, rtol=1e-5, atol=1e-5)
    plan = plan_windows("same", model.config.depth, *image.shape, tile=tile)
    assert len(plan.ys) > 1 and len(plan.xs) > 1
    with TiffBandReader(tmp_path / "a.tif") as reader:
        bands = list(stream_labels(reader, model, plan, STATS, batch_size=3))
    labels = np.concatenate([ids for _, ids, _ in bands])
    np.testing.assert_array_equal(labels, reference.argmax(0).numpy())


@pytest.mark.parametrize("arch", RUN)
def test_flip_tta_is_the_mean_over_the_four_flips(arch: str):
    model = variant(arch)
    x = torch.randn(2, 1, 29, 40)
    with torch.inference_mode():
        got = with_tta(model, "flip")(x)
        flips = [(), (-1,), (-2,), (-2, -1)]
        expected = sum(model(x.flip(d) if d else x).flip(d) if d else model(x)
                       for d in flips) / 4
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["nested", "resnet18"])
def test_predict_runs_a_variant_model_file_with_tiles_and_tta(arch: str, tmp_path: Path):
    from shipping import sample_images, tiny_model

    model = tiny_model(tmp_path / f"{arch}.safetensors", arch=arch, deep_supervision=True)
    image = sample_images()[0]
    plain = predict(model, [image], tmp_path / "plain", tile=128, overlays=False,
                    show_progress=False)
    tta = predict(model, [image], tmp_path / "tta", tile=128, tta="flip", overlays=False,
                  show_progress=False)
    for written in (plain, tta):
        labels = np.array(Image.open(written[0]))
        assert set(np.unique(labels)) <= {0, 255} and labels.shape == (512, 512)
