"""The quality benchmark's summary over several runs (``benchmarks/quality.py``)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
quality = importlib.import_module("quality")  # a broken benchmark fails here, never skips


def _row(model: str, miou: float, acc: float, epochs: int) -> dict:
    return {"model": model, "mean_iou": miou, "pixel_accuracy": acc, "epochs": epochs}


def test_summary_means_sds_and_runs_led_by_hand():
    runs = [[_row("a", 0.30, 0.70, 5), _row("b", 0.20, 0.60, 3)],
            [_row("a", 0.20, 0.66, 7), _row("b", 0.26, 0.64, 4)],
            [_row("a", 0.25, 0.62, 6), _row("b", 0.25, 0.65, 5)]]
    a, b = quality.summarise(runs, isbi=False)
    assert (a["model"], b["model"], a["runs"]) == ("a", "b", 3)
    assert a["mean_iou"]["mean"] == pytest.approx(0.25)
    assert a["mean_iou"]["sd"] == pytest.approx(0.05)  # sample sd of 0.30, 0.20, 0.25
    assert b["mean_iou"]["mean"] == pytest.approx(0.71 / 3)
    assert b["pixel_accuracy"]["sd"] == pytest.approx(((0.03**2 + 0.01**2 + 0.02**2) / 2) ** 0.5)
    assert a["mean_iou"]["values"] == [0.30, 0.20, 0.25]
    assert (a["led"], b["led"]) == (2, 2)  # the third run is a tie
    assert (a["epochs"], b["epochs"]) == (6.0, 4.0)
    table = quality.summary_table("camvid", [a, b], False, 600.0, ["seed0", "seed1", "seed2"])
    assert "0.2500 ± 0.0500" in table and "0.3000, 0.2000, 0.2500" in table
    assert "| 2/3 |" in table and "3 runs of 600 s" in table


def test_one_run_has_no_spread():
    (only,) = quality.summarise([[_row("a", 0.3, 0.7, 2)]], isbi=False)
    assert only["mean_iou"] == {"mean": 0.3, "sd": 0.0, "values": [0.3]}


def test_the_variants_group_names_every_built_in_variant():
    from unetseg.model import architectures

    names = quality.model_names("default,variants,unetseg-default")
    assert names[0] == "unetseg-default" and len(names) == len(set(names))
    archs = {quality.VARIANT_MODELS[n].arch for n in names[1:]}
    assert archs == set(architectures()[:7])  # unet (with deep supervision) and the six
