"""Cross-validation folds: which images are held out together.

Images from one source (slices of one stack, tiles of one slide, frames of one video) look
alike, so a fold that trains on one of them and is scored on its neighbour scores too high.
The source is read from the stems alone:

* a stem that ends in a number, after an optional separator (``-``, ``_``, ``.`` or a space),
  belongs to the group named by what comes before: ``caseA_01`` and ``caseA-02`` to
  ``caseA``, ``slice07`` to ``slice``, ``00`` to the group with the empty name;
* any other stem is a group of its own (it shares a group only with numbered stems whose
  prefix it equals).

**Groups dealt whole** when there are at least as many groups as folds: the groups, largest
first (equal sizes in an order drawn from the seed), each go to the fold holding the fewest
images so far (the lowest-numbered of those). Equal groups (one image each, as for the
hash-named images of the 2018 Data Science Bowl) are thus dealt round-robin in a seeded
random order.

**Contiguous blocks** otherwise: fewer groups than folds means one or a few numbered stacks
(ISBI 2012's ``00`` .. ``29`` are one group), whose neighbouring slices should stay together.
The stems in natural order (by group, then by number) are cut into ``folds`` contiguous blocks
whose sizes differ by at most one, and the seed decides which block is which fold.

Either way the split depends only on the stems, the number of folds and the seed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from unetseg.errors import UserError

_NUMBERED = re.compile(r"^(?P<prefix>.*?)[-_. ]*(?P<number>\d+)$")

GROUPING_RULE = ("a stem ending in a number (after an optional -, _, . or space) belongs to the"
                 " group named by what comes before it (caseA_01, caseA_02 -> caseA); other"
                 " stems are groups of their own. With at least as many groups as folds whole"
                 " groups are dealt to the folds; otherwise the stems in natural order are cut"
                 " into contiguous blocks, so neighbouring slices stay together")


def stem_group(stem: str) -> tuple[str, int | None]:
    """The group of ``stem`` and its number in the group (None for an unnumbered stem)."""
    match = _NUMBERED.match(stem)
    if match is None:
        return stem, None
    return match["prefix"], int(match["number"])


def natural_key(stem: str) -> tuple[str, int, str]:
    """Sort key: by group, then by number (``img2`` before ``img10``), then by the stem."""
    group, number = stem_group(stem)
    return group, -1 if number is None else number, stem


@dataclass(frozen=True)
class FoldSplit:
    """The held-out stems of each fold (``held_out[i]``, in natural order) and how they were
    split: ``"groups"`` (whole groups dealt) or ``"blocks"`` (contiguous blocks)."""

    held_out: tuple[tuple[str, ...], ...]
    method: str

    @property
    def folds(self) -> int:
        return len(self.held_out)

    def fold_of(self, stem: str) -> int:
        """The fold that holds ``stem`` out."""
        return next(i for i, stems in enumerate(self.held_out) if stem in stems)


def split_folds(stems: Sequence[str], folds: int, seed: int) -> FoldSplit:
    """Split ``stems`` into ``folds`` folds by the module's rule.

    Raises:
        UserError: fewer than 2 folds, fewer stems than folds, or a stem given twice.
    """
    if folds < 2:
        raise UserError(f"--folds {folds}: cross-validation needs at least 2 folds; e.g."
                        " --folds 5")
    if len(stems) < folds:
        raise UserError(f"--folds {folds}: the data has only {len(stems)} image/mask pairs;"
                        f" give at most --folds {len(stems)}")
    if len(set(stems)) != len(stems):
        raise UserError("cross-validation needs distinct stems; the data has a stem twice")
    ordered = sorted(stems, key=natural_key)
    groups: dict[str, list[str]] = {}
    for stem in ordered:
        groups.setdefault(stem_group(stem)[0], []).append(stem)
    rng = np.random.default_rng(seed)
    if len(groups) >= folds:
        names = sorted(groups)
        draw = rng.permutation(len(names))
        order = sorted(range(len(names)), key=lambda i: (-len(groups[names[i]]), draw[i]))
        dealt: list[list[str]] = [[] for _ in range(folds)]
        for i in order:
            target = min(range(folds), key=lambda f: (len(dealt[f]), f))
            dealt[target].extend(groups[names[i]])
        held = [tuple(sorted(d, key=natural_key)) for d in dealt]
        return FoldSplit(tuple(held), "groups")
    sizes = [len(ordered) // folds + (1 if b < len(ordered) % folds else 0) for b in range(folds)]
    starts = np.cumsum([0, *sizes])
    blocks = [tuple(ordered[starts[b]:starts[b + 1]]) for b in range(folds)]
    which = rng.permutation(folds)  # block b is fold which[b]
    held_out: list[tuple[str, ...]] = [()] * folds
    for b, block in enumerate(blocks):
        held_out[int(which[b])] = block
    return FoldSplit(tuple(held_out), "blocks")


class _Stemmed(Protocol):
    @property
    def stem(self) -> str: ...


T = TypeVar("T", bound=_Stemmed)


def split_by_stems(items: Sequence[T], held_out: Sequence[str]) -> tuple[list[T], list[T]]:
    """``(train, held out)``: the items whose stem is in ``held_out`` go to the second list;
    both keep the input order.

    Raises:
        UserError: a held-out stem that no item has (the data changed since the split).
    """
    wanted = set(held_out)
    missing = sorted(wanted - {item.stem for item in items})
    if missing:
        raise UserError(f"{missing[0]}: held out for validation but not in the data"
                        f" ({len(missing)} such stem(s)); the data folder changed since the"
                        " folds were split: restore it or start the run afresh")
    train = [item for item in items if item.stem not in wanted]
    val = [item for item in items if item.stem in wanted]
    if not train:
        raise UserError("every image is held out for validation; hold out fewer")
    return train, val
