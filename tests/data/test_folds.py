"""Cross-validation folds: reproducible from the seed, one source held out together, stacks
cut into contiguous blocks."""

from dataclasses import dataclass

import pytest

from unetseg.data.folds import natural_key, split_by_stems, split_folds, stem_group
from unetseg.errors import UserError


def test_stem_groups_follow_the_rule():
    assert stem_group("caseA_01") == ("caseA", 1)
    assert stem_group("caseA-02") == ("caseA", 2)
    assert stem_group("slice07") == ("slice", 7)
    assert stem_group("00") == ("", 0)
    assert stem_group("patient3_slice12") == ("patient3_slice", 12)
    assert stem_group("0001TP_006690") == ("0001TP", 6690)  # a CamVid frame: its sequence
    assert stem_group("cells") == ("cells", None)
    assert sorted(["img10", "img2", "img1"], key=natural_key) == ["img1", "img2", "img10"]


def _every_stem_once(split, stems):
    held = [s for fold in split.held_out for s in fold]
    assert sorted(held) == sorted(stems)


def test_groups_are_held_out_together_and_the_seed_reproduces_the_split():
    stems = [f"case{c}_{i:02d}" for c in "ABCDEFG" for i in range(3 + (c in "AB"))]
    split = split_folds(stems, 3, seed=4)
    assert split.method == "groups"
    _every_stem_once(split, stems)
    for case in "ABCDEFG":
        folds = {split.fold_of(s) for s in stems if s.startswith(f"case{case}_")}
        assert len(folds) == 1, f"case{case} is on both sides"
    sizes = [len(f) for f in split.held_out]
    assert max(sizes) - min(sizes) <= 4  # balanced to within the largest group
    assert split_folds(list(reversed(stems)), 3, seed=4) == split  # order given does not matter
    others = {split_folds(stems, 3, seed=s) for s in range(8)}
    assert len(others) > 1  # the seed decides


def test_single_images_are_dealt_round_robin_in_a_seeded_order():
    stems = [f"{h:08x}" + "ab" for h in range(0, 10_000_000, 1_000_001)]  # hash-like, unnumbered
    split = split_folds(stems, 5, seed=0)
    assert split.method == "groups"
    assert [len(f) for f in split.held_out] == [2, 2, 2, 2, 2]
    _every_stem_once(split, stems)


def test_one_stack_is_cut_into_contiguous_blocks():
    stems = [f"{i:02d}" for i in range(30)]  # ISBI 2012: one group
    split = split_folds(stems, 5, seed=1)
    assert split.method == "blocks"
    blocks = sorted(split.held_out)
    assert blocks == [tuple(f"{i:02d}" for i in range(b * 6, b * 6 + 6)) for b in range(5)]
    assert split_folds(stems, 5, seed=1) == split
    assert len({split_folds(stems, 5, seed=s).held_out for s in range(6)}) > 1
    uneven = split_folds([f"s{i}" for i in range(12)], 5, seed=0)
    assert sorted(len(f) for f in uneven.held_out) == [2, 2, 2, 3, 3]
    for fold in uneven.held_out:  # contiguous in natural order
        numbers = [int(s[1:]) for s in fold]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))


def test_fewer_groups_than_folds_fall_back_to_blocks_in_natural_order():
    stems = [f"{seq}_{i}" for seq in ("0001TP", "0006R0", "Seq05VD") for i in range(5)]
    split = split_folds(stems, 5, seed=0)
    assert split.method == "blocks"  # 3 groups < 5 folds
    order = sorted(stems, key=natural_key)
    for fold in split.held_out:  # a run of neighbours: within a sequence, or across its end
        first = order.index(fold[0])
        assert list(fold) == order[first:first + 3]


def test_impossible_splits_are_refused_in_one_line():
    with pytest.raises(UserError, match="at least 2 folds"):
        split_folds(["a", "b"], 1, 0)
    with pytest.raises(UserError, match="only 3 image/mask pairs"):
        split_folds(["a1", "a2", "a3"], 5, 0)


@dataclass
class Item:
    stem: str


def test_split_by_stems_holds_out_exactly_those():
    items = [Item(s) for s in ("a", "b", "c", "d")]
    train, val = split_by_stems(items, ["d", "b"])
    assert [i.stem for i in train] == ["a", "c"] and [i.stem for i in val] == ["b", "d"]
    with pytest.raises(UserError, match="changed since the folds were split"):
        split_by_stems(items, ["e"])
