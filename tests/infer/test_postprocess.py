"""Post-processing against a brute-force component filter (an explicit flood fill), and its
choice on held-out predictions: a step is kept only when it raises the metric."""

from collections import deque

import numpy as np
import pytest
import torch

from unetseg.infer.postprocess import (
    Step,
    apply_postprocessing,
    choose_postprocessing,
    component_areas,
    fill_holes,
    foreground_dice,
    keep_largest_component,
    learned_min_size,
    remove_small_components,
)
from unetseg.metrics import confusion_matrix


def flood_components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """4-connected components of a boolean mask by breadth-first flood fill, in the raster
    order of their first pixel."""
    h, w = mask.shape
    seen = np.zeros_like(mask, bool)
    components = []
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or seen[y, x]:
                continue
            pixels, queue = [], deque([(y, x)])
            seen[y, x] = True
            while queue:
                cy, cx = queue.popleft()
                pixels.append((cy, cx))
                for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
            components.append(pixels)
    return components


def brute_largest(labels, c):
    out = labels.copy()
    components = flood_components(labels == c)
    if len(components) > 1:
        biggest = max(len(p) for p in components)
        keep = next(i for i, p in enumerate(components) if len(p) == biggest)
        for i, pixels in enumerate(components):
            if i != keep:
                for y, x in pixels:
                    out[y, x] = 0
    return out


def brute_small(labels, c, min_size):
    out = labels.copy()
    for pixels in flood_components(labels == c):
        if len(pixels) < min_size:
            for y, x in pixels:
                out[y, x] = 0
    return out


def brute_holes(labels, c):
    out = labels.copy()
    h, w = labels.shape
    for pixels in flood_components(labels != c):
        if not any(y in (0, h - 1) or x in (0, w - 1) for y, x in pixels):
            for y, x in pixels:
                out[y, x] = c
    return out


def random_labels(rng, shape, k, density):
    """Blobby random labels: random seeds grown by a few random neighbour copies."""
    labels = np.where(rng.random(shape) < density, rng.integers(1, k, shape), 0)
    for _ in range(2):
        shifted = np.roll(labels, rng.integers(-1, 2, 2), axis=(0, 1))
        labels = np.where(rng.random(shape) < 0.5, shifted, labels)
    return labels.astype(np.int64)


@pytest.mark.parametrize("seed", range(30))
def test_component_filters_equal_a_flood_fill(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 14, 2))
    k = int(rng.integers(2, 4))
    labels = random_labels(rng, shape, k, float(rng.uniform(0.2, 0.7)))
    for c in range(1, k):
        np.testing.assert_array_equal(keep_largest_component(labels, c), brute_largest(labels, c))
        size = int(rng.integers(1, 6))
        np.testing.assert_array_equal(remove_small_components(labels, c, size),
                                      brute_small(labels, c, size))
        np.testing.assert_array_equal(fill_holes(labels, c), brute_holes(labels, c))
        assert sorted(component_areas(labels, c).tolist()) == sorted(
            len(p) for p in flood_components(labels == c))


def test_the_steps_on_a_drawn_case():
    labels = np.array([[1, 1, 1, 0, 0, 0],
                       [1, 0, 1, 0, 1, 0],
                       [1, 1, 1, 0, 0, 0],
                       [0, 0, 0, 0, 2, 2],
                       [1, 0, 0, 0, 2, 0]])
    assert keep_largest_component(labels, 1)[[1, 4], [4, 0]].tolist() == [0, 0]
    assert fill_holes(labels, 1)[1, 1] == 1 and fill_holes(labels, 2)[4, 5] == 0  # border
    kept = remove_small_components(labels, 1, 2)
    assert kept[:3, :3].sum() == 8 and kept[1, 4] == 0 and kept[4, 0] == 0
    steps = (Step("largest_component", 1), Step("fill_holes", 1))
    done = apply_postprocessing(labels, steps)
    assert (done == 1).sum() == 9 and (done == 2).sum() == 3
    assert Step.from_dict(Step("remove_small", 2, 7).to_dict(["a", "b", "c"])) == Step(
        "remove_small", 2, 7)
    with pytest.raises(ValueError):
        Step("largest_component", 0)  # the background is never post-processed


def test_learned_min_size_is_a_low_percentile_of_true_areas():
    areas = np.arange(1, 101)
    assert learned_min_size(areas) == int(np.floor(np.percentile(areas, 5)))
    assert learned_min_size(np.zeros(0)) == 0


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _pooled(preds, truths, k):
    return sum(confusion_matrix(torch.from_numpy(p), torch.from_numpy(t), k)
               for p, t in zip(preds, truths))


def test_selection_keeps_the_largest_component_where_it_helps_and_nothing_else():
    rng = np.random.default_rng(0)
    truths, preds = [], []
    for i in range(4):  # one object per image; predictions add specks
        truth = _disc((40, 40), 15 + i, 20, 8).astype(np.int64)
        pred = truth.copy()
        pred[rng.integers(0, 40, 6), rng.integers(0, 40, 6)] = 1
        truths.append(truth)
        preds.append(pred)
    chosen = choose_postprocessing(preds, truths, 2, {1: 1})
    assert chosen.steps == (Step("largest_component", 1),)
    assert chosen.baseline == pytest.approx(foreground_dice(_pooled(preds, truths, 2)))
    cleaned = [keep_largest_component(p, 1) for p in preds]
    assert chosen.score == pytest.approx(foreground_dice(_pooled(cleaned, truths, 2)))
    assert chosen.score > chosen.baseline
    tried = {t.step.kind: t.kept for t in chosen.trials}
    assert tried == {"largest_component": True, "fill_holes": False}  # size 1: not tried


def test_selection_rejects_steps_that_hurt_and_keeps_a_helpful_small_object_filter():
    truths, preds = [], []
    for i in range(3):  # several objects with holes (rings); predictions add 2-pixel specks
        truth = np.zeros((48, 48), np.int64)
        for cy, cx in ((12, 12), (12, 34), (34, 22)):
            truth[_disc(truth.shape, cy + i, cx, 7) & ~_disc(truth.shape, cy + i, cx, 3)] = 1
        pred = truth.copy()
        pred[45, 2:4] = 1
        pred[2, 44:46] = 1
        truths.append(truth)
        preds.append(pred)
    areas = np.concatenate([component_areas(t, 1) for t in truths])
    chosen = choose_postprocessing(preds, truths, 2, {1: learned_min_size(areas)})
    assert chosen.steps == (Step("remove_small", 1, learned_min_size(areas)),)
    tried = {t.step.kind: t.kept for t in chosen.trials}
    assert tried == {"largest_component": False, "remove_small": True, "fill_holes": False}
    assert chosen.score == pytest.approx(1.0)


def test_selection_with_nothing_to_gain_keeps_nothing():
    truth = _disc((20, 20), 10, 10, 5).astype(np.int64)
    chosen = choose_postprocessing([truth], [truth], 2, {1: 3})
    assert chosen.steps == () and chosen.score == chosen.baseline == pytest.approx(1.0)
