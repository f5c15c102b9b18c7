import json
from pathlib import Path

from unetseg.api import demo, demo_data_root
from unetseg.data.pairs import find_pairs


def test_bundled_demo_data_is_complete():
    pairs = find_pairs(demo_data_root())
    assert [p.stem for p in pairs] == [f"{i:02d}" for i in range(30)]
    assert (demo_data_root() / "README.md").is_file()


def test_demo_writes_everything_into_one_folder(tmp_path: Path):
    result = demo(tmp_path / "demo", time_budget_s=1.0, epochs=1, width=4, show_progress=False)
    f = result.folder
    for path in ("run/best.safetensors", "run/curves.png", "run/metrics.csv",
                 "evaluation/metrics.json", "evaluation/per_image.csv", "examples.png",
                 "run/report.html", "evaluation/report.html",
                 "predictions/29.png", "predictions/29_overlay.png"):
        assert (f / path).is_file(), path
    assert len(list((f / "data" / "test" / "images").glob("*.png"))) == 6
    assert len(list((f / "data" / "train" / "images").glob("*.png"))) == 24
    metrics = json.loads((f / "evaluation" / "metrics.json").read_text())
    assert metrics["images"] == 6 and set(metrics["per_class"]) == {"membrane", "cell"}
