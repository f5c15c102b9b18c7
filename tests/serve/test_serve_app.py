"""The HTTP API: predictions equal ``unetseg predict``'s, formats, limits and error statuses."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
testclient = pytest.importorskip("fastapi.testclient")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MAX_BYTES = 600_000
MAX_PIXELS = 520 * 520


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shipping import tiny_model

    return tiny_model(tmp_path_factory.mktemp("serve") / "tiny.safetensors")


@pytest.fixture(scope="module")
def client(model: Path):
    from unetseg.serve.app import create_app

    app = create_app(model, max_upload_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, queue_size=2,
                     tile=256)
    with testclient.TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def image_path() -> Path:
    from shipping import sample_images

    return sample_images()[7]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_health_and_model(client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["queue"]["capacity"] == 3
    info = client.get("/model").json()
    assert [c["name"] for c in info["classes"]] == ["membrane", "cell"]
    assert [c["value"] for c in info["classes"]] == [0, 255]
    assert info["in_channels"] == 1 and info["config"]["width"] == 4
    assert info["backend"] == "torch" and info["limits"]["max_pixels"] == MAX_PIXELS
    assert info["classes"][1]["mask_rgb"] == [255, 255, 255]


def test_png_prediction_equals_the_command_line(client, model: Path, image_path: Path,
                                                tmp_path: Path) -> None:
    from unetseg.api import predict

    response = client.post("/predict", files={"file": (image_path.name, image_path.read_bytes(),
                                                        "image/png")})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert f'filename="{image_path.stem}_mask.png"' in response.headers["content-disposition"]
    served = np.array(Image.open(io.BytesIO(response.content)))
    predict(model, [image_path], tmp_path, tile=256, overlays=False, device="cpu",
            show_progress=False)
    expected = np.array(Image.open(tmp_path / image_path.name))
    assert served.dtype == np.uint8 and np.array_equal(served, expected)
    assert 0 < np.mean(served == 255) < 1


def test_json_counts_match_the_label_image(client, image_path: Path) -> None:
    data = image_path.read_bytes()
    labels = np.array(Image.open(io.BytesIO(
        client.post("/predict", files={"file": ("a.png", data)}).content)))
    body = client.post("/predict?format=json", files={"file": ("a.png", data)}).json()
    assert (body["height"], body["width"]) == labels.shape
    counts = {c["value"]: c["pixels"] for c in body["classes"]}
    assert counts == {0: int(np.sum(labels == 0)), 255: int(np.sum(labels == 255))}
    assert sum(c["fraction"] for c in body["classes"]) == pytest.approx(1.0)


def test_tiff_jpeg_and_raw_bodies(client, image_path: Path) -> None:
    gray = np.array(Image.open(image_path))[:300, :260]
    via_png = client.post("/predict", files={"file": ("a.png", _png(gray))}).content
    buf = io.BytesIO()
    tifffile.imwrite(buf, gray.astype(np.uint16) * 257)  # 16-bit: the same values after scaling
    via_tiff = client.post("/predict", files={"file": ("a.tif", buf.getvalue())})
    assert via_tiff.status_code == 200
    assert np.array_equal(np.array(Image.open(io.BytesIO(via_tiff.content))),
                          np.array(Image.open(io.BytesIO(via_png))))
    jpeg = io.BytesIO()
    Image.fromarray(gray).save(jpeg, format="JPEG", quality=95)
    via_jpeg = client.post("/predict", content=jpeg.getvalue(),
                           headers={"content-type": "image/jpeg"})
    assert via_jpeg.status_code == 200
    assert np.array(Image.open(io.BytesIO(via_jpeg.content))).shape == (300, 260)


@pytest.mark.parametrize("payload, status, fragment", [
    (b"", 400, "empty"),
    (b"GIF89a not supported", 400, "not a PNG, TIFF or JPEG"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 400, "cannot read"),
    ("truncated", 400, "cannot read image"),
    ("rgb", 400, "1-channel images"),
    ("too many pixels", 413, "more than the limit"),
    ("too many bytes", 413, "larger than the limit"),
])
def test_bad_uploads(client, image_path: Path, payload, status: int, fragment: str) -> None:
    if payload == "truncated":
        payload = image_path.read_bytes()[:5000]
    elif payload == "rgb":
        payload = _png(np.zeros((40, 30, 3), np.uint8))
    elif payload == "too many pixels":
        payload = _png(np.zeros((521, 520), np.uint8))  # tiny file, too many pixels
    elif payload == "too many bytes":
        payload = np.random.default_rng(0).integers(0, 255, MAX_BYTES + 1, np.uint8).tobytes()
    response = client.post("/predict", files={"file": ("up.png", payload, "image/png")})
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]


def test_streamed_body_over_the_limit_is_cut_off(client) -> None:
    def chunks():
        for _ in range(20):
            yield b"\x00" * 50_000  # 1 MB in all, sent without a Content-Length

    response = client.post("/predict", content=chunks(), headers={"content-type": "image/png"})
    assert response.status_code == 413 and "larger than the limit" in response.json()["detail"]


def test_form_without_a_file_and_unknown_format(client, image_path: Path) -> None:
    response = client.post("/predict", files={"other": ("a.png", b"x")})
    assert response.status_code == 400 and "'file'" in response.json()["detail"]
    response = client.post("/predict?format=xml", files={"file": ("a.png", b"x")})
    assert response.status_code == 400 and "format=xml" in response.json()["detail"]


def test_web_page_and_assets_are_served_locally(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert f'"{asset}"' in page.text
        assert client.get(asset).status_code == 200
    texts = page.text + client.get("/static/app.js").text + client.get("/static/style.css").text
    assert "http://" not in texts and "https://" not in texts  # nothing from elsewhere


@pytest.mark.slow
def test_onnx_model_is_served_by_onnxruntime(client, model: Path, image_path: Path,
                                             tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from unetseg.export import export_model
    from unetseg.serve.app import create_app

    exported = export_model(model, tmp_path / "tiny.onnx", "onnx", exporter="legacy").path
    app = create_app(exported, max_upload_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, tile=256)
    data = {"file": ("a.png", image_path.read_bytes())}
    with testclient.TestClient(app) as onnx_client:
        assert onnx_client.get("/model").json()["backend"] == "onnxruntime"
        via_onnx = onnx_client.post("/predict", files=data)
    assert via_onnx.status_code == 200
    via_torch = client.post("/predict", files=data)
    assert np.array_equal(np.array(Image.open(io.BytesIO(via_onnx.content))),
                          np.array(Image.open(io.BytesIO(via_torch.content))))
