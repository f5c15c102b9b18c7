"""The reports in headless Chromium: every embedded picture decodes, nothing is fetched, no
console error, and a click on a column header sorts the per-image and epochs tables."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from reports import evaluated, trained

webdriver = pytest.importorskip("selenium.webdriver")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1280,900"]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None or not CHROMEDRIVER.exists():
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver, report: Path) -> None:
    driver.get(report.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    images = driver.execute_script(
        "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0);")
    assert images and all(images), "an embedded picture did not decode"
    fetched = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name);")
    assert fetched == [], fetched  # the page loads nothing beyond itself


def _column(driver, table: str, header: str) -> list[str]:
    return driver.execute_script(
        "const t = document.getElementById(arguments[0]);"
        "const i = Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent"
        "  .replace(/[\\u25B2\\u25BC]/g, '').trim() === arguments[1]);"
        "return Array.from(t.tBodies[0].rows).map(r => r.cells[i].dataset.v);", table, header)


def _click(driver, table: str, header: str) -> None:
    from selenium.webdriver.common.by import By

    for th in driver.find_elements(By.CSS_SELECTOR, f"#{table} th"):
        if th.text.replace("\u25b2", "").replace("\u25bc", "").strip() == header:
            th.click()
            return
    raise AssertionError(f"no column {header} in #{table}")


def _numbers(values: list[str]) -> list[float]:
    return [float(v) for v in values if v != ""]


def _no_console_errors(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not errors, errors


def test_evaluation_report_sorts_by_any_metric(browser, tmp_path: Path) -> None:
    driver = browser
    _open(driver, evaluated(tmp_path) / "report.html")
    _click(driver, "per-image", "mean_iou")
    values = _numbers(_column(driver, "per-image", "mean_iou"))
    assert len(values) == 8 and values == sorted(values)
    _click(driver, "per-image", "mean_iou")  # again: the other way
    assert _numbers(_column(driver, "per-image", "mean_iou")) == sorted(values, reverse=True)
    _click(driver, "per-image", "hd95/cell")
    hd95 = _column(driver, "per-image", "hd95/cell")
    present = [v for v in hd95 if v != ""]
    assert hd95[: len(present)] == present  # blanks (undefined) last
    assert _numbers(present) == sorted(_numbers(present))
    _click(driver, "per-image", "image")
    stems = _column(driver, "per-image", "image")
    assert stems == sorted(stems)
    _no_console_errors(driver)


def test_training_report_sorts_its_epochs(browser, tmp_path: Path) -> None:
    driver = browser
    _open(driver, trained(tmp_path) / "report.html")
    _click(driver, "epochs", "train_loss")
    _click(driver, "epochs", "train_loss")
    losses = _numbers(_column(driver, "epochs", "train_loss"))
    assert len(losses) == 2 and losses == sorted(losses, reverse=True)
    _no_console_errors(driver)
