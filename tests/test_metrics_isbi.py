"""ISBI 2012 metrics on hand-made cases whose values are known by construction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unetseg.metrics_isbi import (
    DEFAULT_THRESHOLDS,
    isbi_counts,
    isbi_summary,
    pixel_error,
    rand_error,
    rand_sums,
    simple_point_table,
    warp_truth,
    warping_error,
)

SIZE = 14  # a 10 x 10 cell (rows/cols 2..11) inside a 2-pixel membrane frame
N = SIZE * SIZE


def cell(line_at: int | None = None) -> np.ndarray:
    """True on cell pixels; an optional one-pixel membrane column through the cell."""
    objects = np.zeros((SIZE, SIZE), bool)
    objects[2:12, 2:12] = True
    if line_at is not None:
        objects[2:12, line_at] = False
    return objects


def test_identical_maps_score_zero():
    truth = cell(7)
    assert pixel_error(truth, truth) == 0
    assert rand_error(truth, truth) == 0
    assert warping_error(truth, truth) == 0


def test_split():
    truth, pred = cell(), cell(7)  # the prediction cuts the cell into 50 + 40 pixels
    assert pixel_error(pred, truth) == pytest.approx(10 / N)
    # one truth segment of 100; prediction 50, 40 and 10 boundary pixels (singletons)
    assert rand_sums(pred, truth) == (2500 + 1600 + 10, 2500 + 1600 + 10, 100**2)
    assert rand_error(pred, truth) == pytest.approx(1 - 2 * 4110 / (4110 + 10000))
    assert warping_error(pred, truth) == pytest.approx(1 / N)  # one pixel keeps the cell whole


def test_merge():
    truth, pred = cell(7), cell()  # the prediction misses the membrane between 50 and 40
    assert pixel_error(pred, truth) == pytest.approx(10 / N)
    assert rand_sums(pred, truth) == (2500 + 1600, 90**2, 2500 + 1600)
    assert rand_error(pred, truth) == pytest.approx(1 - 2 * 4100 / (8100 + 4100))
    # no pixel of a one-pixel wall between two cells is simple: the whole wall remains
    assert warping_error(pred, truth) == pytest.approx(10 / N)


def test_shifted_border_costs_pixels_but_no_warping():
    truth, pred = cell(7), cell(8)
    assert pixel_error(pred, truth) == pytest.approx(20 / N)
    assert warping_error(pred, truth) == 0
    np.testing.assert_array_equal(warp_truth(pred, truth), pred)
    # truth 50 | 40; prediction 50 | 10 boundary | 30 inside the truth's cells
    assert rand_sums(pred, truth) == (2500 + 900 + 10, 2500 + 900 + 10, 2500 + 1600)


def test_thicker_and_thinner_borders_warp_away():
    truth = cell(7)
    thick = truth.copy()
    thick[2:12, 6:9] = False  # the same wall, three pixels wide
    assert warping_error(thick, truth) == 0 and pixel_error(thick, truth) == pytest.approx(20 / N)
    assert warping_error(truth, thick) == 0


def test_hole_and_missing_object():
    truth = cell()
    holed = truth.copy()
    holed[6, 6] = False  # an isolated boundary pixel inside the cell: a new object/hole
    assert warping_error(holed, truth) == pytest.approx(1 / N)
    tiny = np.zeros_like(truth)
    tiny[6, 6] = True  # one object pixel where the truth has none
    assert warping_error(tiny, np.zeros_like(truth)) == pytest.approx(1 / N)


def test_simple_point_table_on_known_patterns():
    table = simple_point_table()
    assert table.shape == (256,) and table.dtype == bool

    def code(bits: list[int]) -> int:
        return sum(1 << b for b in bits)  # bits: 0 TL, 1 T, 2 TR, 3 R, 4 BR, 5 B, 6 BL, 7 L

    assert not table[code([])]  # isolated boundary pixel: removing it deletes a component
    assert not table[code(list(range(8)))]  # surrounded: removing it opens a hole (new object)
    assert table[code([1])]  # end of a wall
    assert not table[code([1, 5])]  # middle of a vertical wall: it separates left from right
    assert table[code([0, 1, 2])]  # on a straight edge
    assert not table[code([0, 4])]  # joins two diagonal walls (8-connected boundary)


def _topology(boundary: np.ndarray) -> tuple[int, int]:
    """(8-components of the boundary with the outside frame, 4-components of the objects)."""
    framed = np.pad(boundary, 1, constant_values=True)
    return (ndimage.label(framed, np.ones((3, 3)))[1],
            ndimage.label(~framed, ndimage.generate_binary_structure(2, 1))[1])


def test_flipping_a_simple_point_keeps_both_component_counts():
    rng = np.random.default_rng(0)
    table = simple_point_table()
    checked = 0
    for _ in range(150):
        boundary = rng.random((6, 6)) < 0.45
        before = _topology(boundary)
        padded = np.pad(boundary, 1, constant_values=True)
        for y in range(6):
            for x in range(6):
                window = padded[y : y + 3, x : x + 3]
                bits = [window[1 + dy, 1 + dx] for dy, dx in
                        ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))]
                if table[sum(int(b) << i for i, b in enumerate(bits))]:
                    flipped = boundary.copy()
                    flipped[y, x] = not flipped[y, x]
                    assert _topology(flipped) == before
                    checked += 1
    assert checked > 500


def test_counts_over_thresholds_pick_the_best():
    truth = cell(7)
    prob = np.where(truth, 0.9, 0.05)
    prob[2:12, 7] = 0.45  # the wall is predicted only faintly
    counts = isbi_counts(prob, truth)
    assert counts.thresholds == DEFAULT_THRESHOLDS and counts.pixels == N
    summary = isbi_summary(counts)
    per = summary["per_threshold"]
    by_t = dict(zip(summary["thresholds"], zip(per["pixel_error"], per["warping_error"],
                                               per["rand_error"])))
    assert by_t[0.0][0] == pytest.approx((N - 90) / N)  # everything is an object
    assert by_t[0.4] == pytest.approx((10 / N, 10 / N, 1 - 8200 / 12200))  # merged
    assert by_t[0.5] == (0.0, 0.0, 0.0)  # the wall is found
    assert 1.0 not in by_t  # degenerate: every pixel would be boundary
    everything_boundary = isbi_summary(isbi_counts(prob, truth, thresholds=(1.0,)))
    assert everything_boundary["pixel_error"]["value"] == pytest.approx(90 / N)
    assert everything_boundary["warping_error"]["value"] == pytest.approx(2 / N)  # 1 per cell
    for metric in ("pixel_error", "rand_error", "warping_error"):
        assert summary[metric]["value"] == 0.0
        assert 0.5 <= summary[metric]["threshold"] <= 0.8
    twice = isbi_summary(counts + counts)  # pooled images: same rates
    assert twice["per_threshold"]["pixel_error"] == per["pixel_error"]
    assert twice["per_threshold"]["rand_error"] == pytest.approx(per["rand_error"])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        pixel_error(np.zeros((3, 4), bool), np.zeros((4, 3), bool))
