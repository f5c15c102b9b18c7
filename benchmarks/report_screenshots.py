"""Screenshots of the two HTML reports for the README, from a short run on the bundled data.

Trains a narrow U-Net on 24 of the bundled ISBI 2012 slices for ``--budget`` seconds, evaluates
it on the other 6, and photographs ``run/report.html`` and ``evaluation/report.html`` in
headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by selenium). The
pictures are shrunk and reduced to 256 colours to stay small::

    python benchmarks/report_screenshots.py --budget 120 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import unetseg
from unetseg.api import demo_data_root
from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig

WIDTH = 1200


def split_demo(root: Path) -> tuple[Path, Path]:
    """The bundled pairs copied into ``root``: the first 24 to train, the last 6 to test."""
    src = demo_data_root()
    stems = sorted(p.stem for p in (src / "images").glob("*.png"))
    for part, names in (("train", stems[:24]), ("test", stems[24:])):
        for sub in ("images", "masks"):
            (root / part / sub).mkdir(parents=True)
            for stem in names:
                shutil.copy(src / sub / f"{stem}.png", root / part / sub / f"{stem}.png")
    return root / "train", root / "test"


def screenshot(page: Path, target: Path, *, height: int, anchor: str | None = None,
               shrink_to: int = 800, colours: int = 256) -> None:
    """Photograph ``page`` (a window ``WIDTH`` x ``height``, scrolled to the heading
    ``anchor`` if given) into ``target``, ``shrink_to`` pixels wide, in ``colours``
    colours."""
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 f"--window-size={WIDTH},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(page.resolve().as_uri())
        if anchor:
            driver.execute_script("Array.from(document.querySelectorAll('h2')).find("
                                  "h => h.textContent === arguments[0]).scrollIntoView()", anchor)
        raw = target.with_suffix(".raw.png")
        driver.save_screenshot(str(raw))
    finally:
        driver.quit()
    picture = Image.open(raw).convert("RGB")
    picture = picture.resize((shrink_to, round(picture.height * shrink_to / picture.width)),
                             Image.Resampling.LANCZOS)
    picture.quantize(colours).save(target, optimize=True)
    raw.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0, help="training seconds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train, test = split_demo(Path(tmp) / "data")
        cfg = RunConfig(model=ModelConfig(depth=4),  # the width planned from the budget
                        data=DataConfig(patch_size=256, class_names=("membrane", "cell")),
                        train=TrainConfig(epochs=40, lr=2e-3, time_limit_s=args.budget,
                                          device="cpu"))
        run = unetseg.fit(train, Path(tmp) / "run", cfg, show_progress=False)
        unetseg.evaluate(run.best_model, test, Path(tmp) / "evaluation", device="cpu",
                         show_progress=False)
        args.out.mkdir(parents=True, exist_ok=True)
        screenshot(Path(tmp) / "run" / "report.html", args.out / "report-train.png",
                   height=1700)
        evaluation = Path(tmp) / "evaluation" / "report.html"
        screenshot(evaluation, args.out / "report-evaluate.png", height=1500)
        screenshot(evaluation, args.out / "report-evaluate-worst.png", height=600,
                   anchor="Worst images", colours=64)
    print(f"wrote {args.out}/report-train.png, report-evaluate.png, report-evaluate-worst.png")


if __name__ == "__main__":
    main()
