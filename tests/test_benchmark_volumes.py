"""The volume benchmarks' own logic (``benchmarks/speed3d.py``, ``benchmarks/volumes_isbi.py``):
the z split of the ISBI stack, MONAI's sliding window on unetseg's network against unetseg's,
the memory arithmetic, and both scripts' smoke runs end to end."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
speed3d = importlib.import_module("speed3d")  # a broken benchmark fails here, never skips
volumes_isbi = importlib.import_module("volumes_isbi")


def _mask(z: int, side: int = 32) -> np.ndarray:
    """Slice ``z``'s mask: cells (255) crossed by a membrane (0) along row and column ``z``."""
    mask = np.full((side, side), 255, np.uint8)
    mask[z], mask[:, z] = 0, 0
    return mask


def _stack(root: Path, side: int = 32) -> Path:
    """30 slices ``00.png`` .. ``29.png``: images whose pixels all hold 8 x the slice index,
    masks :func:`_mask`."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for z in range(30):
        image = np.full((side, side), 8 * z, np.uint8)
        Image.fromarray(image).save(root / "images" / f"{z:02d}.png")
        Image.fromarray(_mask(z, side)).save(root / "masks" / f"{z:02d}.png")
    return root


def test_the_split_keeps_contiguous_blocks_of_slices(tmp_path: Path):
    split = volumes_isbi.build_split(_stack(tmp_path / "isbi"), tmp_path / "out", crop=24)
    assert split["val_stems"] == ("20", "21", "22", "23", "24")
    assert split["blocks"]["test"] == ["25", "26", "27", "28", "29"]
    assert sorted(p.stem for p in (split["2d"] / "images").iterdir()) == [
        f"{z:02d}" for z in range(25)]
    for folder, name, first, count in (("3d", "train", 0, 20), ("3d", "val", 20, 5),
                                       ("test", "test", 25, 5)):
        image = np.load(split[folder] / "images" / f"{name}.npy")
        mask = np.load(split[folder] / "masks" / f"{name}.npy")
        assert image.shape == mask.shape == (count, 24, 24) and image.dtype == np.uint8
        np.testing.assert_array_equal(image[:, 0, 0], 8 * np.arange(first, first + count))
        np.testing.assert_array_equal(mask, [_mask(z)[:24, :24] for z in range(first,
                                                                               first + count)])
    png = np.asarray(Image.open(split["2d"] / "masks" / "23.png"))
    np.testing.assert_array_equal(png, np.load(split["3d"] / "masks" / "val.npy")[3])


def test_the_split_of_the_shared_stack(tmp_path: Path, isbi_root: Path):
    split = volumes_isbi.build_split(isbi_root, tmp_path / "out")
    test = np.load(split["test"] / "images" / "test.npy")
    assert test.shape == (5, 512, 512)
    np.testing.assert_array_equal(test[2], np.asarray(Image.open(isbi_root / "images" / "27.png")))
    assert set(np.unique(np.load(split["3d"] / "masks" / "train.npy"))) == {0, 255}


def test_the_3d_patch_is_the_one_fit_volumes_plans():
    assert volumes_isbi.volume_patch((5, 512, 512), 4) == (4, 64, 64)  # multiple (2, 16, 16)
    assert volumes_isbi.volume_patch((5, 64, 64), 2) == (5, 64, 64)  # z never pooled


def test_monai_on_unetseg_network_sums_the_same_windows(one_torch_thread):
    pytest.importorskip("monai")
    from unetseg.infer.volume import gaussian_weight_nd
    from unetseg.model import UNet

    torch.manual_seed(0)
    model = UNet(1, 2, width=2, depth=2, spatial_dims=3).eval()
    volume = speed3d.random_volume(24)  # windows of 16 at 0 and 8 along each axis
    ours = speed3d.unetseg_volume_logits(model, volume, 16, 0.5, 2)
    assert speed3d.same_windows((24, 24, 24), 16, 0.5)
    same_weights = speed3d.monai_volume_logits(model, volume, 16, 0.5, 2,
                                               weight=gaussian_weight_nd((16, 16, 16)))
    torch.testing.assert_close(same_weights, ours, rtol=1e-5, atol=1e-5)
    theirs = speed3d.monai_volume_logits(model, volume, 16, 0.5, 2)  # MONAI's own Gaussian
    assert theirs.shape == ours.shape == (2, 24, 24, 24)
    gap = float((theirs - ours).abs().max())
    assert 0 < gap < 0.05 * float(ours.abs().max())
    assert float((theirs.argmax(0) != ours.argmax(0)).float().mean()) < 0.01


def test_window_placement_agrees_only_where_the_stride_divides():
    pytest.importorskip("monai")
    assert speed3d.same_windows((256, 256, 256), 64, 0.25)  # 0, 48, ..., 192 in both
    assert not speed3d.same_windows((256, 256, 256), 96, 0.25)  # 0, 53, 107, 160 / 0, 72, ...
    assert not speed3d.same_windows((30, 30, 30), 16, 0.5)


def test_logit_comparison_against_the_whole_arrays(tmp_path: Path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    b = a + rng.normal(scale=0.3, size=a.shape).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    got = speed3d.compare_logits(tmp_path / "a.npy", tmp_path / "b.npy", chunk=2)
    assert got["max_abs_diff"] == pytest.approx(float(np.abs(a - b).max()))
    assert got["labels_differ"] == pytest.approx(float((a.argmax(0) != b.argmax(0)).mean()))


def test_the_slab_is_one_window_depth_and_a_stride():
    # roi 64 at overlap 0.25: stride 48; logits (2 classes) and weights of 112 slices, 64 of input
    assert speed3d.slab_mib(100, 64, 0.25) == pytest.approx(100 * 100 * 4 * (112 * 3 + 64)
                                                            / 2**20)


def test_the_streamed_volume_is_written_in_chunks(tmp_path: Path):
    path = speed3d.write_stream_volume(tmp_path / "v.npy", 7, 5, chunk=3)
    volume = np.load(path)
    assert volume.shape == (7, 5, 5) and volume.dtype == np.uint8 and volume.std() > 0


def test_a_measurement_runs_in_a_process_of_its_own():
    job = {"kind": "train", "net": "unetseg", "width": 2, "depth": 2, "patch": 16, "batch": 1,
           "reps": 1, "warmup": 0, "threads": 1}
    row = speed3d.run_child(job, threads=1)
    assert row["name"] == "unetseg" and row["params"] == 5434 and row["s_per_step"] > 0
    assert row["peak_rss_mib"] > 50  # the child's own peak: torch alone takes more


def test_a_failed_contender_keeps_the_others_figures():
    settings = {"cpu_count": 2, "threads": 1, "smoke": False, "batch": 2, "patch": 64,
                "width": 16, "depth": 4}
    rows = [{"name": "unetseg", "params": 10, "s_per_step": 2.0, "util": 1.9,
             "peak_rss_mib": 900.0},
            {"name": "monai-unet", "params": 12, "s_per_step": 3.0, "util": 1.8,
             "peak_rss_mib": 1000.0},
            {"name": "monai-basicunet", "error": "RuntimeError: out of memory"}]
    text = speed3d.report({"settings": settings, "train": rows})
    assert "| monai-unet | 12 | 3.000 | 1.50x | 1.80 | 1000 |" in text
    assert "| monai-basicunet | failed: RuntimeError: out of memory |" in text


def test_speed3d_smoke_runs_every_part_and_writes_its_table(tmp_path: Path, one_torch_thread,
                                                            monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("monai")
    # every contender in this process (the test above starts one apart): seconds, not minutes
    monkeypatch.setattr(speed3d, "run_child",
                        lambda job, threads: speed3d.CHILDREN[job["kind"]](job))
    assert speed3d.main(["--smoke", "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["name"] for r in results["train"]] == list(speed3d.NETWORKS)
    assert all("error" not in r for r in [*results["train"], *results["window"]["rows"],
                                           results["stream"]])
    assert results["window"]["same_windows"] and results["window"]["labels_differ"] < 0.01
    assert results["stream"]["shape"] == [64, 32, 32]
    text = (tmp_path / "out" / "results.md").read_text()
    assert "## (a) Training step" in text and "| monai-basicunet |" in text
    assert "## (c) Streamed prediction" in text and "SMOKE" in text


def test_volumes_isbi_smoke_trains_both_and_scores_the_test_block(tmp_path: Path,
                                                                   one_torch_thread):
    data = _stack(tmp_path / "isbi")
    assert volumes_isbi.main(["--smoke", "--data", str(data), "--out", str(tmp_path / "o")]) == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == ["2d", "3d"]
    for row in results["rows"]:
        assert 0 <= row["membrane_iou"] <= row["membrane_dice"] <= 1
        assert not math.isnan(row["mean_iou"])
    assert results["rows"][1]["tile"] == [5, 32, 32]
    config = json.loads((tmp_path / "o" / "runs" / "seed-0" / "2d" / "config.json").read_text())
    assert config["val_stems"] == ["20", "21", "22", "23", "24"]
    assert "| 3d | 0 |" in (tmp_path / "o" / "results.md").read_text()
