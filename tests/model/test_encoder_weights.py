"""``--encoder-weights``: a ResNet state dict under torchvision's names, built here by hand
(no torchvision), loads into the encoder, and the encoder then computes what the file's
weights compute with plain ``F.conv2d`` and ``F.batch_norm``."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import torch
from resnet_weights import torchvision_state
from safetensors.torch import save_file
from torch.nn import functional as F

from unetseg.config import ModelConfig
from unetseg.errors import UserError
from unetseg.model import build_model
from unetseg.model.encoder_weights import adapt_first_conv, load_encoder_weights, read_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def r18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = torchvision_state()
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    save_file(state, str(path))
    return path, state


def resnet18(in_channels: int) -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model(ModelConfig(in_channels=in_channels, num_classes=2, width=4,
                                   arch="resnet18"))


def stem(x: torch.Tensor, state: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """ResNet's stem computed by hand: 7x7 conv (stride 2, pad 3), batch norm with the file's
    running statistics, ReLU."""
    y = F.conv2d(x, weight, stride=2, padding=3)
    y = F.batch_norm(y, state["bn1.running_mean"], state["bn1.running_var"],
                     state["bn1.weight"], state["bn1.bias"], training=False, eps=1e-5)
    return F.relu(y)


def test_rgb_weights_load_and_compute_the_files_convolutions(r18_file):
    path, state = r18_file
    model = resnet18(3).eval()
    result = load_encoder_weights(model, path)
    encoder = model.body.encoder
    assert len(result.loaded) == len(encoder.state_dict()) and result.missing == ()
    assert set(result.unused) == {"fc.weight", "fc.bias"} and result.adapted is None
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder.conv1(x), F.conv2d(x, state["conv1.weight"],
                                                              stride=2, padding=3))
        features = encoder(x)
        torch.testing.assert_close(features[0], stem(x, state, state["conv1.weight"]))
        block = encoder.layer1[0]  # the first basic block by hand
        y = encoder.maxpool(features[0])
        h = F.relu(F.batch_norm(F.conv2d(y, state["layer1.0.conv1.weight"], padding=1),
                                state["layer1.0.bn1.running_mean"],
                                state["layer1.0.bn1.running_var"], state["layer1.0.bn1.weight"],
                                state["layer1.0.bn1.bias"], training=False))
        h = F.batch_norm(F.conv2d(h, state["layer1.0.conv2.weight"], padding=1),
                         state["layer1.0.bn2.running_mean"], state["layer1.0.bn2.running_var"],
                         state["layer1.0.bn2.weight"], state["layer1.0.bn2.bias"],
                         training=False)
        torch.testing.assert_close(block(y), F.relu(h + y))


def test_one_channel_gives_the_response_to_the_gray_image_in_rgb(r18_file):
    path, state = r18_file
    model = resnet18(1).eval()
    result = load_encoder_weights(model, path)
    assert result.adapted and "summed" in result.adapted
    gray = torch.randn(2, 1, 64, 96)
    rgb = gray.expand(-1, 3, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(model.body.encoder(gray)[0],
                                   stem(rgb, state, state["conv1.weight"]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels", [2, 4, 6, 7])
def test_other_channel_counts_repeat_the_rgb_filters_scaled(r18_file, channels: int):
    path, state = r18_file
    model = resnet18(channels)
    load_encoder_weights(model, path)
    w = state["conv1.weight"]
    expected = torch.cat([w, w, w], dim=1)[:, :channels] * 3 / channels
    torch.testing.assert_close(model.body.encoder.conv1.weight, expected)
    if channels % 3:
        return
    # whole copies of RGB: a constant image gets the RGB network's response to that constant
    x = torch.full((1, channels, 32, 32), 0.7)
    with torch.no_grad():
        torch.testing.assert_close(
            model.body.encoder.conv1(x),
            F.conv2d(torch.full((1, 3, 32, 32), 0.7), w, stride=2, padding=3),
            rtol=1e-4, atol=1e-5)


def test_pth_with_prefixes_and_a_wrapper_loads_the_same(r18_file, tmp_path: Path):
    _, state = r18_file
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 90}
    torch.save(wrapped, tmp_path / "r18.pth")
    a, b = resnet18(3), resnet18(3)
    load_encoder_weights(a, r18_file[0])
    result = load_encoder_weights(b, tmp_path / "r18.pth")
    assert set(result.unused) == {"module.fc.weight", "module.fc.bias"}
    for key, value in a.body.encoder.state_dict().items():
        assert torch.equal(b.body.encoder.state_dict()[key], value), key


def test_missing_keys_are_reported_and_left_initialised(tmp_path: Path):
    state = {k: v for k, v in torchvision_state().items() if not k.startswith("layer4.")}
    save_file(state, str(tmp_path / "partial.safetensors"))
    model = resnet18(3)
    before = model.body.encoder.layer4[0].conv1.weight.clone()
    result = load_encoder_weights(model, tmp_path / "partial.safetensors")
    assert result.missing and all(k.startswith("layer4.") for k in result.missing)
    assert "missing" in result.summary()
    assert torch.equal(model.body.encoder.layer4[0].conv1.weight, before)


def test_another_resnets_weights_are_refused_with_one_line(tmp_path: Path):
    save_file(torchvision_state((3, 4, 6, 3), bottleneck=True),
              str(tmp_path / "r50.safetensors"))
    with pytest.raises(UserError, match="shape"):
        load_encoder_weights(resnet18(3), tmp_path / "r50.safetensors")


def test_files_that_are_not_resnet_state_dicts_are_refused(tmp_path: Path):
    torch.save({"model": Fraction(1, 3)}, tmp_path / "object.pth")  # not a tensor type
    with pytest.raises(UserError, match="weights_only"):
        read_state_dict(tmp_path / "object.pth")
    save_file({"decoder.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="none of its 1 keys"):
        load_encoder_weights(resnet18(3), tmp_path / "other.safetensors")
    with pytest.raises(UserError, match="not found"):
        read_state_dict(tmp_path / "absent.safetensors")
    with torch.device("meta"):
        unet = build_model(ModelConfig(width=4, depth=2))
    with pytest.raises(UserError, match="--arch unet has none"):
        load_encoder_weights(unet, tmp_path / "other.safetensors")


def test_adapting_anything_but_rgb_filters_is_refused():
    with pytest.raises(ValueError):
        adapt_first_conv(torch.zeros(8, 4, 3, 3), 1)
