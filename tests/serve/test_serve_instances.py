"""Serving an instance model: the object labels and the object table of ``unetseg predict``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
testclient = pytest.importorskip("fastapi.testclient")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shipping import tiny_instance_model

    return tiny_instance_model(tmp_path_factory.mktemp("serve-objects") / "objects.safetensors")


@pytest.fixture(scope="module")
def client(model: Path):
    from unetseg.serve.app import create_app

    with testclient.TestClient(create_app(model, tile=256)) as c:
        yield c


@pytest.fixture(scope="module")
def image_path() -> Path:
    from shipping import sample_images

    return sample_images()[3]


def test_objects_equal_the_command_line(client, model: Path, image_path: Path,
                                        tmp_path: Path) -> None:
    from unetseg.api import predict

    info = client.get("/model").json()
    assert info["task"] == "instance" and info["instance"]["target"] == "boundary"
    files = {"file": (image_path.name, image_path.read_bytes(), "image/png")}
    response = client.post("/predict", files=files)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert f'filename="{image_path.stem}_instances.png"' in response.headers[
        "content-disposition"]
    served = Image.open(io.BytesIO(response.content))
    assert served.mode == "I;16"
    predict(model, [image_path], tmp_path, tile=256, device="cpu", show_progress=False)
    expected = np.array(Image.open(tmp_path / f"{image_path.stem}_instances.png"))
    np.testing.assert_array_equal(np.array(served), expected)
    assert expected.max() > 5

    table = client.post("/predict?format=json", files=files).json()
    rows = list(csv.DictReader((tmp_path / f"{image_path.stem}_objects.csv").open()))
    assert table["count"] == len(rows) == expected.max()
    assert [o["area"] for o in table["objects"]] == [int(r["area"]) for r in rows]
    assert table["objects"][0].keys() == rows[0].keys()
