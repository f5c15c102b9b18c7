"""Tiled prediction against references computed without tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unetseg.infer.predict import (
    default_out_tile,
    logits_to_labels,
    overlap_tile_logits,
    predict_labels,
    predict_logits,
    sliding_window_logits,
    softmax_probabilities,
)
from unetseg.infer.tiling import overlap_tile_input_size
from unetseg.infer.tta import parse_tta
from unetseg.model import UNet, valid_margin

TILE = 16
IMAGE_SIZES = [(1, 1), (7, 5), (16, 16), (16, 33), (33, 63), (40, 17)]  # < = > the tile


def identity_predictor(x: torch.Tensor) -> torch.Tensor:
    """A pointwise function of the input, as 2 channels per input channel."""
    return torch.cat([x, 2 * x + 1], dim=1)


def single_pass_reference(model: nn.Module, image: torch.Tensor, depth: int,
                          out_tile: int) -> torch.Tensor:
    """One forward pass over the whole mirror-padded image (numpy's reflect), cropped."""
    _, h, w = image.shape
    margin = valid_margin(depth)
    net_out = overlap_tile_input_size(out_tile, depth) - 2 * margin
    bottom = -h % out_tile + net_out - out_tile + margin
    right = -w % out_tile + net_out - out_tile + margin
    padded = np.pad(image.numpy(), ((0, 0), (margin, bottom), (margin, right)), mode="reflect")
    with torch.inference_mode():
        return model(torch.from_numpy(padded)[None])[0, :, :h, :w]


@pytest.fixture(scope="module")
def same_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(2, 3, depth=2, width=4, padding="same", norm="batch").eval()


@pytest.fixture(scope="module")
def valid_unet() -> UNet:
    torch.manual_seed(1)
    return UNet(1, 3, depth=2, width=4, padding="valid", norm="none").eval()


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("height, width", IMAGE_SIZES)
def test_identity_predictor_reconstructs_input(height: int, width: int, blend: str) -> None:
    image = torch.randn(2, height, width)
    out = sliding_window_logits(identity_predictor, image, tile=TILE, overlap=0.5,
                                batch_size=3, blend=blend)  # type: ignore[arg-type]
    assert out.shape == (4, height, width)
    torch.testing.assert_close(out, identity_predictor(image[None])[0], atol=1e-5, rtol=0)


def test_identity_predictor_under_inference_mode() -> None:
    image = torch.randn(1, 37, 29)
    with torch.inference_mode():
        out = sliding_window_logits(identity_predictor, image, tile=TILE, overlap=0.25)
    torch.testing.assert_close(out, identity_predictor(image[None])[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_pointwise_conv_matches_whole_image(overlap: float) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, kernel_size=1)
    image = torch.randn(3, 45, 70)
    with torch.inference_mode():
        out = sliding_window_logits(conv, image, tile=TILE, overlap=overlap, batch_size=5)
        expected = conv(image[None])[0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_same_unet_single_window_equals_forward(same_unet: UNet, blend: str) -> None:
    image = torch.randn(2, 21, 30)
    with torch.inference_mode():
        expected = same_unet(image[None])[0]
        out = sliding_window_logits(same_unet, image, tile=32, blend=blend)  # type: ignore[arg-type]
    if blend == "constant":
        assert torch.equal(out, expected)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_sliding_window_batch_size_does_not_change_result(same_unet: UNet) -> None:
    image = torch.randn(2, 41, 35)
    with torch.inference_mode():
        outs = [sliding_window_logits(same_unet, image, tile=TILE, batch_size=b)
                for b in (1, 3, 100)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-5, rtol=1e-5)


def test_sliding_window_rejects_valid_predictor(valid_unet: UNet) -> None:
    with pytest.raises(ValueError, match="use overlap_tile_logits"), torch.inference_mode():
        sliding_window_logits(valid_unet, torch.randn(1, 60, 60), tile=56)


def test_sliding_window_validates_options() -> None:
    image = torch.randn(1, 20, 20)
    with pytest.raises(ValueError, match="overlap must be a fraction"):
        sliding_window_logits(identity_predictor, image, tile=8, overlap=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        sliding_window_logits(identity_predictor, image, tile=8, batch_size=0)
    with pytest.raises(ValueError, match="unknown blend mode"):
        sliding_window_logits(identity_predictor, image, tile=8, blend="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        sliding_window_logits(identity_predictor, image[None], tile=8)


@pytest.mark.parametrize("out_tile", [16, 32])
@pytest.mark.parametrize("height, width", [(70, 90), (33, 17), (5, 1)])
def test_overlap_tile_equals_single_pass_on_mirrored_image(
    valid_unet: UNet, height: int, width: int, out_tile: int
) -> None:
    image = torch.randn(1, height, width)
    with torch.inference_mode():
        out = overlap_tile_logits(valid_unet, image, depth=2, out_tile=out_tile, batch_size=2)
    assert out.shape == (3, height, width)
    expected = single_pass_reference(valid_unet, image, 2, out_tile)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_overlap_tile_depth3_batchnorm_equals_single_pass() -> None:
    # depth >= 3: legal windows are 4 pixels off the pooling grid, the extra output is dropped
    torch.manual_seed(2)
    model = UNet(2, 2, depth=3, width=4, padding="valid", norm="batch").eval()
    image = torch.randn(2, 19, 26)
    with torch.inference_mode():
        out = overlap_tile_logits(model, image, depth=3, out_tile=8, batch_size=4)
    torch.testing.assert_close(out, single_pass_reference(model, image, 3, 8),
                               atol=1e-4, rtol=1e-4)


def test_overlap_tile_batch_size_does_not_change_result(valid_unet: UNet) -> None:
    image = torch.randn(1, 37, 50)
    with torch.inference_mode():
        a = overlap_tile_logits(valid_unet, image, depth=2, out_tile=16, batch_size=1)
        b = overlap_tile_logits(valid_unet, image, depth=2, out_tile=16, batch_size=7)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_overlap_tile_errors(valid_unet: UNet) -> None:
    image = torch.randn(1, 20, 20)
    with pytest.raises(ValueError, match=r"out_tile 18 must be a positive multiple .* 16 or 20"):
        overlap_tile_logits(valid_unet, image, depth=2, out_tile=18)
    with pytest.raises(ValueError, match="valid-padding U-Net of depth 3"), torch.inference_mode():
        overlap_tile_logits(valid_unet, image, depth=3, out_tile=8)  # wrong depth


def test_default_out_tile() -> None:
    assert default_out_tile(2, 512) == 472  # 472 + 2 * 20 = 512
    assert default_out_tile(4, 572) == 384  # input 572 + 4 off-grid rows, as in the paper
    assert overlap_tile_input_size(default_out_tile(4, 572), 4) == 572
    assert default_out_tile(2, 10) == 4  # at least 2**depth
    assert default_out_tile(2, 512, image_size=70) == 72


def test_predict_logits_same_dispatch(same_unet: UNet) -> None:
    image = torch.randn(2, 30, 23)
    out = predict_logits(same_unet, image, tile=TILE, overlap=0.5, batch_size=2)
    with torch.inference_mode():
        expected = sliding_window_logits(same_unet, image, tile=TILE, overlap=0.5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    full = predict_logits(same_unet, image)  # default tile 512 > image: one window
    with torch.inference_mode():
        torch.testing.assert_close(full, same_unet(image[None])[0], atol=1e-6, rtol=1e-6)


def test_predict_logits_valid_dispatch(valid_unet: UNet) -> None:
    image = torch.randn(1, 45, 31)
    out = predict_logits(valid_unet, image, tile=80)
    assert not out.requires_grad
    expected = single_pass_reference(valid_unet, image, 2, default_out_tile(2, 80, 45))
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_predict_labels_and_probabilities(same_unet: UNet) -> None:
    image = torch.randn(2, 19, 24)
    labels = predict_labels(same_unet, image, tile=TILE)
    logits = predict_logits(same_unet, image, tile=TILE)
    assert labels.shape == (19, 24) and labels.dtype == torch.int64
    assert torch.equal(labels, logits.argmax(0))
    probs = softmax_probabilities(logits)
    assert probs.shape == logits.shape
    torch.testing.assert_close(probs.sum(0), torch.ones(19, 24))
    binary = torch.tensor([[[-1.0, 2.0]]])  # K = 1
    assert logits_to_labels(binary).tolist() == [[0, 1]]
    torch.testing.assert_close(softmax_probabilities(binary), torch.sigmoid(binary))


def test_predict_logits_requires_eval_mode_and_config() -> None:
    model = UNet(1, 2, depth=2, width=4)
    with pytest.raises(ValueError, match=r"call model.eval\(\)"):
        predict_logits(model.train(), torch.randn(1, 8, 8))
    with pytest.raises(TypeError, match="config.padding"):
        predict_logits(nn.Conv2d(1, 2, 1).eval(), torch.randn(1, 8, 8))


@pytest.mark.parametrize("k", [2, 3, 12])
def test_logits_to_labels_is_the_argmax_with_the_first_class_on_ties(k):
    from unetseg.infer.predict import logits_to_labels

    logits = torch.randint(-3, 4, (2, k, 17, 23)).float()  # many ties
    np.testing.assert_array_equal(logits_to_labels(logits).numpy(), logits.argmax(1).numpy())
    planes = logits[0].contiguous()
    np.testing.assert_array_equal(logits_to_labels(planes).numpy(), planes.argmax(0).numpy())
    strided = logits[0][None].contiguous(memory_format=torch.channels_last)[0]
    np.testing.assert_array_equal(logits_to_labels(strided).numpy(), planes.argmax(0).numpy())


@pytest.mark.parametrize("padding, tta", [("same", None), ("same", "flip"), ("valid", None)])
def test_on_batch_counts_every_window_once(padding: str, tta: str | None, same_unet: UNet,
                                           valid_unet: UNet, one_torch_thread: None) -> None:
    """The progress hook sees each batch once, in order, ending at all windows, whatever the
    augmentation does inside a batch; the windows are counted independently, from the
    predictor's calls. An exception from the hook stops the prediction."""
    model = same_unet if padding == "same" else valid_unet
    image = torch.randn(model.config.in_channels, 45, 70)
    calls: list[int] = []
    forward = model.forward

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return forward(x)

    seen: list[tuple[int, int]] = []
    model.forward = counting  # type: ignore[method-assign]
    try:
        predict_logits(model, image, tile=TILE if padding == "same" else 60, overlap=0.25,
                       batch_size=2, tta=tta, on_batch=lambda d, t: seen.append((d, t)))
    finally:
        del model.forward
    per_batch = len(parse_tta(tta)) or 1  # the model runs once per transform and batch
    windows = sum(calls) // per_batch
    assert len(seen) == len(calls) // per_batch > 2
    assert [t for _, t in seen] == [windows] * len(seen)
    assert [d for d, _ in seen] == sorted({d for d, _ in seen}) and seen[-1][0] == windows

    class Stop(Exception):
        pass

    def stop_after_first(done: int, total: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        predict_logits(model, image, tile=TILE if padding == "same" else 60, batch_size=2,
                       on_batch=stop_after_first)
