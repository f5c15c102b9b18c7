"""The plan: its rules on made-up fingerprints, its JSON, ``train --plan`` and the flags over
it, and a model trained with per-image normalisation predicting like a hand-normalised input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from unetseg.cli import main
from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from unetseg.data.fingerprint import Fingerprint
from unetseg.train.autoplan import (
    BOTTLENECK,
    CONTEXT_PATCH,
    MAX_DEPTH,
    Choice,
    Plan,
    activation_bytes,
    depth_for,
    fixed_fields,
    plan_batch,
    plan_from_fingerprint,
    plan_geometry,
    plan_normalization,
)

CPU = torch.device("cpu")


def _fingerprint(*, min_side: int = 512, d90: float | None = 40.0, between: float = 0.05,
                 mean: float = 0.5, sd: float = 0.15, p995: float = 0.9, top: float = 1.0
                 ) -> Fingerprint:
    """A fingerprint with the numbers the rules read; the rest plausible."""
    side = {"min": min_side, "p5": min_side, "p50": min_side, "max": min_side}
    row = {"mean": mean, "sd": sd, "p0.5": 0.05, "p5": 0.2, "p50": mean, "p95": 0.8,
           "p99.5": p995, "min": 0.0, "max": top}
    diameter = None if d90 is None else {"min": 1.0, "p50": d90 / 2, "p90": d90,
                                         "max": d90 * 2}
    classes = [{"id": i, "value": i, "name": n, "pixels": p, "share": s, "images": 10,
                "components": {"count": 5, "area": None, "diameter": None}}
               for i, (n, p, s) in enumerate([("background", 900, 0.9), ("cell", 100, 0.1)])]
    return Fingerprint(
        data="made-up", images=10, channels=1, bit_depth={"uint8": 10},
        sizes={"height": side, "width": side, "min_side": side, "distinct": {}},
        pixel_size_um=None,
        intensity={"all": [row], "foreground": [row], "between_image_share": [between],
                   "image_mean": [None], "foreground_brighter": 1.0},
        classes=classes,
        objects={"count": 0 if d90 is None else 50, "area": None, "diameter": diameter})


# --------------------------------------------------------------------------- rules


def test_small_images_get_a_smaller_patch_and_a_shallower_network() -> None:
    patch, depth = plan_geometry(_fingerprint(min_side=512, d90=20))
    assert (patch.value, depth.value) == (CONTEXT_PATCH, 4)
    patch, depth = plan_geometry(_fingerprint(min_side=100, d90=20))
    assert patch.value == 96 and depth.value == 3  # 100 rounded down to a multiple of 8
    assert "smallest image side (100 px)" in patch.reason
    patch, depth = plan_geometry(_fingerprint(min_side=40, d90=5))
    assert patch.value == 32 and depth.value == 1
    for value, d in ((CONTEXT_PATCH, 4), (96, 3), (32, 1)):
        assert value % 2**d == 0 and value / 2**d <= BOTTLENECK


def test_large_objects_get_a_larger_patch() -> None:
    small, _ = plan_geometry(_fingerprint(min_side=2000, d90=30))
    large, depth = plan_geometry(_fingerprint(min_side=2000, d90=150))
    assert small.value == CONTEXT_PATCH
    assert large.value >= 3 * 150 and large.value % 2**depth.value == 0
    assert large.value == 480 and depth.value == MAX_DEPTH  # ceil(450 / 32) * 32
    assert "150 px" in large.reason
    capped, _ = plan_geometry(_fingerprint(min_side=300, d90=150))
    assert capped.value == 288


def test_given_patch_or_depth_are_kept_and_the_rest_planned_around_them() -> None:
    patch, depth = plan_geometry(_fingerprint(), patch=128)
    assert (patch.value, depth.value) == (128, 3) and "given" in patch.reason
    patch, depth = plan_geometry(_fingerprint(min_side=512, d90=20), depth=3)
    assert (patch.value, depth.value) == (256, 3) and "given" in depth.reason


def test_depth_pools_to_a_bottleneck_of_a_few_pixels() -> None:
    for patch in (16, 32, 48, 64, 100, 128, 256, 512, 4096):
        d = depth_for(patch)
        assert 1 <= d <= MAX_DEPTH
        assert patch / 2**d <= BOTTLENECK or d == MAX_DEPTH
        assert d == 1 or patch / 2 ** (d - 1) > BOTTLENECK


def test_normalisation_follows_the_intensities() -> None:
    assert plan_normalization(_fingerprint()).value == "dataset"
    mixed = plan_normalization(_fingerprint(between=0.9))
    assert mixed.value == "image" and "90%" in mixed.reason
    tail = plan_normalization(_fingerprint(mean=0.05, sd=0.02, p995=0.3))  # 12.5 sd
    assert tail.value == "percentile"
    hot = plan_normalization(_fingerprint(p995=0.1, top=1.0))  # hot pixels far beyond
    assert hot.value == "percentile"
    assert plan_normalization(_fingerprint(between=0.9, p995=0.1)).value == "image"


def test_cpu_batch_is_the_recipe_default_and_splits_over_processes() -> None:
    assert plan_batch(CPU, 256, 5, None).value == 4
    assert plan_batch(CPU, 256, 5, None, processes=3).value == 6


def test_gpu_batch_fits_the_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    per_sample = activation_bytes(64, 5, 256)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (per_sample * 13, 0))
    assert plan_batch(torch.device("cuda"), 256, 5, None).value == 6  # 13 * 0.5
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (per_sample, 0))
    assert plan_batch(torch.device("cuda"), 256, 5, None).value == 2  # at least 2
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (per_sample * 999, 0))
    assert plan_batch(torch.device("cuda"), 256, 5, None, processes=2).value == 32


def test_activation_estimate_bounds_what_a_training_step_keeps() -> None:
    """The estimate is at least the bytes autograd saves for the backward pass of a real
    U-Net, and not wildly more."""
    from unetseg.model import UNet

    for width, depth, patch in ((8, 2, 64), (4, 3, 96)):
        saved: list[torch.Tensor] = []
        net = UNet(1, 2, depth=depth, width=width)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t,  # noqa: B023
                                                      lambda t: t):
            net(torch.randn(1, 1, patch, patch)).sum()
        distinct = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved
                    if t.dim() == 4 and t.shape[0] == 1}  # activations, not weights
        measured = sum(distinct.values())
        estimate = activation_bytes(width, depth, patch)
        assert measured <= estimate <= 4 * measured, (measured, estimate)


# --------------------------------------------------------------------------- the plan file


def test_plan_json_round_trips_and_fixed_fields_are_given() -> None:
    cfg = RunConfig(data=DataConfig(patch_size=64))
    plan = plan_from_fingerprint(_fingerprint(between=0.8), cfg, CPU,
                                 fixed=fixed_fields(cfg))
    assert plan.choices["data.patch_size"] == Choice(64, "given (--patch-size)")
    assert plan.choices["data.normalization"].value == "image"
    assert all(c.reason for c in plan.choices.values())
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    applied = plan.apply(RunConfig())
    assert applied.data.normalization == "image" and applied.model.depth == 2
    with pytest.raises(ValueError, match="unknown planned fields"):
        Plan.from_dict({**plan.to_dict(), "plan": {"train.lr": {"value": 1, "reason": ""}}})


def test_fixed_fields_of_flags_config_files_and_presets(tmp_path: Path) -> None:
    from unetseg.cli import build_parser
    from unetseg.cli.train import fixed_from_args

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": {"depth": 3}, "train": {"lr": 0.01}}))
    args = build_parser().parse_args(["train", "d", "--out", "o", "--config", str(config),
                                      "--batch-size", "4"])
    assert fixed_from_args(args) >= {"model.depth", "train.batch_size", "train.lr"}
    args = build_parser().parse_args(["train", "d", "--out", "o", "--preset", "paper"])
    assert {"data.patch_size", "model.depth", "data.normalization"} <= fixed_from_args(args)
    args = build_parser().parse_args(["train", "d", "--out", "o"])
    assert fixed_from_args(args) == set()
    assert fixed_fields(RunConfig(model=ModelConfig(width=16))) == {"model.width"}


# --------------------------------------------------------------------------- end to end


def _mixed_data(root: Path, n: int = 6) -> Path:
    """Discs on dark and on light backgrounds (bright discs, then dark ones): a data set
    of two modalities."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for i in range(n):
        mask = np.zeros((64, 64), bool)
        for _ in range(3):
            cy, cx, r = rng.integers(8, 56, 2).tolist() + [int(rng.integers(4, 9))]
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        background, disc = (15, 90) if i % 2 == 0 else (220, 150)
        image = np.where(mask, disc, background) + rng.normal(0, 6, (64, 64))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            root / "images" / f"m{i}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"m{i}.png")
    return root


def _train(data: Path, out: Path, *flags: str) -> dict[str, Any]:
    code = main(["-q", "train", str(data), "--out", str(out), "--epochs", "1",
                 "--steps-per-epoch", "1", "--width", "4", *flags])
    assert code == 0
    return json.loads((out / "config.json").read_text())


@pytest.mark.slow
def test_plan_then_train_with_an_edited_plan_and_a_flag_over_it(tmp_path: Path,
                                                                 capsys) -> None:
    data = _mixed_data(tmp_path / "data")
    assert main(["-q", "plan", str(data), "--out", str(tmp_path / "p")]) == 0
    printed = capsys.readouterr().out
    assert "normalisation" in printed and "per-image z-score" in printed
    planned = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert planned["plan"]["data.normalization"]["value"] == "image"
    assert planned["plan"]["data.patch_size"]["value"] == 64  # the images' side
    assert (tmp_path / "p" / "fingerprint.json").is_file()

    # train with no plan flags: the same plan, written beside config.json
    manifest = _train(data, tmp_path / "auto")
    stored = json.loads((tmp_path / "auto" / "plan.json").read_text())
    assert manifest["plan"] == stored
    for key in ("data.patch_size", "model.depth", "data.normalization", "train.loss",
                "train.batch_size"):
        assert stored["plan"][key]["value"] == planned["plan"][key]["value"], key
    assert stored["plan"]["model.width"] == {"value": 4, "reason": "given (--width)"}
    assert manifest["stats"]["scheme"] == "image"
    assert (tmp_path / "auto" / "fingerprint.json").is_file()

    edited = json.loads((tmp_path / "p" / "plan.json").read_text())
    edited["plan"]["data.patch_size"]["value"] = 48
    edited["plan"]["data.normalization"]["value"] = "percentile"
    edited["plan"]["model.depth"]["value"] = 2
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    manifest = _train(data, tmp_path / "edited", "--plan", str(tmp_path / "edited.json"))
    run = manifest["run"]
    assert (run["data"]["patch_size"], run["data"]["normalization"], run["model"]["depth"]) \
        == (48, "percentile", 2)
    assert manifest["stats"]["scheme"] == "percentile" and "low" in manifest["stats"]

    manifest = _train(data, tmp_path / "flag", "--plan", str(tmp_path / "edited.json"),
                      "--patch-size", "32", "--normalization", "dataset")
    run = manifest["run"]
    assert (run["data"]["patch_size"], run["data"]["normalization"]) == (32, "dataset")
    assert manifest["plan"]["plan"]["data.patch_size"] == {"value": 32,
                                                           "reason": "given (--patch-size)"}
    assert "scheme" not in manifest["stats"]

    manifest = _train(data, tmp_path / "off", "--plan", "off")
    assert manifest["plan"] is None and manifest["run"]["data"]["patch_size"] == 256
    assert not (tmp_path / "off" / "plan.json").exists()


def test_a_bad_plan_file_is_one_line(tmp_path: Path, capsys) -> None:
    data = _mixed_data(tmp_path / "data", 2)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "unetseg-plan", "plan": {
        "data.patch_size": {"value": -3, "reason": ""}}}))
    assert main(["-q", "train", str(data), "--out", str(tmp_path / "o"), "--plan",
                 str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "patch_size" in err and len(err.strip().splitlines()) == 1
    assert main(["-q", "train", str(data), "--out", str(tmp_path / "o"), "--plan",
                 str(tmp_path / "missing.json")]) == 2
    assert "unetseg plan" in capsys.readouterr().err


@pytest.mark.slow
def test_a_model_trained_per_image_predicts_like_a_hand_normalised_input(tmp_path: Path
                                                                          ) -> None:
    import tifffile

    from unetseg.api import predict
    from unetseg.data.io import read_image
    from unetseg.modelfile import load_model
    from unetseg.train.fit import fit

    data = _mixed_data(tmp_path / "data", 4)
    cfg = RunConfig(model=ModelConfig(width=4, depth=2, norm="none"),
                    data=DataConfig(patch_size=32, normalization="image"),
                    train=TrainConfig(epochs=1, steps_per_epoch=2, loss="ce"))
    result = fit(data, tmp_path / "run", cfg, show_progress=False, plan=None)
    model, card = load_model(result.last_model)
    assert card.stats.scheme == "image"
    image_path = data / "images" / "m1.png"
    predict(result.last_model, [image_path], tmp_path / "pred", probabilities=True,
            overlays=False, show_progress=False)
    probs = tifffile.imread(tmp_path / "pred" / "m1_probs.tif")
    x = read_image(image_path).astype(np.float64)  # (1, 64, 64), one tile
    by_hand = (x - x.mean()) / x.std()
    by_dataset = (x - card.stats.mean[0]) / card.stats.std[0]
    with torch.inference_mode():
        expected = torch.softmax(model(torch.from_numpy(by_hand[None]).float()), 1)[0]
        other = torch.softmax(model(torch.from_numpy(by_dataset[None]).float()), 1)[0]
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-5)
    assert np.abs(probs - other.numpy()).max() > 1e-3  # the scheme made a difference


def _every(root: Path, step: int, tmp_path: Path) -> Path:
    """A data folder of links to every ``step``-th pair of ``root`` (by stem)."""
    out = tmp_path / root.name
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True)
        for path in sorted((root / sub).iterdir())[::step]:
            (out / sub / path.name).symlink_to(path)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("name", "step", "scheme"), [("dsb2018", 6, "image"),
                                                      ("isbi2012/train", 3, "dataset")])
def test_real_data_get_the_normalisation_that_suits_them(name: str, step: int, scheme: str,
                                                         tmp_path: Path) -> None:
    """DSB 2018 mixes dark-background fluorescence with light-background brightfield and
    histology: per-image z-scores; ISBI 2012's sections share one scale: per-dataset."""
    from helpers import SHARED_DATA

    from unetseg.data.dataset import load_data

    root = SHARED_DATA / name
    if not (root / "images").is_dir():
        pytest.skip(f"../shared/data/{name} is not present")
    loaded = load_data(_every(root, step, tmp_path), fingerprint=True)
    assert loaded.fingerprint is not None
    assert plan_normalization(loaded.fingerprint).value == scheme
