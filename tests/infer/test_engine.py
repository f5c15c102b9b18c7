"""ImagePredictor: planned tiling per image, channels-last weights, same logits."""

import pytest
import torch

from unetseg.data.normalize import ChannelStats
from unetseg.infer.engine import AUTO_MAX_TILE, AUTO_MIN_OVERLAP, ImagePredictor
from unetseg.model import UNet

STATS = ChannelStats((0.0,), (1.0,))


def predictor(padding: str = "same", **kw) -> ImagePredictor:
    torch.manual_seed(0)
    model = UNet(1, 2, depth=2, width=4, padding=padding).eval()
    return ImagePredictor(model, STATS, **kw)


def test_an_image_that_fits_is_predicted_whole():
    assert predictor().tiling(360, 480) == (480, 0.0, 4)


def test_a_2048_image_takes_four_tiles_overlapping_by_64_pixels():
    tile, overlap, batch = predictor().tiling(2048, 2048)
    assert tile == 1056 and tile <= AUTO_MAX_TILE
    assert round(overlap * tile) == AUTO_MIN_OVERLAP
    assert 2 * tile - round(overlap * tile) >= 2048  # two tiles cover each side
    assert batch == 1  # 4 x 512^2 pixels per batch at most


def test_given_tiles_keep_the_old_defaults():
    assert predictor(tile=256).tiling(2048, 2048) == (256, 0.25, 4)
    assert predictor(tile=256, overlap=0.5).tiling(2048, 2048) == (256, 0.5, 4)
    assert predictor(padding="valid").tiling(2048, 2048)[0] == 512


def test_planned_whole_image_logits_equal_one_forward_pass(one_torch_thread):
    p = predictor(fast_layout=True)
    conv = next(m for m in p.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    image = torch.rand(1, 300, 410)
    with torch.inference_mode():
        whole = p.model(image[None])[0]
    torch.testing.assert_close(p.logits(image), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1200, 90), (1300, 1100)])
def test_planned_tiles_match_explicit_ones(shape, one_torch_thread):
    """Tiled logits of a planned tiling agree with small explicit tiles (both are blends of
    the same network's windows; a U-Net of depth 2 sees less than the 64-pixel overlap)."""
    image = torch.rand(1, *shape)
    planned = predictor().logits(image)
    explicit = predictor(tile=128, overlap=0.5).logits(image)
    assert planned.shape == (2, *shape)
    assert (planned.argmax(0) == explicit.argmax(0)).float().mean() > 0.999
