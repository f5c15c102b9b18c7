"""The HTML reports of ``unetseg evaluate`` and ``unetseg train``: one self-contained file each,
with the tables and embedded pictures it promises; and the page blocks they are built from."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from reports import EXTERNAL, evaluated, trained

from unetseg.report import page

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _check_self_contained(html: str) -> None:
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert not EXTERNAL.findall(html), EXTERNAL.findall(html)[:3]
    assert "<link" not in html and "<iframe" not in html


def _pictures(html: str) -> int:
    return len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', html))


def test_evaluate_writes_a_self_contained_report(tmp_path: Path) -> None:
    out = evaluated(tmp_path)
    html = (out / "report.html").read_text()
    _check_self_contained(html)
    for table in ('id="per-class"', 'id="per-image"'):
        assert table in html
    summary = json.loads((out / "metrics.json").read_text())
    rows = re.findall(r"<tr><td data-v=\"(img\d+)\"", html)
    assert sorted(rows) == [f"img{i:02d}" for i in range(8)]  # every image in the table
    worst = re.findall(r"<h3>(img\d+): mean IoU", html)
    assert len(worst) == 6  # the 6 lowest mean IoU, each drawn as 5 pictures
    assert _pictures(html) == 2 + 6 * 5  # confusion matrix, IoU bars, worst images
    assert "false positives (predicted class)" in html and "membrane" in html
    assert summary["mean_hd95"] is not None and "hd95" in summary["per_class"]["cell"]
    header = (out / "per_image.csv").read_text().splitlines()[0].split(",")
    assert {"mean_hd95", "hd95/membrane", "hd95/cell"} <= set(header)


def test_train_writes_a_self_contained_report(tmp_path: Path) -> None:
    run = trained(tmp_path)
    html = (run / "report.html").read_text()
    _check_self_contained(html)
    assert "Training report" in html and 'id="epochs"' in html
    assert _pictures(html) == 1 + 3 * 3  # curves; 3 validation images as image/truth/prediction
    for text in ("background", "foreground", "suggested weight", "Validation examples",
                 "data_sha256", "steps per epoch"):
        assert text in html
    assert html.count("<tr><td data-v=") >= 2  # the epochs
    stamp = (run / "report.html").stat().st_mtime_ns  # written before the commit point
    assert stamp <= (run / "resume.safetensors").stat().st_mtime_ns


def test_the_training_report_gives_the_plans_reasons(tmp_path: Path) -> None:
    from unetseg.data.classes import ClassTable
    from unetseg.report.training import training_report

    (tmp_path / "config.json").write_text(json.dumps({
        "run": {"model": {"width": 16}, "train": {"epochs": 9}},
        "planned_width": {"width": 16, "probe_width": 16, "probe_step_s": 0.25,
                          "reason": "width 16 <trains> 600 steps", "top_width": None},
        "planned_epochs": {"steps_per_epoch": 7, "epochs": 9, "reason": "9 epochs fit"}}))
    html = training_report(tmp_path, [], None, [], ClassTable.from_values((0, 1)))
    _check_self_contained(html)
    assert "width 16 &lt;trains&gt; 600 steps" in html and "9 epochs fit" in html
    assert "No data check report" in html and "No validation split" in html


def test_tables_escape_and_sort_keys() -> None:
    html = page.table(["name", "score"], [["<b>", 0.5], ["x", None]], sortable=True)
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert 'class="sortable"' in html and "<th class=num data-type=number>score" in html
    assert 'data-v="0.5">0.5<' in html and 'data-v="">&ndash;<' in html
    assert EXTERNAL.findall('<img src="http://x/a.png"> <a href="page.html">')
    assert not EXTERNAL.findall('<img src="data:image/png;base64,AAAA"> <a href="#top">')
