"""The built-in U-Net variants: sizes, deep supervision, pruning, and parameter counts
checked against counts made another way (by hand, torchvision's published figures,
segmentation_models_pytorch's decoder)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from unetseg.config import ModelConfig
from unetseg.errors import UserError
from unetseg.model import SegmentationNet, UNet, arch_config, architectures, build_model
from unetseg.model.attention import AttentionGate
from unetseg.model.blocks import StridedPointwiseConv
from unetseg.model.resnet import ResNetEncoder

VARIANTS = ("unet", "residual", "attention", "nested", "resnet18", "resnet34", "resnet50")
RUN = ("unet", "residual", "attention", "nested", "resnet18", "resnet50")
"""The variants run here: resnet34 is resnet18's code with more blocks per layer."""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(arch: str, **changes) -> ModelConfig:
    """A small network of ``arch`` (the ResNet encoders keep their size; their decoder is
    narrow)."""
    return ModelConfig(**{"in_channels": 1, "num_classes": 3, "depth": 2, "width": 4,
                          "arch": arch, "norm": "batch", **changes})


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shapes_only(cfg: ModelConfig) -> torch.nn.Module:
    """The network on the meta device: shapes, no storage, built at once."""
    with torch.device("meta"):
        return build_model(cfg)


@pytest.mark.parametrize("height,width", [(32, 32), (33, 17)])
def test_strided_pointwise_conv_is_nn_conv2d_with_stride(height: int, width: int):
    torch.manual_seed(0)
    ours = StridedPointwiseConv(3, 5, stride=2)
    reference = torch.nn.Conv2d(3, 5, 1, stride=2)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, height, width, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), reference(x_ref)
    torch.testing.assert_close(y, y_ref)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    (y_ref * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad)
    torch.testing.assert_close(ours.bias.grad, reference.bias.grad)


@pytest.mark.parametrize("arch", ["residual", "resnet18", "resnet50"])
def test_no_variant_uses_the_strided_pointwise_conv_kernel(arch: str):
    """oneDNN's strided 1x1 weight gradient corrupts memory on narrow channels-last inputs."""
    model = build_model(ModelConfig(arch=arch, width=4, depth=2))
    strided_1x1 = [name for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)
                   and m.stride != (1, 1)]
    assert strided_1x1 == []
    assert any(isinstance(m, StridedPointwiseConv) for m in model.modules())


def test_every_variant_is_listed():
    assert architectures()[: len(VARIANTS)] == list(VARIANTS)


@pytest.mark.parametrize("arch", RUN)
def test_any_height_and_width_gives_logits_of_that_size(arch: str):
    torch.manual_seed(0)
    model = build_model(tiny(arch)).eval()
    assert model.config.padding == "same"
    with torch.no_grad():
        for h, w in [(1, 1), (13, 22), (37, 64), (33, 5)]:
            out = model(torch.randn(2, 1, h, w))
            assert out.shape == (2, 3, h, w)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ["residual", "attention", "nested", "resnet18"])
def test_the_logits_are_the_crop_of_the_padded_forward(arch: str):
    torch.manual_seed(0)
    model = build_model(tiny(arch)).eval()
    multiple = 2**model.config.depth
    x = torch.randn(1, 1, 19, 45)
    ph, pw = -19 % multiple, -45 % multiple
    padded = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < 19 and pw < 45 else "replicate")
    with torch.no_grad():
        expected = model.head(model.body(padded)[0])[..., :19, :45]
        torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("arch", VARIANTS)
def test_deep_supervision_adds_heads_used_in_training_only(arch: str):
    torch.manual_seed(0)
    plain = shapes_only(tiny(arch, depth=3))
    supervised = shapes_only(tiny(arch, depth=3, deep_supervision=True))
    extra = {k for k in supervised.state_dict() if k not in plain.state_dict()}
    assert extra and all(k.startswith("aux_heads.") for k in extra)
    levels = 4 if arch.startswith("resnet") else 2  # every decoder level but the last
    assert len(supervised.aux_heads) == levels
    if arch not in RUN:
        return
    plain = build_model(tiny(arch, depth=3))
    supervised = build_model(tiny(arch, depth=3, deep_supervision=True))
    x = torch.randn(2, 1, 21, 30)
    outputs = supervised.train()(x)
    assert isinstance(outputs, list) and len(outputs) == levels + 1
    assert all(o.shape == (2, 3, 21, 30) for o in outputs)
    with torch.no_grad():
        logits = supervised.eval()(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3, 21, 30)
    assert isinstance(plain.train()(x), torch.Tensor)


def test_auxiliary_logits_are_the_coarse_head_upsampled_and_cropped():
    torch.manual_seed(0)
    model = UNet(1, 2, depth=3, width=4, norm="none", deep_supervision=True).train()
    x = torch.randn(1, 1, 20, 27)  # padded to 24 x 32
    features = {}
    model.ups[0].register_forward_hook(lambda m, i, o: features.setdefault("level2", o))
    outputs = model(x)
    coarse = model.aux_heads[0](features["level2"])  # (1, 2, 6, 8): level 2 of 24 x 32
    assert coarse.shape[-2:] == (6, 8)
    expected = F.interpolate(coarse, size=(24, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(outputs[1], expected[..., :20, :27])


def test_valid_unet_auxiliary_logits_are_centred_on_the_main_ones():
    model = UNet(1, 2, depth=2, width=4, padding="valid", norm="none",
                 deep_supervision=True).train()
    outputs = model(torch.randn(1, 1, 92, 92))
    assert [tuple(o.shape[-2:]) for o in outputs] == [(52, 52), (52, 52)]


def test_the_plain_unet_is_unchanged():
    """Deep supervision off (the default) builds the U-Net's modules and nothing more."""
    model = build_model(ModelConfig(depth=2, width=4))
    assert isinstance(model, UNet)
    assert {k.split(".")[0] for k in model.state_dict()} == {"inc", "downs", "ups", "head"}


def hand_conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def hand_norm(c: int) -> int:
    """Batch, instance (a group norm here) and group norm all learn a scale and a shift."""
    return 2 * c


def hand_double(cin: int, cout: int) -> int:
    return hand_conv(cin, cout, 3, False) + hand_norm(cout) + hand_conv(cout, cout, 3, False) \
        + hand_norm(cout)


def hand_up(cin: int, cout: int) -> int:
    """The U-Net's 2x2 transposed conv to ``cout`` channels."""
    return hand_conv(cin, cout, 2)


@pytest.mark.parametrize("depth,width,blocks", [(2, 4, 1), (3, 8, 2), (4, 16, 3)])
def test_residual_parameters_match_a_hand_count(depth: int, width: int, blocks: int):
    widths = [width * 2**i for i in range(depth + 1)]

    def block(cin: int, cout: int) -> int:
        shortcut = 0 if cin == cout else hand_conv(cin, cout, 1, False) + hand_norm(cout)
        return hand_double(cin, cout) + shortcut

    total, c = 0, 1
    for w in widths:
        total += block(c, w) + (blocks - 1) * block(w, w)
        c = w
    for i in reversed(range(depth)):
        total += hand_up(widths[i + 1], widths[i]) + hand_double(2 * widths[i], widths[i])
    total += hand_conv(widths[0], 3, 1)
    model = shapes_only(tiny("residual", depth=depth, width=width, encoder_blocks=blocks))
    assert n_params(model) == total


@pytest.mark.parametrize("depth,width", [(2, 4), (4, 8)])
def test_attention_parameters_match_a_hand_count(depth: int, width: int):
    widths = [width * 2**i for i in range(depth + 1)]
    unet = n_params(shapes_only(tiny("unet", depth=depth, width=width)))
    gates = sum(hand_conv(widths[i], widths[i] // 2, 2, False)
                + hand_conv(widths[i + 1], widths[i] // 2, 1) + hand_conv(widths[i] // 2, 1, 1)
                for i in range(depth))
    assert n_params(shapes_only(tiny("attention", depth=depth, width=width))) == unet + gates


def test_attention_gate_is_the_papers_additive_attention():
    torch.manual_seed(0)
    gate = AttentionGate(4, 8, 2)
    skip, g = torch.randn(1, 4, 6, 10), torch.randn(1, 8, 3, 5)
    theta = F.conv2d(skip, gate.theta.weight, stride=2)
    phi = F.conv2d(g, gate.phi.weight, gate.phi.bias)
    psi = torch.sigmoid(F.conv2d(F.relu(theta + phi), gate.psi.weight, gate.psi.bias))
    alpha = F.interpolate(psi, size=(6, 10), mode="bilinear", align_corners=False)
    torch.testing.assert_close(gate(skip, g), skip * alpha)
    assert ((alpha > 0) & (alpha < 1)).all()


@pytest.mark.parametrize("depth,width,supervised", [(2, 4, False), (3, 4, True), (4, 8, True)])
def test_nested_parameters_match_a_hand_count(depth: int, width: int, supervised: bool):
    """X[i][0] is the U-Net's encoder; X[i][j] (j >= 1) an up step from level i + 1 and a
    double conv over (j + 1) maps of level i's width."""
    widths = [width * 2**i for i in range(depth + 1)]
    total = hand_double(1, widths[0]) + sum(hand_double(widths[i - 1], widths[i])
                                            for i in range(1, depth + 1))
    for i in range(depth):
        for j in range(1, depth - i + 1):
            total += hand_up(widths[i + 1], widths[i]) + hand_double((j + 1) * widths[i],
                                                                     widths[i])
    heads = depth if supervised else 1
    total += heads * hand_conv(widths[0], 3, 1)
    model = shapes_only(tiny("nested", depth=depth, width=width, deep_supervision=supervised))
    assert n_params(model) == total


@pytest.mark.parametrize("level", [1, 2, 3])
def test_nested_pruned_inference_is_the_supervised_output_of_its_level(level: int):
    """Pruned to L, the network returns what X[0][L]'s head returned in the full network
    (batch-independent norms, so training and eval modes compute the same), and runs no
    node deeper than the L-th diagonal."""
    cfg = tiny("nested", depth=3, norm="instance", deep_supervision=True)
    torch.manual_seed(0)
    full = build_model(cfg)
    pruned = build_model(tiny("nested", depth=3, norm="instance", deep_supervision=True,
                              prune_level=level))
    pruned.load_state_dict(full.state_dict())
    x = torch.randn(2, 1, 24, 29)
    outputs = full.train()(x)  # X[0][3], X[0][2], X[0][1]
    ran = []
    for diagonal in pruned.body.diagonals:
        diagonal.register_forward_hook(lambda m, i, o: ran.append(m.k))
    with torch.no_grad():
        got = pruned.eval()(x)
    torch.testing.assert_close(got, outputs[3 - level].detach())
    assert ran == list(range(1, level + 1))


TORCHVISION_PARAMS = {"resnet18": (11_689_512, 513_000), "resnet34": (21_797_672, 513_000),
                      "resnet50": (25_557_032, 2_049_000)}
"""torchvision's published parameter counts (``torchvision.models`` weights tables, the
``num_params`` of ``ResNet18_Weights.IMAGENET1K_V1`` etc.) and those of their classifier
``fc`` (512 * 1000 + 1000, 2048 * 1000 + 1000), which the encoder leaves out."""


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_resnet_encoder_has_torchvisions_parameters(arch: str):
    total, fc = TORCHVISION_PARAMS[arch]
    with torch.device("meta"):
        encoder = ResNetEncoder(arch, in_channels=3)
    assert n_params(encoder) == total - fc


def test_resnet_encoder_has_torchvisions_names():
    """Spelled out from torchvision's ``resnet.py``: the stem, BasicBlock's conv1/bn1/conv2/bn2,
    and the projection shortcut ``downsample.0``/``.1`` on the first block of layers 2 to 4."""
    names = {"conv1.weight", *(f"bn1.{s}" for s in ("weight", "bias", "running_mean",
                                                     "running_var", "num_batches_tracked"))}
    for layer, blocks in zip((1, 2, 3, 4), (2, 2, 2, 2)):
        for b in range(blocks):
            prefix = f"layer{layer}.{b}."
            names |= {prefix + "conv1.weight", prefix + "conv2.weight"}
            for bn in ("bn1", "bn2") + (("downsample.1",) if b == 0 and layer > 1 else ()):
                names |= {f"{prefix}{bn}.{s}" for s in ("weight", "bias", "running_mean",
                                                        "running_var", "num_batches_tracked")}
            if b == 0 and layer > 1:
                names.add(prefix + "downsample.0.weight")
    with torch.device("meta"):
        assert set(ResNetEncoder("resnet18").state_dict()) == names


def smp_unet_params(encoder: int, channels: list[int], classes: int,
                    decoder: tuple[int, ...] = (256, 128, 64, 32, 16)) -> int:
    """segmentation_models_pytorch's ``Unet`` counted by hand from its code (``UnetDecoder``:
    five ``DecoderBlock`` of nearest x2 upsampling, concatenation with the encoder features of
    that size, and two 3x3 conv + batch norm + ReLU without conv bias; ``SegmentationHead``: a
    3x3 conv with bias). ``channels`` are the encoder's outputs at 1/2 ... 1/32."""
    ins = [channels[4], *decoder[:-1]]
    skips = [channels[3], channels[2], channels[1], channels[0], 0]
    total = encoder
    for cin, skip, out in zip(ins, skips, decoder):
        total += hand_double(cin + skip, out)
    return total + hand_conv(decoder[-1], classes, 3)


def test_smp_resnet34_unet_has_its_documented_size():
    """smp's Unet("resnet34", classes=1) has 24,436,369 parameters by the count above; its
    model files on the Hugging Face hub (qubvel-hf/unet-with-metadata) are listed as "24.5M
    params", which counts every tensor of the file: the parameters and batch norm's running
    statistics (2 per channel) and counters."""
    encoder = TORCHVISION_PARAMS["resnet34"][0] - TORCHVISION_PARAMS["resnet34"][1]
    params = smp_unet_params(encoder, [64, 64, 128, 256, 512], 1)
    assert params == 24_436_369
    model = shapes_only(tiny("resnet34", width=16, up="nearest", in_channels=3, num_classes=1))
    stats = sum(t.numel() for k, t in model.state_dict().items() if "running" in k)
    assert round((params + stats) / 1e5) == 245


@pytest.mark.parametrize("arch,channels", [("resnet18", [64, 64, 128, 256, 512]),
                                           ("resnet34", [64, 64, 128, 256, 512]),
                                           ("resnet50", [64, 256, 512, 1024, 2048])])
@pytest.mark.parametrize("classes", [1, 5])
def test_resnet_unet_is_smps_unet_but_for_a_1x1_head(arch: str, channels: list[int],
                                                      classes: int):
    """With smp's upsampling (nearest) and norm (batch), the network is smp's Unet with a 1x1
    head where smp has a 3x3 one: 8 * 16 * classes weights fewer."""
    encoder = TORCHVISION_PARAMS[arch][0] - TORCHVISION_PARAMS[arch][1]
    model = shapes_only(tiny(arch, width=16, up="nearest", in_channels=3, num_classes=classes))
    assert n_params(model) == smp_unet_params(encoder, channels, classes) - 8 * 16 * classes
    transposed = shapes_only(tiny(arch, width=16, in_channels=3, num_classes=classes))
    ups = sum(hand_conv(c, c, 2) for c in [channels[4], 256, 128, 64, 32])
    assert n_params(transposed) == n_params(model) + ups


@pytest.mark.parametrize("cfg,fragment", [
    (tiny("residual", padding="valid"), "pads inside"),
    (tiny("resnet34", padding="valid"), "pads inside"),
    (tiny("unet", prune_level=1), "only --arch nested"),
    (tiny("nested", depth=3, prune_level=4), "levels 1 to 3"),
    (tiny("nested", depth=3, prune_level=2), "--deep-supervision on"),
    (tiny("attention", depth=0), "at least 1"),
])
def test_options_a_variant_cannot_take_are_user_errors(cfg: ModelConfig, fragment: str):
    with pytest.raises(UserError, match=fragment):
        build_model(cfg)


def test_the_resnets_carry_their_own_depth_and_width():
    cfg = arch_config(ModelConfig(arch="resnet50"))
    assert (cfg.depth, cfg.width, cfg.padding) == (5, 16, "same")
    model = shapes_only(ModelConfig(arch="resnet50", num_classes=4))
    assert isinstance(model, SegmentationNet) and model.config == cfg.__class__(
        **{**cfg.__dict__, "num_classes": 4})


def test_a_model_config_written_before_the_variants_still_loads():
    """Model cards written before ``encoder_blocks``, ``deep_supervision`` and ``prune_level``
    existed lack them: they read as the plain U-Net they describe."""
    from unetseg.config import from_dict

    old = {"in_channels": 1, "num_classes": 2, "depth": 2, "width": 4, "padding": "same",
           "up": "transpose", "norm": "instance", "dropout": 0.0, "arch": "unet",
           "top_width": None}
    cfg = from_dict(ModelConfig, old)
    assert (cfg.deep_supervision, cfg.prune_level) == (False, None)
    model = shapes_only(cfg)
    assert isinstance(model, UNet) and not len(model.aux_heads)
