"""Does bf16 autocast train as well as fp32 on a CPU with native bf16, at the same wall-clock?

Trains the demo recipe (ISBI 2012, the bundled 30 slices: the first 24 to train, of which a
seeded fifth validates, the last 6 held out) twice under the same time budget and seed, once in
fp32 and once under bf16 autocast, with the same fixed width (the width the budget plans on a
laptop CPU, so both train the same network), then scores both best models on the held-out
slices with fp32 prediction. Prints one line per precision: steps trained, best validation mean
IoU and held-out mean IoU.

Usage::

    python benchmarks/bf16_training.py --budget 150 --out /tmp/bf16-training
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from unetseg.api import demo_data_root, evaluate
from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from unetseg.runtime import cpu_native_bf16
from unetseg.train import loop
from unetseg.train.fit import fit

HELD_OUT = 6


def split(folder: Path) -> tuple[Path, Path]:
    """The demo's split of the bundled slices into ``folder/train`` and ``folder/test``."""
    source = demo_data_root()
    stems = sorted(p.stem for p in (source / "images").glob("*.png"))
    for part, names in (("train", stems[:-HELD_OUT]), ("test", stems[-HELD_OUT:])):
        for sub in ("images", "masks"):
            (folder / part / sub).mkdir(parents=True, exist_ok=True)
            for stem in names:
                shutil.copy(source / sub / f"{stem}.png", folder / part / sub / f"{stem}.png")
    return folder / "train", folder / "test"


def train_and_score(precision: str, train: Path, test: Path, out: Path, budget_s: float,
                    width: int) -> dict[str, float | int | str]:
    """One budgeted run in ``precision`` (fp32 or bf16), scored on ``test`` in fp32."""
    loop.CPU_BF16_TRAINING = precision == "bf16"
    cfg = RunConfig(model=ModelConfig(width=width, depth=4, up="transpose"),
                    data=DataConfig(val_fraction=0.2, patch_size=256,
                                    class_names=("membrane", "cell")),
                    train=TrainConfig(epochs=40, batch_size=4, lr=2e-3, time_limit_s=budget_s,
                                      device="cpu"))
    result = fit(train, out / precision, cfg, show_progress=False, plan=None)
    best_val = max(row["val_mean_iou"] for row in result.history)
    steps = int(result.history[-1]["step"])
    held_out = evaluate(result.best_model, test, device="cpu", precision="fp32",
                        show_progress=False).summary["mean_iou"]
    return {"precision": precision, "epochs": len(result.history), "steps": steps,
            "best_val_mean_iou": round(best_val, 4), "held_out_mean_iou": round(held_out, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=150.0, help="training seconds per run")
    parser.add_argument("--width", type=int, default=16, help="channels of the first level")
    parser.add_argument("--out", type=Path, default=Path("bf16-training"))
    args = parser.parse_args()
    if cpu_native_bf16() is None:
        raise SystemExit("this CPU has no native bf16 (amx_bf16 or avx512_bf16); nothing to do")
    train, test = split(args.out / "data")
    rows = [train_and_score(p, train, test, args.out, args.budget, args.width)
            for p in ("fp32", "bf16")]
    for row in rows:
        print(json.dumps(row))
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
