"""``--backend auto`` for model files: the faster backend, measured once per machine and model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unetseg.config import PredictConfig
from unetseg.data.io import read_image
from unetseg.export import fastest
from unetseg.export.fastest import BackendTimings, load_fastest
from unetseg.infer.backends import OnnxImagePredictor
from unetseg.infer.engine import ImagePredictor
from unetseg.infer.predict import logits_to_labels

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

NEAR_TIE = 1e-4
"""Largest top-2 logit gap at which the two backends may disagree (their logits differ by
fp32 rounding, a few 1e-6)."""


@pytest.fixture(autouse=True)
def onnxruntime_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo the suite's default of a machine without ONNX Runtime."""
    monkeypatch.setattr(fastest, "onnxruntime_installed", lambda: True)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shipping import tiny_model

    return tiny_model(tmp_path_factory.mktemp("fastest") / "tiny.safetensors")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module, so each model is exported once."""
    return tmp_path_factory.mktemp("cache")


class FakeMeasure:
    """Timings given in advance, and how often they were asked for."""

    def __init__(self, torch_s: float, onnxruntime_s: float):
        self.torch_s, self.onnxruntime_s = torch_s, onnxruntime_s
        self.calls = 0

    def __call__(self, torch_predictor, onnx_predictor, window, dtype) -> BackendTimings:
        self.calls += 1
        return BackendTimings(self.torch_s, self.onnxruntime_s, "fp32", window)


FP32 = PredictConfig(precision="fp32")


def test_the_faster_backend_is_picked(model: Path, cache: Path) -> None:
    (cache / "backends.json").unlink(missing_ok=True)
    loaded = load_fastest(model, FP32, measure_backends=FakeMeasure(2.0, 1.0), folder=cache)
    assert loaded.backend == "onnxruntime" and isinstance(loaded.predictor, OnnxImagePredictor)
    assert "ONNX Runtime 1000 ms" in loaded.reason
    (cache / "backends.json").unlink()
    loaded = load_fastest(model, FP32, measure_backends=FakeMeasure(1.0, 2.0), folder=cache)
    assert loaded.backend == "torch" and isinstance(loaded.predictor, ImagePredictor)


def test_a_second_load_reads_the_cache_and_a_changed_model_is_timed_again(
        model: Path, cache: Path, tmp_path: Path) -> None:
    from shipping import tiny_model

    (cache / "backends.json").unlink(missing_ok=True)
    measure = FakeMeasure(2.0, 1.0)
    first = load_fastest(model, FP32, measure_backends=measure, folder=cache)
    second = load_fastest(model, FP32, measure_backends=measure, folder=cache)
    assert measure.calls == 1 and first.backend == second.backend == "onnxruntime"
    other = tiny_model(tmp_path / "tiny.safetensors")
    assert load_fastest(other, FP32, measure_backends=measure, folder=cache).backend
    assert measure.calls == 1  # the same bytes elsewhere: the same model
    tiny_model(other, seed=1)  # the file changes
    load_fastest(other, FP32, measure_backends=measure, folder=cache)
    assert measure.calls == 2
    load_fastest(model, PredictConfig(precision="fp32", tile=256), measure_backends=measure,
                 folder=cache)
    assert measure.calls == 3  # another window shape


def test_a_forced_backend_is_not_timed(model: Path, cache: Path) -> None:
    never = FakeMeasure(1.0, 1.0)
    loaded = load_fastest(model, PredictConfig(backend="torch"), measure_backends=never,
                          folder=cache)
    assert loaded.backend == "torch" and loaded.reason == "--backend torch"
    loaded = load_fastest(model, PredictConfig(backend="onnxruntime"), measure_backends=never,
                          folder=cache)
    assert loaded.backend == "onnxruntime" and isinstance(loaded.predictor, OnnxImagePredictor)
    loaded = load_fastest(model, PredictConfig(tta="flip"), measure_backends=never,
                          folder=cache)
    assert loaded.backend == "torch" and "test-time augmentation" in loaded.reason
    assert never.calls == 0


def test_the_backends_disagree_only_at_near_ties(model: Path, cache: Path) -> None:
    from shipping import sample_images

    (cache / "backends.json").unlink(missing_ok=True)
    onnx = load_fastest(model, FP32, measure_backends=FakeMeasure(2.0, 1.0), folder=cache)
    torch_predictor = load_fastest(model, FP32.__class__(backend="torch", precision="fp32"),
                                   folder=cache).predictor
    image = read_image(sample_images()[0])
    reference = torch_predictor.logits(image)
    labels = logits_to_labels(onnx.predictor.logits(image))
    differ = labels != logits_to_labels(reference)
    top2 = reference.topk(2, dim=0).values
    gap = top2[0] - top2[1]
    assert differ.sum() <= 0.001 * differ.numel()
    assert bool((gap[differ] < NEAR_TIE).all()), gap[differ].max()
    assert onnx.predictor.tiling(*image.shape[1:]) == torch_predictor.tiling(*image.shape[1:])


def test_the_real_measurement_times_both_backends(model: Path, cache: Path) -> None:
    (cache / "backends.json").unlink(missing_ok=True)
    loaded = load_fastest(model, PredictConfig(precision="fp32", tile=64), folder=cache)
    (key,) = json.loads((cache / "backends.json").read_text())
    timings = fastest.read_cached(key, cache)
    assert timings is not None and timings.torch_s > 0 and timings.onnxruntime_s > 0
    assert timings.window == (1, 1, 64, 64)
    assert loaded.backend == timings.faster


def test_a_bf16_check_is_made_once_per_machine_and_model(model: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    import torch

    from unetseg.infer import engine, precision
    from unetseg.infer.load import load_predictor

    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: "avx512_bf16")
    checks: list[int] = []

    def check(*args, **kwargs):
        checks.append(1)
        return precision.bf16("agreed on 100 % of the sample")

    monkeypatch.setattr(engine, "check_bf16", check)
    image = torch.rand(1, 40, 48)
    first, _ = load_predictor(model, precision="auto", device="cpu")
    fastest.remember_precision(first, "hash", tmp_path)
    assert first.choose_precision(image).dtype == torch.bfloat16 and len(checks) == 1
    stored = json.loads((tmp_path / "precision.json").read_text())
    assert [e["precision"] for e in stored.values()] == ["bf16"]
    again, _ = load_predictor(model, precision="auto", device="cpu")
    fastest.remember_precision(again, "hash", tmp_path)
    assert again.choose_precision(image).dtype == torch.bfloat16 and len(checks) == 1
    other, _ = load_predictor(model, precision="auto", device="cpu")
    fastest.remember_precision(other, "another model", tmp_path)
    other.choose_precision(image)
    assert len(checks) == 2  # another model file is checked afresh
