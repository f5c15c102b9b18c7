"""`unetseg predict` on volumes: a 3D model's sliding window and a 2D model slice by slice,
written on the input's voxels (spacing, NIfTI affine), with the orthogonal-view picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unetseg.api import predict
from unetseg.cli import main
from unetseg.data.classes import ClassTable
from unetseg.data.normalize import ChannelStats
from unetseg.data.volumes import read_volume_mask
from unetseg.infer.engine import ImagePredictor
from unetseg.infer.volume import normalize_volume, sliding_window_volume_logits
from unetseg.model import UNet
from unetseg.modelfile import ModelCard, save_model

nib = pytest.importorskip("nibabel")
STATS = ChannelStats((0.4,), (0.2,))
CLASSES = ClassTable.from_values((0, 255))


def _model_file(tmp_path: Path, dims: int) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(dims)
    net = UNet(1, 2, depth=2, width=4, spatial_dims=dims).eval()
    path = tmp_path / f"model{dims}d.safetensors"
    save_model(path, net, ModelCard(net.config, CLASSES, STATS))
    return path, net


def _stack(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = (np.random.default_rng(0).random((6, 20, 24)) * 255).astype(np.uint8)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "spacing": 3.0})
    return path, data


def test_a_3d_model_predicts_a_nifti_volume_onto_its_voxels(tmp_path: Path):
    model, net = _model_file(tmp_path, 3)
    xyz = (np.random.default_rng(1).random((16, 12, 5)) * 200).astype(np.int16)
    affine = np.diag([0.7, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(xyz, affine), str(tmp_path / "scan.nii.gz"))
    written = predict(model, tmp_path / "scan.nii.gz", tmp_path / "out", tile=8,
                      show_progress=False)
    assert written == [tmp_path / "out" / "scan.nii.gz"]
    result = nib.load(str(written[0]))
    np.testing.assert_allclose(result.affine, affine)
    # the reference: the same windows run through the network directly
    volume = torch.as_tensor(xyz.transpose(2, 1, 0)[None].astype(np.float32))
    with torch.no_grad():
        logits = sliding_window_volume_logits(net, normalize_volume(volume, STATS), (8, 8, 8))
    expected = np.array([0, 255])[logits.argmax(0).numpy()]
    assert np.array_equal(np.asanyarray(result.dataobj).transpose(2, 1, 0), expected)
    assert (tmp_path / "out" / "scan_views.png").is_file()


def test_a_2d_model_goes_slice_by_slice_through_a_stack(tmp_path: Path):
    model, net = _model_file(tmp_path, 2)
    stack, data = _stack(tmp_path)
    written = predict(model, stack, tmp_path / "out", volume=True, show_progress=False)
    labels = read_volume_mask(written[0])
    assert labels.spacing == pytest.approx((3.0, 0.5, 0.5))
    predictor = ImagePredictor(net, STATS)
    for z in (0, 5):
        ids = predictor.labels(data[None, z].astype(np.float32) / 255).numpy()
        assert np.array_equal(labels.array[z], np.array([0, 255])[ids])


def test_cli_predicts_volumes_with_a_given_spacing(tmp_path: Path, capsys):
    model, _ = _model_file(tmp_path, 3)
    np.save(tmp_path / "v.npy", np.random.default_rng(2).random((1, 4, 16, 16)))
    code = main(["-q", "predict", str(model), str(tmp_path / "v.npy"), "--out",
                 str(tmp_path / "out"), "--spacing", "2,1,1"])
    assert code == 0, capsys.readouterr().err
    assert np.load(tmp_path / "out" / "v.npy").shape == (4, 16, 16)
    assert main(["-q", "predict", str(model), str(tmp_path / "v.npy"), "--out",
                 str(tmp_path / "out"), "--spacing", "2,1"]) == 2
    assert "three positive sizes" in capsys.readouterr().err


def test_a_volume_with_other_channels_is_refused(tmp_path: Path, capsys):
    model, _ = _model_file(tmp_path, 3)
    np.save(tmp_path / "rgb.npy", np.zeros((3, 4, 8, 8), np.float32))
    assert main(["-q", "predict", str(model), str(tmp_path / "rgb.npy"), "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "3 channel(s); the model takes 1" in err and "Traceback" not in err


def test_evaluate_scores_each_volume_in_physical_units(tmp_path: Path, capsys):
    import json

    from unetseg.metrics_boundary import hd95, surface_dice

    model, _ = _model_file(tmp_path, 3)
    data = tmp_path / "set"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    rng = np.random.default_rng(4)
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    for stem in ("a", "b"):
        image = rng.random((12, 10, 4)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine), str(data / "images" / f"{stem}.nii.gz"))
        mask = (image > 0.5).astype(np.uint8) * 255
        nib.save(nib.Nifti1Image(mask, affine), str(data / "masks" / f"{stem}.nii.gz"))
    code = main(["-q", "evaluate", str(model), str(data), "--out", str(tmp_path / "ev"),
                 "--tolerance", "1.0"])
    assert code == 0, capsys.readouterr().err
    assert "2 volume(s): mean HD95" in capsys.readouterr().out
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    predict(model, data / "images", tmp_path / "pred", show_progress=False, overlays=False,
            volume=True)
    for row in report["per_volume"]:
        pred = (read_volume_mask(tmp_path / "pred" / f"{row['volume']}.nii.gz").array > 0)
        truth = read_volume_mask(data / "masks" / f"{row['volume']}.nii.gz").array > 0
        both, either = (pred & truth).sum(), (pred | truth).sum()
        assert row["iou/foreground"] == pytest.approx(both / either, abs=1e-6)
        ids_p, ids_t = pred.astype(int), truth.astype(int)
        spacing = (2.0, 0.5, 0.5)
        assert row["hd95/foreground"] == pytest.approx(hd95(ids_p, ids_t, 2, spacing=spacing)[1],
                                                abs=1e-6)
        assert row["nsd/foreground"] == pytest.approx(
            surface_dice(ids_p, ids_t, 2, 1.0, spacing=spacing)[1], abs=1e-6)
    assert report["summary"]["units"] == "the volumes' spacing"


def test_an_overlap_of_zero_means_no_overlap_and_none_the_default(tmp_path: Path, monkeypatch):
    import unetseg.infer.volume as volume_module

    model, net = _model_file(tmp_path, 3)
    voxels = (np.random.default_rng(2).random((16, 16, 16)) * 255).astype(np.uint8)
    np.save(tmp_path / "cube.npy", voxels)
    seen: list[float] = []
    real = volume_module.sliding_window_volume_logits
    streamed = volume_module.stream_volume_logits

    def spy(predictor, read, shape, window, *, overlap, **kwargs):
        seen.append(overlap)
        return streamed(predictor, read, shape, window, overlap=overlap, **kwargs)

    monkeypatch.setattr(volume_module, "stream_volume_logits", spy)
    (written,) = predict(model, tmp_path / "cube.npy", tmp_path / "zero", tile=8, overlap=0.0,
                         overlays=False, show_progress=False)
    predict(model, tmp_path / "cube.npy", tmp_path / "default", tile=8, overlays=False,
            show_progress=False)
    assert seen == [0.0, 0.5]
    # the reference: eight windows that do not overlap, run through the network directly
    x = normalize_volume(torch.as_tensor(voxels[None] / np.float32(255)), STATS)
    windows = []
    with torch.no_grad():
        logits = real(lambda b: windows.append(len(b)) or net(b), x, (8, 8, 8), overlap=0.0)
    assert sum(windows) == 8
    assert np.array_equal(np.load(written), np.array([0, 255])[logits.argmax(0).numpy()])
