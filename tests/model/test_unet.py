import math

import pytest
import torch

from unetseg.config import ModelConfig
from unetseg.errors import UserError
from unetseg.model import (
    UNet,
    input_size_for_output,
    is_legal_input_size,
    legal_input_sizes,
    nearest_legal_input_size,
    valid_margin,
    valid_output_size,
)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_network_has_the_papers_parameters_and_sizes():
    model = UNet(1, 2, depth=4, width=64, padding="valid", up="transpose", norm="none")
    assert n_params(model) == 31_030_658
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)


def expected_paper_params(depth: int, width: int, cin: int, k: int, top: int | None = None
                          ) -> int:
    """Count by hand: conv3x3 weights+bias, 2x2 up-convs to the skip's channels, 1x1 head."""
    def conv(i, o, s):
        return i * o * s * s + o
    total, c = 0, cin
    widths = [top or width] + [width * 2**i for i in range(1, depth + 1)]
    for w in widths:
        total += conv(c, w, 3) + conv(w, w, 3)
        c = w
    for deeper, w in reversed(list(zip(widths[1:], widths[:-1]))):
        total += conv(deeper, w, 2) + conv(2 * w, w, 3) + conv(w, w, 3)
    return total + conv(widths[0], k, 1)


@pytest.mark.parametrize("depth,width,cin,k,top", [
    (4, 64, 1, 2, None), (3, 8, 3, 5, None), (2, 4, 1, 1, None), (4, 16, 3, 11, 32),
    (2, 8, 1, 2, 4)])
def test_parameter_count_matches_a_hand_count(depth, width, cin, k, top):
    model = UNet(cin, k, depth=depth, width=width, padding="valid", norm="none", top_width=top)
    assert n_params(model) == expected_paper_params(depth, width, cin, k, top)


@pytest.mark.parametrize("padding,size", [("same", 45), ("valid", 92)])
def test_a_wider_first_level_widens_it_alone(padding, size):
    model = UNet(3, 5, depth=2, width=4, top_width=12, padding=padding).eval()
    assert model.inc[0].out_channels == 12 and model.downs[0][1][0].out_channels == 8
    assert model.ups[-1].up.out_channels == 12 and model.head.in_channels == 12
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape[:2] == (1, 5) and out.shape[-2:] == model.output_size(size, size)


@pytest.mark.parametrize("h,w", [(1, 1), (33, 63), (333, 517), (64, 64), (17, 200)])
@pytest.mark.parametrize("cin,k", [(1, 1), (3, 4)])
def test_same_padding_accepts_any_size(h, w, cin, k):
    model = UNet(cin, k, depth=3, width=4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, cin, h, w))
    assert out.shape == (2, k, h, w)


@pytest.mark.parametrize("up", ["transpose", "bilinear", "nearest"])
@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_every_up_mode_and_norm_builds_and_runs(up, norm):
    model = UNet(1, 3, depth=2, width=4, up=up, norm=norm, dropout=0.1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 45, 38)).shape == (1, 3, 45, 38)


def test_same_padding_crop_back_is_translation_consistent():
    """Padding happens only at the bottom/right, so the top-left content is not shifted."""
    torch.manual_seed(0)
    model = UNet(1, 2, depth=2, width=4, norm="none").eval()
    x = torch.randn(1, 1, 30, 30)
    with torch.no_grad():
        a = model(x)
        b = model(torch.nn.functional.pad(x, (0, 2, 0, 2), mode="reflect"))
    assert torch.allclose(a[..., :20, :20], b[..., :20, :20], atol=1e-5)


def brute_output_size(s: int, depth: int) -> int | None:
    """Run a tiny valid network to measure the output size (None if it fails)."""
    model = UNet(1, 1, depth=depth, width=1, padding="valid", norm="none")
    try:
        with torch.no_grad():
            return model(torch.zeros(1, 1, s, s)).shape[-1]
    except (UserError, RuntimeError):
        return None


@pytest.mark.parametrize("depth", [1, 2])
def test_geometry_agrees_with_the_network(depth):
    for s in range(1, 80):
        legal = is_legal_input_size(s, depth)
        measured = brute_output_size(s, depth) if legal else None
        if legal:
            assert measured == valid_output_size(s, depth)


def test_geometry_helpers_are_consistent():
    depth = 4
    assert valid_margin(depth) == 92
    sizes = legal_input_sizes(depth, 700)
    assert 572 in sizes and all(is_legal_input_size(s, depth) for s in sizes)
    assert not any(is_legal_input_size(s, depth) for s in range(1, 700) if s not in sizes)
    for s in (1, 100, 187, 188, 189, 500, 572, 573):
        n = nearest_legal_input_size(s, depth)
        assert n >= s and is_legal_input_size(n, depth)
        assert not any(is_legal_input_size(t, depth) for t in range(s, n))
    for o in (1, 100, 388, 389):
        i = input_size_for_output(o, depth)
        assert is_legal_input_size(i, depth) and valid_output_size(i, depth) >= o
        assert valid_output_size(i - 2**depth, depth) < o if i - 2**depth >= 188 else True


def test_illegal_size_error_suggests_a_legal_size():
    with pytest.raises(UserError, match="use 572"):
        valid_output_size(570, 4)
    model = UNet(1, 2, depth=2, width=2, padding="valid", norm="none")
    with pytest.raises(UserError):
        model(torch.zeros(1, 1, 41, 41))


def test_he_initialisation_has_the_papers_std():
    torch.manual_seed(0)
    model = UNet(1, 2, depth=4, width=64, padding="valid", norm="none")
    conv = model.downs[3][1][0]  # 512 -> 1024 channels, fan_in = 512 * 9
    expected = math.sqrt(2 / (512 * 9))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.02)
    assert torch.count_nonzero(conv.bias) == 0


def test_from_config_round_trip():
    cfg = ModelConfig(in_channels=3, num_classes=4, depth=3, width=8, padding="valid",
                      up="bilinear", norm="group", dropout=0.2, top_width=16)
    assert UNet.from_config(cfg).config == cfg
