"""Object-level scores against a brute-force reference (every pair's IoU from boolean masks,
the matching by the Hungarian algorithm) and against cases worked out by hand."""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from unetseg.metrics_instance import (
    DSB_THRESHOLDS,
    InstanceScores,
    instance_iou,
    instance_scores,
    match_instances,
    matched_pairs,
    overlaps,
    scores_from_iou,
    total_instance_scores,
)


def _iou_brute(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    true_ids = sorted(int(v) for v in np.unique(truth) if v != 0)
    pred_ids = sorted(int(v) for v in np.unique(pred) if v != 0)
    iou = np.zeros((len(true_ids), len(pred_ids)))
    for i, t in enumerate(true_ids):
        for j, p in enumerate(pred_ids):
            a, b = truth == t, pred == p
            iou[i, j] = (a & b).sum() / (a | b).sum()
    return iou, true_ids, pred_ids


def _tp_hungarian(iou: np.ndarray, threshold: float) -> int:
    """The most one-to-one pairs with IoU > threshold (Hungarian algorithm on the hits)."""
    if iou.size == 0:
        return 0
    hits = (iou > threshold).astype(float)
    rows, cols = linear_sum_assignment(-hits)
    return int(hits[rows, cols].sum())


def _tp_permutations(iou: np.ndarray, threshold: float) -> int:
    """The same by trying every assignment (tiny matrices only)."""
    hits = iou > threshold
    n_true, n_pred = hits.shape
    if n_true > n_pred:
        hits, n_true, n_pred = hits.T, n_pred, n_true
    return max((sum(bool(hits[i, j]) for i, j in enumerate(cols))
                for cols in permutations(range(n_pred), n_true)), default=0)


def _disc(shape: tuple[int, int], row: float, col: float, radius: float) -> np.ndarray:
    r, c = np.ogrid[: shape[0], : shape[1]]
    return (r - row) ** 2 + (c - col) ** 2 <= radius**2


def _random_labels(rng: np.random.Generator, shape: tuple[int, int], n: int,
                   ids: np.ndarray | None = None) -> np.ndarray:
    """Touching and overlapping discs and rectangles; later ones paint over earlier ones."""
    labels = np.zeros(shape, np.int64)
    ids = np.arange(1, n + 1) if ids is None else ids
    for k in range(n):
        if rng.random() < 0.5:
            region = _disc(shape, rng.uniform(0, shape[0]), rng.uniform(0, shape[1]),
                           rng.uniform(2, 7))
        else:
            r0, c0 = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
            region = np.zeros(shape, bool)
            region[r0: r0 + rng.integers(2, 12), c0: c0 + rng.integers(2, 12)] = True
        labels[region] = ids[k]
    return labels


def _perturbed(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    """A prediction: the truth shifted by up to 1 pixel, some objects merged or dropped,
    some new ones added, ids renumbered."""
    pred = np.roll(truth, (int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), axis=(0, 1))
    ids = [v for v in np.unique(pred) if v != 0]
    for v in ids:
        u = rng.random()
        if u < 0.15:
            pred[pred == v] = 0
        elif u < 0.3 and ids:
            pred[pred == v] = ids[0]
    extra = _random_labels(rng, truth.shape, int(rng.integers(0, 4)))
    pred = np.where(extra > 0, extra + 100, pred)
    values, inverse = np.unique(pred, return_inverse=True)
    scramble = rng.permutation(1000)[: values.size] + 7
    scramble[values == 0] = 0
    return scramble[inverse.reshape(pred.shape)]


@pytest.mark.parametrize("seed", range(12))
def test_iou_and_matching_equal_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(20, 48)), int(rng.integers(20, 48)))
    truth = _random_labels(rng, shape, int(rng.integers(0, 12)),
                           ids=rng.permutation(5000)[:12] + 1)
    pred = _perturbed(rng, truth) if seed % 4 else _random_labels(rng, shape, 8)
    iou, true_ids, pred_ids = instance_iou(truth.astype(np.uint16), pred.astype(np.int32))
    ref, ref_true, ref_pred = _iou_brute(truth, pred)
    assert list(true_ids) == ref_true and list(pred_ids) == ref_pred
    np.testing.assert_allclose(iou, ref, rtol=0, atol=1e-12)
    for t in (0.1, 0.3, *DSB_THRESHOLDS):
        tp = _tp_hungarian(ref, t)
        assert match_instances(iou, t) == (tp, len(ref_pred) - tp, len(ref_true) - tp)
        rows, cols = matched_pairs(iou, t)
        assert len(set(rows)) == len(rows) == len(set(cols)) == tp  # one-to-one
        assert (iou[rows, cols] > t).all()
    scores = instance_scores(truth, pred)
    tp = [_tp_hungarian(ref, t) for t in DSB_THRESHOLDS]
    expect = [1.0 if not (ref_true or ref_pred) else k / (len(ref_true) + len(ref_pred) - k)
              for k in tp]
    assert scores.dsb_score == pytest.approx(np.mean(expect), abs=1e-12)
    above = ref[ref > 0.5]
    assert scores.pq_tp == above.size and scores.pq_iou_sum == pytest.approx(above.sum())
    low = (0.05, 0.1, 0.3, 0.5)
    assert instance_scores(truth, pred, low).tp == tuple(_tp_hungarian(ref, t) for t in low)
    assert scores_from_iou(ref, low) == instance_scores(truth, pred, low)


def test_many_objects_take_the_sparse_path() -> None:
    """Thousands of 2x2 tiles against tiles shifted by one pixel: the joint histogram is
    counted over the overlapping pixels only; compared with a dense count by np.add.at."""
    rng = np.random.default_rng(1)
    tiles = np.kron(rng.permutation(40 * 40).reshape(40, 40) + 1, np.ones((2, 2), np.int64))
    truth, pred = tiles[:-1, :-1], tiles[1:, 1:] * 3
    found = overlaps(truth, pred)
    assert found.true_ids.size * found.pred_ids.size > 4 * truth.size + 4096
    t_ids, t_index = np.unique(truth, return_inverse=True)
    p_ids, p_index = np.unique(pred, return_inverse=True)
    shared = np.zeros((t_ids.size, p_ids.size))
    np.add.at(shared, (t_index.ravel(), p_index.ravel()), 1)
    union = (np.bincount(t_index.ravel())[:, None] + np.bincount(p_index.ravel())[None, :]
             - shared)
    np.testing.assert_allclose(found.dense(), shared / union, atol=1e-12)
    assert list(found.true_ids) == list(t_ids) and list(found.pred_ids) == list(p_ids)
    scores = instance_scores(truth, pred, (0.1, 0.2, 0.5))
    assert scores == scores_from_iou(shared / union, (0.1, 0.2, 0.5))
    assert scores.tp[2] == 0 and scores.tp[0] > 1000  # shifted tiles overlap by 1/7 .. 4/4


def test_matching_below_one_half_takes_the_most_pairs() -> None:
    """One object overlapping two at IoU 0.4 each: a greedy pick by IoU could block the
    second match; the matching must find the assignment with the most pairs."""
    iou = np.array([[0.45, 0.4], [0.42, 0.0]])
    assert _tp_permutations(iou, 0.3) == 2
    assert match_instances(iou, 0.3) == (2, 0, 0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        iou = rng.random((int(rng.integers(0, 5)), int(rng.integers(0, 5)))) * 0.6
        for t in (0.1, 0.25, 0.4):
            assert match_instances(iou, t)[0] == _tp_permutations(iou, t)


def test_two_touching_discs_predicted_as_one() -> None:
    """Two touching discs of 13 pixels each (radius 2) predicted as one merged object: the
    merged object's IoU with each disc is 13/26 = 0.5, not above 0.5, so no match: TP 0,
    FP 1, FN 2. A prediction of one disc exactly gives TP 1, FP 0, FN 1 at every threshold."""
    shape = (12, 14)
    left, right = _disc(shape, 5, 4, 2), _disc(shape, 5, 9, 2)
    assert left.sum() == right.sum() == 13 and not (left & right).any()
    truth = np.zeros(shape, np.int32)
    truth[left], truth[right] = 1, 2
    merged = (truth > 0).astype(np.int32)
    scores = instance_scores(truth, merged)
    assert scores.tp[0] == 0 and scores.fp[0] == 1 and scores.fn[0] == 2
    assert scores.n_true == 2 and scores.n_pred == 1 and scores.count_error == -1
    assert scores.dsb_score == 0.0 and scores.pq == 0.0 and math.isnan(scores.sq)
    assert scores.precision[0] == 0.0 and scores.recall[0] == 0.0
    one = instance_scores(truth, np.where(left, 5, 0))
    assert set(one.tp) == {1} and set(one.fp) == {0} and set(one.fn) == {1}
    assert one.dsb_score == pytest.approx(0.5) and one.f1[0] == pytest.approx(2 / 3)
    assert one.pq == pytest.approx(1 / 1.5) and one.sq == 1.0 and one.rq == pytest.approx(2 / 3)


def _square_pair(size: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` square and the same shifted right by ``shift`` pixels:
    IoU = (size - shift) / (size + shift)."""
    truth = np.zeros((size + 2, size + shift + 2), np.int32)
    pred = np.zeros_like(truth)
    truth[1: size + 1, 1: size + 1] = 1
    pred[1: size + 1, 1 + shift: size + 1 + shift] = 3
    return truth, pred


@pytest.mark.parametrize(("size", "shift", "hits"), [
    (10, 1, 7),  # IoU 9/11 = 0.818: above 0.5 ... 0.8, not 0.85
    (20, 2, 7),  # IoU 18/22 = 0.818 again
    (31, 9, 1),  # IoU 22/40 = 0.55 exactly: a hit at 0.5 only, not at 0.55 (strictly above)
    (40, 12, 1),  # IoU 28/52 = 0.538
    (30, 10, 0),  # IoU 20/40 = 0.5 exactly: no hit
    (19, 1, 8),  # IoU 18/20 = 0.9 exactly: a hit up to 0.85, not 0.9
])
def test_shifted_square_near_a_threshold(size: int, shift: int, hits: int) -> None:
    truth, pred = _square_pair(size, shift)
    iou, _, _ = instance_iou(truth, pred)
    assert iou[0, 0] == pytest.approx((size - shift) / (size + shift))
    scores = instance_scores(truth, pred)
    assert sum(scores.tp) == hits
    assert scores.tp == tuple([1] * hits + [0] * (10 - hits))
    assert scores.dsb_score == pytest.approx(hits / 10)
    assert scores.pq == pytest.approx(iou[0, 0] if hits else 0.0)


def test_empty_images() -> None:
    empty = np.zeros((8, 8), np.uint8)
    one = empty.copy()
    one[2:5, 2:5] = 9
    both = instance_scores(empty, empty)
    assert both.empty and both.n_true == both.n_pred == 0
    assert both.dsb_score == 1.0 and set(both.f1) == {1.0} and both.pq == 1.0 and both.rq == 1.0
    assert math.isnan(both.sq) and all(math.isnan(p) for p in both.precision + both.recall)
    assert both.to_dict()["precision"][0] is None and both.to_dict()["sq"] is None
    missed = instance_scores(one, empty)
    assert missed.dsb_score == 0.0 and missed.fn == (1,) * 10 and missed.pq == 0.0
    assert math.isnan(missed.precision[0]) and missed.recall[0] == 0.0
    spurious = instance_scores(empty, one)
    assert spurious.dsb_score == 0.0 and spurious.fp == (1,) * 10
    assert spurious.precision[0] == 0.0 and math.isnan(spurious.recall[0])
    iou, t, p = instance_iou(empty, one)
    assert iou.shape == (0, 1) and t.size == 0 and list(p) == [9]
    assert match_instances(np.zeros((0, 3)), 0.5) == (0, 3, 0)
    assert match_instances(np.zeros((2, 0)), 0.3) == (0, 0, 2)


def test_bool_and_bad_inputs() -> None:
    a = np.zeros((4, 4), bool)
    a[1:3, 1:3] = True
    assert instance_scores(a, a).dsb_score == 1.0
    with pytest.raises(ValueError, match="one shape"):
        instance_iou(a, a[:3])
    with pytest.raises(ValueError, match="integer"):
        instance_iou(a.astype(float), a)
    with pytest.raises(ValueError, match="thresholds"):
        instance_scores(a, a, thresholds=(0.9, 0.5))


def test_totals_sum_counts_and_average_images() -> None:
    rng = np.random.default_rng(3)
    per_image: list[InstanceScores] = []
    for _ in range(5):
        truth = _random_labels(rng, (30, 30), 6)
        per_image.append(instance_scores(truth, _perturbed(rng, truth)))
    per_image.append(instance_scores(np.zeros((5, 5), int), np.zeros((5, 5), int)))
    total = total_instance_scores(per_image)
    tp = np.sum([s.tp for s in per_image], axis=0)
    fp = np.sum([s.fp for s in per_image], axis=0)
    fn = np.sum([s.fn for s in per_image], axis=0)
    assert total["images"] == 6 and total["tp"] == list(tp) and total["fn"] == list(fn)
    np.testing.assert_allclose(total["precision"], tp / (tp + fp))
    np.testing.assert_allclose(total["recall"], tp / (tp + fn))
    np.testing.assert_allclose(total["f1"], 2 * tp / (2 * tp + fp + fn))
    assert total["dsb_score"] == pytest.approx(np.mean([s.dsb_score for s in per_image]))
    pq_tp = sum(s.pq_tp for s in per_image)
    n_true, n_pred = sum(s.n_true for s in per_image), sum(s.n_pred for s in per_image)
    iou_sum = sum(s.pq_iou_sum for s in per_image)
    assert total["pq"] == pytest.approx(iou_sum / (pq_tp + (n_true - pq_tp + n_pred - pq_tp) / 2))
    assert total["pq"] == pytest.approx(total["sq"] * total["rq"])
    assert total["count_error"] == n_pred - n_true
    assert total["mean_abs_count_error"] == pytest.approx(
        np.mean([abs(s.n_pred - s.n_true) for s in per_image]))
    with pytest.raises(ValueError):
        total_instance_scores([])
    with pytest.raises(ValueError, match="same thresholds"):
        total_instance_scores([per_image[0], instance_scores(np.zeros((2, 2), int),
                                                             np.zeros((2, 2), int), (0.5,))])
