"""Tests for unetseg.data.classes.ClassTable."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unetseg.data.classes import IGNORE_INDEX, ClassTable
from unetseg.errors import UserError

RNG = np.random.default_rng(1)


def test_encode_decode_round_trip_with_ignore() -> None:
    table = ClassTable.from_values([255, 0, 7, 3], ignore_value=9)
    raw = RNG.choice([0, 3, 7, 9, 255], size=(13, 17)).astype(np.uint8)
    ids = table.encode(raw)
    assert ids.dtype == np.int16 and ids.shape == raw.shape
    # reference: position of each value in the sorted table, computed by search
    expected = np.searchsorted([0, 3, 7, 255], raw)
    expected[raw == 9] = IGNORE_INDEX
    np.testing.assert_array_equal(ids, expected)
    back = table.decode(ids)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, raw)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64, bool])
def test_encode_any_integer_dtype(dtype: type) -> None:
    table = ClassTable.from_values([0, 1])
    raw = RNG.integers(0, 2, (5, 6))
    np.testing.assert_array_equal(table.encode(raw.astype(dtype)), raw)


def test_unknown_values_are_listed() -> None:
    table = ClassTable.from_values([0, 255])
    raw = np.array([[0, 7], [9, 255], [7, 7]], np.uint8)
    with pytest.raises(UserError) as err:
        table.encode(raw, source="masks/a.png")
    assert str(err.value) == (
        "masks/a.png: mask values [7, 9] are not in the class table (values 0, 255); "
        "pass --classes or fix the mask"
    )


def test_unknown_values_wide_dtypes() -> None:
    table = ClassTable.from_values([0, 1])
    with pytest.raises(UserError, match=r"\[-3, 100000\]"):
        table.encode(np.array([[0, -3], [100000, 1]], np.int64))
    with pytest.raises(UserError, match=r"\[300\]"):
        table.encode(np.array([[0, 300]], np.uint16))


def test_decode_wide_values_and_ignore_fill() -> None:
    table = ClassTable.from_values([0, 1000])
    out = table.decode(np.array([[0, 1, -1]]))
    assert out.dtype == np.uint16 and out.tolist() == [[0, 1000, 0]]
    with_ignore = ClassTable.from_values([0, 1], ignore_value=255)
    assert with_ignore.decode(np.array([-1, 1])).tolist() == [255, 1]
    with pytest.raises(ValueError):
        table.decode(np.array([2]))


def test_infer_binary_masks() -> None:
    masks = [("a", np.array([[0, 255]], np.uint8)), ("b", np.zeros((2, 2), np.uint8))]
    table = ClassTable.infer(iter(masks))
    assert table.values == (0, 255) and table.names == ("background", "foreground")
    assert table.num_classes == 2
    assert ClassTable.infer([("a", np.array([[0, 1]], np.uint8))]).names == (
        "background",
        "foreground",
    )


def test_infer_default_names_and_ignore() -> None:
    raw = np.array([[0, 1, 2], [11, 11, 2]], np.uint8)
    table = ClassTable.infer([("m", raw)], ignore_value=11)
    assert table.values == (0, 1, 2)
    assert table.names == ("class_0", "class_1", "class_2")
    assert table.ignore_value == 11
    assert table.encode(raw).tolist() == [[0, 1, 2], [-1, -1, 2]]


def test_infer_int32_masks() -> None:
    table = ClassTable.infer([("m", np.array([[5, 60000]], np.int32))])
    assert table.values == (5, 60000)
    with pytest.raises(UserError, match=r"big\.tif: mask has the value 70000"):
        ClassTable.infer([("big.tif", np.array([[5, 70000]], np.int32))])


def test_infer_needs_two_values() -> None:
    with pytest.raises(UserError, match=r"masks/x\.png.*only the value 255.*at least 2"):
        ClassTable.infer([("masks/x.png", np.full((3, 3), 255, np.uint8))])
    with pytest.raises(UserError, match="no masks"):
        ClassTable.infer([])


def test_infer_names_must_match_count() -> None:
    masks = [("m", np.array([[0, 1, 2]], np.uint8))]
    assert ClassTable.infer(masks, names=["a", "b", "c"]).names == ("a", "b", "c")
    with pytest.raises(UserError, match="2 class names given for 3 class values"):
        ClassTable.infer(masks, names=["a", "b"])


def test_from_values_sorts_names_along() -> None:
    table = ClassTable.from_values([255, 0], names=["cell", "membrane"])
    assert table.values == (0, 255) and table.names == ("membrane", "cell")


@pytest.mark.parametrize(
    "values,ignore,match",
    [
        ([0, 0, 1], None, "duplicates"),
        ([0, 1], 1, "ignore value 1"),
        ([0], None, "at least 2"),
        ([0, 70000], None, "0..65535"),
        ([-1, 2], None, "0..65535"),
    ],
)
def test_from_values_rejects(values: list[int], ignore: int | None, match: str) -> None:
    with pytest.raises(UserError, match=match):
        ClassTable.from_values(values, ignore_value=ignore)


def test_dict_round_trip_through_json() -> None:
    table = ClassTable.from_values([0, 4, 2], names=["a", "c", "b"], ignore_value=255)
    back = ClassTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert back == table
    with pytest.raises(ValueError):
        ClassTable.from_dict({"values": [0, 1]})
