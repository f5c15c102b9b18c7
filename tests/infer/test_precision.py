"""The number format of prediction: the bf16 agreement check, its fallbacks and forcing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from unetseg.cli import build_parser
from unetseg.cli.flags import predict_config_from_args
from unetseg.config import ModelConfig
from unetseg.data.classes import ClassTable
from unetseg.data.normalize import ChannelStats
from unetseg.errors import UserError
from unetseg.infer import precision as prec
from unetseg.infer.engine import ImagePredictor
from unetseg.infer.load import load_image_predictor, load_predictor
from unetseg.model import UNet
from unetseg.modelfile import ModelCard, save_model
from unetseg.runtime import cpu_flags, cpu_native_bf16

STATS = ChannelStats((0.0,), (1.0,))


def tiny_predictor(precision: str) -> ImagePredictor:
    torch.manual_seed(0)
    return ImagePredictor(UNet(1, 3, depth=2, width=4).eval(), STATS, precision=precision)


def conv_output_dtypes(predictor: ImagePredictor) -> list[torch.dtype]:
    """Record the dtype every Conv2d of the predictor's network returns."""
    seen: list[torch.dtype] = []
    for module in predictor.model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def fake_cpu(monkeypatch: pytest.MonkeyPatch, native: str | None) -> None:
    monkeypatch.setattr(prec, "cpu_native_bf16", lambda: native)


IMAGE = np.random.default_rng(0).random((1, 40, 48)).astype(np.float32)


# ------------------------------------------------------------------- the check, by hand


def hand_mean_iou(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean over the classes in either labelling of |A and B| / |A or B|, with numpy sets."""
    classes = sorted(set(reference.ravel()) | set(other.ravel()))
    ious = [np.logical_and(reference == k, other == k).sum()
            / np.logical_or(reference == k, other == k).sum() for k in classes]
    return float(np.mean(ious))


def labellings(changed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """100 x 100 labels of 3 classes (stripes) and a copy with ``changed`` pixels of class 0
    turned into class 2."""
    reference = np.repeat(np.arange(100)[None] // 34, 100, 0)
    other = reference.copy()
    rows, cols = np.nonzero(reference == 0)
    other[rows[:changed], cols[:changed]] = 2
    return torch.from_numpy(reference), torch.from_numpy(other)


@pytest.mark.parametrize("changed", [0, 3, 10, 11, 60])
def test_agreement_and_mean_iou_match_a_hand_computation(changed: int) -> None:
    reference, other = labellings(changed)
    assert prec.label_agreement(reference, other) == pytest.approx(1 - changed / 10_000)
    assert prec.labels_mean_iou(reference, other, 3) == pytest.approx(
        hand_mean_iou(reference.numpy(), other.numpy()))


@pytest.mark.parametrize(("changed", "kept"), [(0, "bf16"), (3, "bf16"), (10, "fp32"),
                                               (60, "fp32")])
def test_the_check_keeps_bf16_only_within_both_bounds(changed: int, kept: str) -> None:
    reference, other = labellings(changed)
    agreement = 1 - changed / 10_000
    miou = hand_mean_iou(reference.numpy(), other.numpy())
    expected = "bf16" if agreement >= 0.999 and miou >= 0.998 else "fp32"
    assert expected == kept  # 10 changed pixels: 99.9 % agree but the mean IoU is 0.9980-
    assert prec.agreement_check(reference, other, 3).name == kept


def test_a_single_logit_model_counts_two_classes() -> None:
    reference, other = torch.zeros(10, 10, dtype=torch.long), torch.zeros(10, 10, dtype=torch.long)
    other[0, 0] = 1
    assert prec.labels_mean_iou(reference, other, 1) == pytest.approx(
        hand_mean_iou(reference.numpy(), other.numpy()))


# ------------------------------------------------------------------- detection


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert cpu_native_bf16(cpu_flags(str(info))) == "avx512_bf16"
    assert cpu_native_bf16(frozenset({"amx_bf16", "amx_tile"})) == "amx_bf16"
    assert cpu_native_bf16(frozenset({"avx512f", "avx2"})) is None
    assert cpu_flags(str(tmp_path / "absent")) == frozenset()


# ------------------------------------------------------------------- the choice


def test_a_cpu_without_native_bf16_keeps_fp32_and_says_why(monkeypatch, one_torch_thread
                                                           ) -> None:
    fake_cpu(monkeypatch, None)
    p = tiny_predictor("auto")
    monkeypatch.setattr(p, "_labels_in", lambda *_: pytest.fail("no check without bf16"))
    seen = conv_output_dtypes(p)
    p.logits(IMAGE)
    assert p.choice is not None and p.choice.name == "fp32"
    assert "no native bf16" in p.choice.reason
    assert set(seen) == {torch.float32}


def test_a_failed_check_keeps_fp32_and_logs_the_reason(monkeypatch, caplog, one_torch_thread
                                                       ) -> None:
    fake_cpu(monkeypatch, "avx512_bf16")
    p = tiny_predictor("auto")

    def labels_in(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        labels = torch.zeros(x.shape[-2:], dtype=torch.long)
        if dtype is not None:
            labels[:5] = 1  # bf16 disagrees on 5 rows of 40
        return labels

    monkeypatch.setattr(p, "_labels_in", labels_in)
    seen = conv_output_dtypes(p)
    with caplog.at_level(logging.WARNING, logger="unetseg.infer.precision"):
        p.logits(IMAGE)
    assert p.choice is not None and p.choice.name == "fp32"
    assert "predicting in fp32" in caplog.text and "agree with fp32 on 87.5000%" in caplog.text
    assert set(seen) == {torch.float32}


def test_auto_on_a_bf16_cpu_runs_the_network_in_bf16_after_one_check(monkeypatch,
                                                                     one_torch_thread) -> None:
    fake_cpu(monkeypatch, "avx512_bf16")
    monkeypatch.setattr(prec, "MIN_LABEL_AGREEMENT", 0.0)  # a random tiny net has near-ties
    monkeypatch.setattr(prec, "MIN_MEAN_IOU", 0.0)
    p = tiny_predictor("auto")
    checks: list[torch.dtype | None] = []
    labels_in = p._labels_in

    def counted(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        checks.append(dtype)
        return labels_in(x, dtype)

    monkeypatch.setattr(p, "_labels_in", counted)
    seen = conv_output_dtypes(p)
    p.logits(IMAGE)
    assert p.choice is not None and p.choice.name == "bf16"
    assert checks == [None, torch.bfloat16]  # the check: one fp32 and one bf16 pass
    seen.clear()
    logits = p.logits(IMAGE)
    assert checks == [None, torch.bfloat16]  # not repeated for the next image
    assert seen and set(seen) == {torch.bfloat16}
    assert logits.dtype == torch.float32


def test_bf16_can_be_forced_without_a_check(monkeypatch, one_torch_thread) -> None:
    fake_cpu(monkeypatch, None)  # forcing wins even where bf16 would be emulated
    p = tiny_predictor("bf16")
    monkeypatch.setattr(p, "_labels_in", lambda *_: pytest.fail("no check when forced"))
    seen = conv_output_dtypes(p)
    p.logits(IMAGE)
    assert p.choice is not None and p.choice.reason == "--precision bf16"
    assert set(seen) == {torch.bfloat16}


def test_fp32_can_be_forced_on_a_bf16_cpu(monkeypatch, one_torch_thread) -> None:
    fake_cpu(monkeypatch, "amx_bf16")
    p = tiny_predictor("fp32")
    seen = conv_output_dtypes(p)
    p.logits(IMAGE)
    assert set(seen) == {torch.float32}


def test_the_flag_reaches_the_loaded_predictor(tmp_path: Path, monkeypatch) -> None:
    model = UNet(1, 2, depth=2, width=4).eval()
    card = ModelCard(ModelConfig(in_channels=1, num_classes=2, depth=2, width=4),
                     ClassTable.from_values((0, 255)), STATS)
    save_model(tmp_path / "m.safetensors", model, card)
    args = build_parser().parse_args(["predict", str(tmp_path / "m.safetensors"), "x.png",
                                      "--out", str(tmp_path), "--precision", "bf16"])
    config = predict_config_from_args(args)
    assert config.precision == "bf16"
    predictor, _ = load_predictor(tmp_path / "m.safetensors", config)
    assert predictor.precision == "bf16"
    with pytest.raises(UserError, match="--precision"):
        load_predictor(tmp_path / "m.safetensors", precision="fp16")
    with pytest.raises(UserError, match="onnxruntime backend runs fp32"):
        load_image_predictor(tmp_path / "m.safetensors",
                             config.__class__(backend="onnxruntime", precision="bf16"))
