"""Volumes over HTTP: NIfTI, NumPy and TIFF stacks come back in their own format, on their own
voxels, with the labels ``unetseg predict`` writes; limits are read from the header."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
testclient = pytest.importorskip("fastapi.testclient")
nib = pytest.importorskip("nibabel")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MAX_VOXELS = 4096
AFFINE = np.array([[0.0, -1.0, 0.0, 10.0],  # axes swapped and flipped, then shifted
                   [1.0, 0.0, 0.0, -4.0],
                   [0.0, 0.0, 3.0, 2.5],
                   [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-volumes")


@pytest.fixture(scope="module")
def model(folder: Path) -> Path:
    from shipping import tiny_volume_model

    return tiny_volume_model(folder / "tiny3d.safetensors")


@pytest.fixture(scope="module")
def client(model: Path):
    from unetseg.serve.app import create_app

    app = create_app(model, max_voxels=MAX_VOXELS, queue_size=2)
    with testclient.TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def voxels() -> np.ndarray:
    from shipping import sample_volume

    return sample_volume()  # (7, 13, 10) uint8: 910 voxels


def _expected(model: Path, source: Path, out: Path) -> np.ndarray:
    """The labels ``unetseg predict`` writes for ``source``, as (D, H, W)."""
    from unetseg.api import predict_volumes
    from unetseg.data.volumes import read_volume_mask

    (written,) = predict_volumes(model, [source], out, overlays=False, show_progress=False)
    return read_volume_mask(written).array


def _post(client, name: str, data: bytes, query: str = ""):
    return client.post(f"/predict{query}", files={"file": (name, data)})


def test_nifti_round_trip_keeps_the_affine_and_equals_the_command_line(
        client, model: Path, voxels: np.ndarray, tmp_path: Path) -> None:
    source = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(voxels.transpose(2, 1, 0).astype(np.int16), AFFINE), str(source))
    response = _post(client, source.name, source.read_bytes())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    assert 'filename="scan_labels.nii.gz"' in response.headers["content-disposition"]
    (tmp_path / "served.nii.gz").write_bytes(response.content)
    served = nib.load(str(tmp_path / "served.nii.gz"))
    np.testing.assert_allclose(served.affine, AFFINE)
    labels = np.asanyarray(served.dataobj).transpose(2, 1, 0)
    expected = _expected(model, source, tmp_path / "out")
    assert labels.shape == voxels.shape and np.array_equal(labels, expected)
    assert 0.1 < labels.mean() < 0.9  # both classes present: the comparison means something


def test_uncompressed_nifti_comes_back_uncompressed(client, voxels: np.ndarray,
                                                    tmp_path: Path) -> None:
    source = tmp_path / "scan.nii"
    nib.save(nib.Nifti1Image(voxels.transpose(2, 1, 0), AFFINE), str(source))
    response = _post(client, source.name, source.read_bytes())
    assert response.status_code == 200, response.text
    (tmp_path / "served.nii").write_bytes(response.content)
    assert not response.content.startswith(b"\x1f\x8b")
    np.testing.assert_allclose(nib.load(str(tmp_path / "served.nii")).affine, AFFINE)


def test_npy_volume(client, model: Path, voxels: np.ndarray, tmp_path: Path) -> None:
    source = tmp_path / "cube.npy"
    np.save(source, voxels[None])  # (C, D, H, W)
    response = _post(client, source.name, source.read_bytes())
    assert response.status_code == 200, response.text
    labels = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert np.array_equal(labels, _expected(model, source, tmp_path / "out"))


def test_tiff_stack_keeps_its_spacing(client, model: Path, voxels: np.ndarray,
                                      tmp_path: Path) -> None:
    from unetseg.data.volumes import read_volume_mask

    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, voxels, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "spacing": 3.0})
    response = _post(client, source.name, source.read_bytes())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/tiff"
    (tmp_path / "served.tif").write_bytes(response.content)
    served = read_volume_mask(tmp_path / "served.tif")
    np.testing.assert_allclose(served.spacing, (3.0, 0.5, 0.5))
    assert np.array_equal(served.array, _expected(model, source, tmp_path / "out"))


def test_json_counts_voxels(client, voxels: np.ndarray, tmp_path: Path) -> None:
    source = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(voxels.transpose(2, 1, 0), AFFINE), str(source))
    body = _post(client, source.name, source.read_bytes(), "?format=json").json()
    assert body["shape"] == list(voxels.shape)
    np.testing.assert_allclose(body["spacing"], (3.0, 1.0, 1.0))  # the affine's column norms
    served = _post(client, source.name, source.read_bytes())
    (tmp_path / "served.nii.gz").write_bytes(served.content)
    labels = np.asanyarray(nib.load(str(tmp_path / "served.nii.gz")).dataobj)
    counts = np.bincount(labels.ravel(), minlength=2)
    assert [c["voxels"] for c in body["classes"]] == counts.tolist()
    assert [c["name"] for c in body["classes"]] == ["background", "cell"]
    assert sum(c["fraction"] for c in body["classes"]) == pytest.approx(1.0)


def _npy_header_only(shape: tuple[int, ...]) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": "|u1", "fortran_order": False,
                                                  "shape": shape})
    return stream.getvalue() + b"\x00" * 64  # far fewer bytes than the header promises


def _nifti_header_only(shape: tuple[int, ...]) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    return gzip.compress(header.binaryblock + b"\x00" * 4, mtime=0)


BAD_VOLUMES = [
    ("big.npy", _npy_header_only((16, 32, 32)), 413, "16x32x32 voxels is more than the limit"),
    ("big.nii.gz", _nifti_header_only((40, 30, 20)), 413, "20x30x40 voxels"),
    ("cut.npy", _npy_header_only((4, 8, 8)), 400, "cannot read"),
    ("flat.npy", _npy_header_only((8, 8)), 400, "not a volume"),
    ("bad.nii.gz", b"\x1f\x8b" + b"\x00" * 30, 400, "cannot read the volume header"),
    ("notnifti.gz", gzip.compress(b"hello, not a scan" * 40, mtime=0), 400, "no NIfTI header"),
]


@pytest.mark.parametrize("name, payload, status, fragment",
                         [pytest.param(*case, id=case[0]) for case in BAD_VOLUMES])
def test_limits_from_the_header_and_damaged_files(client, name: str, payload: bytes,
                                                  status: int, fragment: str) -> None:
    response = _post(client, name, payload)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert fragment in detail and name in detail and "\n" not in detail


def test_truncated_nifti_is_a_400_naming_the_upload(client, voxels: np.ndarray,
                                                    tmp_path: Path) -> None:
    source = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(voxels.transpose(2, 1, 0), AFFINE), str(source))
    data = source.read_bytes()
    response = _post(client, "scan.nii.gz", data[: len(data) // 2])
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith("scan.nii.gz: cannot read") and "upload" not in detail.split(":")[0]


def test_images_and_wrong_formats_are_refused(client) -> None:
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(png, format="PNG")
    response = _post(client, "a.png", png.getvalue())
    assert response.status_code == 400 and "the served model is 3D" in response.json()["detail"]
    response = _post(client, "a.npy", _npy_header_only((4, 8, 8)), "?format=png")
    assert response.status_code == 400 and "format=png" in response.json()["detail"]


def test_a_2d_model_predicts_a_tiff_stack_slice_by_slice(voxels: np.ndarray,
                                                         tmp_path: Path) -> None:
    from shipping import tiny_model

    from unetseg.serve.app import create_app

    model = tiny_model(tmp_path / "tiny2d.safetensors")
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, voxels, imagej=True, metadata={"axes": "ZYX", "spacing": 3.0})
    with testclient.TestClient(create_app(model, max_voxels=MAX_VOXELS)) as client:
        response = _post(client, source.name, source.read_bytes(), "?volume=true")
        assert response.status_code == 200, response.text
        labels = tifffile.imread(io.BytesIO(response.content))
        assert np.array_equal(labels, _expected(model, source, tmp_path / "out"))
        assert set(np.unique(labels)) == {0, 255}
        png = io.BytesIO()
        tifffile.imwrite(png, voxels[0])
        response = _post(client, "one.tif", png.getvalue(), "?volume=true")
        assert response.status_code == 400 and "not a stack" in response.json()["detail"]


@pytest.mark.slow
def test_exported_3d_model_is_served_by_onnxruntime(client, model: Path, voxels: np.ndarray,
                                                    tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from unetseg.export import export_model
    from unetseg.serve.app import create_app

    exported = export_model(model, tmp_path / "tiny3d.onnx", "onnx", exporter="legacy").path
    source = tmp_path / "cube.npy"
    np.save(source, voxels)
    with testclient.TestClient(create_app(exported, max_voxels=MAX_VOXELS)) as onnx_client:
        assert onnx_client.get("/model").json()["backend"] == "onnxruntime"
        via_onnx = _post(onnx_client, source.name, source.read_bytes())
    assert via_onnx.status_code == 200, via_onnx.text
    via_torch = _post(client, source.name, source.read_bytes())
    onnx_labels = np.load(io.BytesIO(via_onnx.content))
    torch_labels = np.load(io.BytesIO(via_torch.content))
    assert np.mean(onnx_labels == torch_labels) > 0.999  # ties within fp32 rounding only
