"""The web page end to end in headless Chromium: upload an image, wait for the overlay, check the
legend, the opacity slider and the downloaded mask against the command line's prediction."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1280,900"]


def _chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None or not CHROMEDRIVER.exists():
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver)")
    return binary


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shipping import tiny_model

    return tiny_model(tmp_path_factory.mktemp("web") / "tiny.safetensors")


@pytest.fixture(scope="module")
def server_url(model: Path) -> Iterator[str]:
    """The app on a real uvicorn server on a free loopback port, in a thread."""
    from unetseg.serve.app import create_app

    app = create_app(model, tile=256)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[tuple[object, Path]]:
    from selenium.webdriver.chrome.service import Service

    binary = _chromium()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver, downloads
    finally:
        driver.quit()


def _wait(condition, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_upload_overlay_legend_and_download(server_url: str, browser, model: Path,
                                            tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from shipping import sample_images

    from unetseg.api import predict

    driver, downloads = browser
    image = sample_images()[2]
    driver.get(server_url)
    _wait(lambda: "classes membrane, cell" in driver.find_element(By.ID, "model-line").text,
          what="the model description")
    driver.find_element(By.ID, "file").send_keys(str(image))
    _wait(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")
          in ("done", "error"), what="the prediction")
    status = driver.find_element(By.ID, "status").text
    assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", status

    items = driver.find_elements(By.CSS_SELECTOR, "#legend li")
    assert [i.find_element(By.CLASS_NAME, "name").text for i in items] == ["membrane", "cell"]
    shares = [float(i.find_element(By.CLASS_NAME, "fraction").text.rstrip("%")) for i in items]
    predict(model, [image], tmp_path / "cli", tile=256, overlays=False, device="cpu",
            show_progress=False)
    expected = np.array(Image.open(tmp_path / "cli" / image.name))
    assert shares == pytest.approx([100 * np.mean(expected == 0), 100 * np.mean(expected == 255)],
                                   abs=0.06)

    overlay = driver.execute_script(
        "const c = document.getElementById('overlay-canvas');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let painted = 0; for (let i = 3; i < d.length; i += 4) painted += d[i] === 255;"
        "return [c.width, c.height, painted];")
    assert overlay == [expected.shape[1], expected.shape[0], expected.size]

    driver.execute_script("const s = document.getElementById('opacity'); s.value = 20;"
                          "s.dispatchEvent(new Event('input'));")
    opacity = driver.find_element(By.ID, "overlay-canvas").value_of_css_property("opacity")
    assert float(opacity) == pytest.approx(0.2)

    link = driver.find_element(By.ID, "download")
    assert link.get_attribute("download") == f"{image.stem}_mask.png"
    link.click()
    target = downloads / f"{image.stem}_mask.png"
    _wait(lambda: target.exists() and not list(downloads.glob("*.crdownload")),
          timeout=30, what="the downloaded mask")
    assert np.array_equal(np.array(Image.open(target)), expected)
