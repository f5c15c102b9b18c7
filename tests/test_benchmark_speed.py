"""The speed benchmark's report (``benchmarks/speed.py``): percentages only against a peak that
bounds every measured rate."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
speed = importlib.import_module("speed")  # a broken benchmark fails here, never skips


def _network(train: float, infer: float) -> dict:
    return {"name": "unetseg", "threads": 2, "params": 31e6, "gflop": 96.0,
            "train_images_s": 1.0, "train_gflops": train, "train_util": 2.0,
            "infer_gflops": infer, "infer_util": 2.0, "peak_rss_mib": 1000.0}


def _peaks(matmul: float) -> dict:
    return {"fp32": 200.0, "fp32_how": "FMA kernel avx2_12", "kernels": {"avx2_12": 200.0},
            "matmul_fp32": matmul, "threads": 2}


def test_percentages_against_a_peak_that_bounds_every_rate():
    text = speed.report([_network(120.0, 150.0)], _peaks(180.0), "cpu")
    assert "150 (75 %)" in text and "180.0 GFLOP/s (90 % of the peak)" in text
    assert "NOT AN UPPER BOUND" not in text
    assert "fp32 inference 75 % of the peak" in text


def test_no_percentages_when_a_rate_exceeds_the_peak():
    for results, peaks in (([_network(120.0, 150.0)], _peaks(210.0)),  # the matmul
                           ([_network(120.0, 250.0)], _peaks(180.0))):  # the network
        text = speed.report(results, peaks, "cpu")
        assert "THE FP32 PEAK IS NOT AN UPPER BOUND" in text
        assert " %)" not in text and "% of the peak" not in text


def test_cold_start_imports():
    cold_start = importlib.import_module("cold_start")
    assert callable(cold_start.measure) and "scipy" in cold_start.HEAVY


def test_every_variant_has_a_row_that_builds():
    names = speed.network_names("unetseg,variants")
    assert names[0] == "unetseg" and len(names) == 7
    import torch

    with torch.device("meta"):
        models = [speed.build(name) for name in names[1:]]
    assert [m.config.arch for m in models] == list(speed.VARIANTS)
