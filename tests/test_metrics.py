"""Confusion matrix and the scores derived from it, against hand-counted values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unetseg.metrics import (
    IGNORE_INDEX,
    ConfusionMatrixMeter,
    _bincount,
    confusion_matrix,
    dice,
    false_negatives,
    false_positives,
    iou,
    mean_dice,
    mean_iou,
    pixel_accuracy,
    precision,
    recall,
    summarize,
    true_positives,
)

# Two 2x4 images, 3 classes; -1 marks two ignored pixels in the second image.
TARGET = torch.tensor(
    [
        [[0, 0, 1, 1], [0, 2, 2, 1]],
        [[2, 2, -1, 0], [1, 1, -1, 0]],
    ]
)
PRED = torch.tensor(
    [
        [[0, 1, 1, 1], [0, 2, 0, 1]],
        [[2, 0, 2, 0], [1, 2, 1, 0]],
    ]
)
# Counted by hand, rows = truth, columns = prediction (14 = 16 pixels - 2 ignored).
EXPECTED_CM = [
    [4, 1, 0],
    [0, 4, 1],
    [2, 0, 2],
]


def slow_confusion_matrix(pred: np.ndarray, target: np.ndarray, k: int, ignore: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(target.ravel().tolist(), pred.ravel().tolist()):
        if t != ignore:
            cm[t, p] += 1
    return cm


def test_hand_counted_matrix() -> None:
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.dtype == torch.int64
    assert cm.shape == (3, 3)
    assert cm.tolist() == EXPECTED_CM


def test_hand_computed_scores() -> None:
    cm = torch.tensor(EXPECTED_CM)
    # tp = diagonal, fp = column sum - tp, fn = row sum - tp
    assert true_positives(cm).tolist() == [4, 4, 2]
    assert false_positives(cm).tolist() == [2, 1, 1]
    assert false_negatives(cm).tolist() == [1, 1, 2]
    expected_iou = [4 / 7, 4 / 6, 2 / 5]
    expected_dice = [8 / 11, 8 / 10, 4 / 7]
    assert iou(cm).dtype == torch.float64
    np.testing.assert_allclose(iou(cm).numpy(), expected_iou)
    np.testing.assert_allclose(dice(cm).numpy(), expected_dice)
    np.testing.assert_allclose(precision(cm).numpy(), [4 / 6, 4 / 5, 2 / 3])
    np.testing.assert_allclose(recall(cm).numpy(), [4 / 5, 4 / 5, 2 / 4])
    assert float(pixel_accuracy(cm)) == pytest.approx(10 / 14)
    assert float(mean_iou(cm)) == pytest.approx(sum(expected_iou) / 3)
    assert float(mean_dice(cm)) == pytest.approx(sum(expected_dice) / 3)


def test_ignored_pixels_are_not_counted() -> None:
    pred = PRED.clone()
    pred[TARGET == IGNORE_INDEX] = 2  # whatever is predicted there
    assert confusion_matrix(pred, TARGET, 3).tolist() == EXPECTED_CM
    assert int(confusion_matrix(PRED, TARGET, 3).sum()) == 14


def test_custom_ignore_index_and_small_dtypes() -> None:
    target = TARGET.clone()
    target[target == -1] = 255
    cm = confusion_matrix(PRED.to(torch.uint8), target.to(torch.uint8), 3, ignore_index=255)
    assert cm.tolist() == EXPECTED_CM


def test_absent_class_rule() -> None:
    # 4 classes: 0 right, 1 in truth never predicted, 2 predicted never in truth, 3 absent.
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 2, 2])
    cm = confusion_matrix(pred, target, 4)
    assert cm.tolist() == [[2, 0, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    i, d, p, r = iou(cm), dice(cm), precision(cm), recall(cm)
    assert i[:3].tolist() == [1.0, 0.0, 0.0]
    assert d[:3].tolist() == [1.0, 0.0, 0.0]
    assert math.isnan(i[3]) and math.isnan(d[3])  # undefined, not perfect
    assert p[0] == 1.0 and math.isnan(p[1]) and p[2] == 0.0 and math.isnan(p[3])
    assert r[0] == 1.0 and r[1] == 0.0 and math.isnan(r[2]) and math.isnan(r[3])
    # the absent class is left out of the means; the falsely predicted one counts as 0
    assert float(mean_iou(cm)) == pytest.approx(1 / 3)
    assert float(mean_dice(cm)) == pytest.approx(1 / 3)
    assert float(pixel_accuracy(cm)) == pytest.approx(0.5)


def test_empty_matrix_is_undefined() -> None:
    cm = confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), -1), 2)
    assert cm.tolist() == [[0, 0], [0, 0]]
    assert math.isnan(pixel_accuracy(cm))
    assert math.isnan(mean_iou(cm)) and math.isnan(mean_dice(cm))


def test_reductions_broadcast_over_leading_dims() -> None:
    a = torch.tensor(EXPECTED_CM)
    b = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]), 3)
    stacked = torch.stack([a, b])
    for fn in (iou, dice, precision, recall, pixel_accuracy, mean_iou, mean_dice):
        torch.testing.assert_close(fn(stacked), torch.stack([fn(a), fn(b)]), equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 5),
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_loop_reference(k: int, shape: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    target = rng.integers(-1, k, size=shape)
    pred = rng.integers(0, k, size=shape)
    got = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), k)
    np.testing.assert_array_equal(got.numpy(), slow_confusion_matrix(pred, target, k, -1))


def test_sync_free_count_matches_bincount() -> None:
    index = torch.randint(0, 11, (500,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_bincount(index, 11, sync_free=True), _bincount(index, 11, sync_free=False))
    assert torch.equal(_bincount(index, 11, sync_free=True), torch.bincount(index, minlength=11))


@pytest.mark.parametrize("bad", [3, -2])
def test_target_out_of_range_raises(bad: int) -> None:
    target = TARGET.clone()
    target[0, 0, 0] = bad
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(PRED, target, 3)


def test_prediction_out_of_range_raises() -> None:
    pred = PRED.clone()
    pred[0, 0, 0] = 3
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(pred, TARGET, 3)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(PRED[0], TARGET, 3)
    with pytest.raises(TypeError, match="argmax"):
        confusion_matrix(PRED.float(), TARGET, 3)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(PRED, TARGET, 0)


def test_summarize_is_json_ready() -> None:
    cm = torch.tensor([[2, 0, 0], [0, 0, 2], [0, 0, 0]])  # class 2 predicted, absent in truth
    cm = torch.nn.functional.pad(cm, (0, 1, 0, 1))  # class 3 absent from both
    report = summarize(cm, ["bg", "cell", "edge", "other"])
    json.dumps(report, allow_nan=False)
    assert set(report) == {"pixel_accuracy", "mean_iou", "mean_dice", "per_class"}
    assert report["pixel_accuracy"] == pytest.approx(0.5)
    assert report["mean_iou"] == pytest.approx(1 / 3)
    assert list(report["per_class"]) == ["bg", "cell", "edge", "other"]
    assert report["per_class"]["bg"] == {
        "iou": 1.0,
        "dice": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "support": 2,
    }
    assert report["per_class"]["cell"]["precision"] is None
    assert report["per_class"]["edge"]["recall"] is None
    assert report["per_class"]["edge"]["support"] == 0
    assert report["per_class"]["other"] == {
        "iou": None,
        "dice": None,
        "precision": None,
        "recall": None,
        "support": 0,
    }
    with pytest.raises(ValueError, match="class names"):
        summarize(cm, ["a", "b"])


def test_summarize_empty_matrix_has_no_nan() -> None:
    report = summarize(torch.zeros(2, 2, dtype=torch.int64), ["a", "b"])
    json.dumps(report, allow_nan=False)
    assert report["pixel_accuracy"] is None and report["mean_iou"] is None


def test_meter_equals_matrix_of_concatenation() -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 5, 7), (1, 3, 3), (3, 4, 9)]
    preds = [torch.randint(0, 4, s, generator=gen) for s in shapes]
    targets = [torch.randint(-1, 4, s, generator=gen) for s in shapes]
    meter = ConfusionMatrixMeter(4)
    for p, t in zip(preds, targets):
        meter.update(p, t)
    flat_p = torch.cat([p.flatten() for p in preds])
    flat_t = torch.cat([t.flatten() for t in targets])
    expected = confusion_matrix(flat_p, flat_t, 4)
    assert torch.equal(meter.compute(), expected)
    assert torch.equal(meter.compute(), expected)  # compute does not consume
    meter.reset()
    assert meter.compute().tolist() == [[0] * 4] * 4
    meter.update(preds[0], targets[0])
    assert torch.equal(meter.compute(), confusion_matrix(preds[0], targets[0], 4))


def test_meter_reports_out_of_range_at_compute() -> None:
    meter = ConfusionMatrixMeter(3)
    bad = TARGET.clone()
    bad[0, 0, 0] = 7
    meter.update(PRED, bad)  # no check that would need the values here
    meter.update(PRED, TARGET)
    with pytest.raises(ValueError, match="outside"):
        meter.compute()
    meter.reset()
    meter.update(PRED, TARGET)
    assert meter.compute().tolist() == EXPECTED_CM


def test_meter_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        ConfusionMatrixMeter(3).update(PRED, TARGET[0])
