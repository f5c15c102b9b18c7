"""Losses against torch's own functions, explicit loops and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unetseg.losses import (
    LOSS_NAMES,
    build_loss,
    cross_entropy,
    focal_loss,
    soft_dice_loss,
)

K = 3


def make_batch(seed: int = 0, n: int = 2, h: int = 5, w: int = 6) -> tuple[torch.Tensor, ...]:
    """Random float64 logits (N, K, H, W), targets with some -1, pixel weights (N, H, W)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, K, h, w, generator=gen, dtype=torch.float64)
    target = torch.randint(0, K, (n, h, w), generator=gen)
    target[torch.rand(n, h, w, generator=gen) < 0.2] = -1
    pixel_weights = torch.rand(n, h, w, generator=gen, dtype=torch.float64) * 3
    return logits, target, pixel_weights


def softmax_np(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- cross-entropy


def test_cross_entropy_matches_torch() -> None:
    logits, target, _ = make_batch()
    expected = F.cross_entropy(logits, target, ignore_index=-1)
    torch.testing.assert_close(cross_entropy(logits, target), expected)


def test_class_weighted_cross_entropy_matches_torch() -> None:
    logits, target, _ = make_batch(1)
    weights = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=-1)
    torch.testing.assert_close(cross_entropy(logits, target, class_weights=weights), expected)
    got = cross_entropy(logits, target, class_weights=(0.2, 1.0, 3.0))
    torch.testing.assert_close(got, expected)


def test_pixel_weighted_cross_entropy_matches_loop() -> None:
    logits, target, pixel_weights = make_batch(2)
    probs = softmax_np(logits.numpy())
    total, count = 0.0, 0
    n, _, h, w = logits.shape
    for b in range(n):
        for y in range(h):
            for x in range(w):
                t = int(target[b, y, x])
                if t == -1:
                    continue
                total += float(pixel_weights[b, y, x]) * -math.log(probs[b, t, y, x])
                count += 1
    got = cross_entropy(logits, target, pixel_weights=pixel_weights)
    assert float(got) == pytest.approx(total / count, rel=1e-10)


def test_unit_pixel_weights_are_plain_cross_entropy() -> None:
    logits, target, _ = make_batch(3)
    ones = torch.ones(target.shape, dtype=torch.float64)
    torch.testing.assert_close(
        cross_entropy(logits, target, pixel_weights=ones), cross_entropy(logits, target)
    )


# ----------------------------------------------------------------------------- soft Dice


def test_soft_dice_of_confident_correct_logits_is_zero() -> None:
    _, target, _ = make_batch(4)
    target[target == 2] = 0  # class 2 absent from the truth
    logits = 20.0 * F.one_hot(target.clamp(min=0), K).movedim(-1, 1).double()
    assert float(soft_dice_loss(logits, target)) < 1e-6
    assert float(soft_dice_loss(-logits, target)) > 0.9


def test_soft_dice_hand_computed() -> None:
    # one 1x4 image, 3 classes; class 2 is neither in the truth nor the arg-max prediction
    logits = torch.tensor(
        [[[[2.0, 0.5, -1.0, 0.0]], [[0.0, 1.0, 1.5, 0.2]], [[-1.0, 0.0, 0.0, 3.0]]]],
        dtype=torch.float64,
    )
    target = torch.tensor([[[0, 1, 1, -1]]])
    smooth = 1e-5
    probs = softmax_np(logits.numpy())[0, :, 0, :3]  # (K, valid pixels), last one ignored
    truth = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=np.float64)
    dice = (2 * (probs * truth).sum(1) + smooth) / (probs.sum(1) + truth.sum(1) + smooth)
    assert probs.argmax(0).tolist() == [0, 1, 1]  # so only classes 0 and 1 are present
    expected = 1 - dice[:2].mean()
    got = soft_dice_loss(logits, target, smooth=smooth)
    assert float(got) == pytest.approx(expected, rel=1e-10)
    no_bg = soft_dice_loss(logits, target, smooth=smooth, include_background=False)
    assert float(no_bg) == pytest.approx(1 - dice[1], rel=1e-10)


def test_soft_dice_counts_a_falsely_predicted_class() -> None:
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    logits = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    logits[0, 1, 0, 0] = 5.0  # one pixel predicted as class 1, absent from the truth
    probs = softmax_np(logits.numpy())[0].reshape(2, -1)
    truth = np.array([[1, 1, 1, 1], [0, 0, 0, 0]], dtype=np.float64)
    dice = (2 * (probs * truth).sum(1) + 1e-5) / (probs.sum(1) + truth.sum(1) + 1e-5)
    assert float(soft_dice_loss(logits, target)) == pytest.approx(1 - dice.mean(), rel=1e-10)


# ----------------------------------------------------------------------------- focal


def test_focal_with_gamma_zero_is_cross_entropy() -> None:
    logits, target, _ = make_batch(5)
    torch.testing.assert_close(focal_loss(logits, target, gamma=0.0), cross_entropy(logits, target))


def test_focal_matches_formula() -> None:
    logits, target, _ = make_batch(6)
    weights = np.array([0.5, 1.0, 2.0])
    probs = softmax_np(logits.numpy())
    t = target.numpy()
    valid = t != -1
    pt = np.take_along_axis(probs, np.where(valid, t, 0)[:, None], axis=1)[:, 0]
    per_pixel = -weights[np.where(valid, t, 0)] * (1 - pt) ** 2 * np.log(pt)
    expected = per_pixel[valid].mean()
    got = focal_loss(logits, target, gamma=2.0, class_weights=torch.from_numpy(weights))
    assert float(got) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(logits, target, gamma=-1.0)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_gradients_finite_when_certain(gamma: float) -> None:
    target = torch.tensor([[[0, 1]]])
    logits = (200.0 * F.one_hot(target, 2).movedim(-1, 1).float()).requires_grad_()
    focal_loss(logits, target, gamma=gamma).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------- shared rules


def all_losses() -> dict[str, object]:
    return {
        "ce": lambda lg, t, pw: cross_entropy(lg, t),
        "ce_class_weights": lambda lg, t, pw: cross_entropy(lg, t, class_weights=[1.0, 2.0, 0.5]),
        "weighted_ce": lambda lg, t, pw: cross_entropy(lg, t, pixel_weights=pw),
        "dice": lambda lg, t, pw: soft_dice_loss(lg, t),
        "focal": lambda lg, t, pw: focal_loss(lg, t, class_weights=[1.0, 2.0, 0.5]),
        **{f"build:{name}": build_loss(name) for name in LOSS_NAMES},
    }


@pytest.mark.parametrize("name", list(all_losses()))
def test_ignored_pixels_change_nothing(name: str) -> None:
    loss_fn = all_losses()[name]
    logits, target, pixel_weights = make_batch(7)
    ignored = (target == -1).unsqueeze(1).expand_as(logits)
    other = logits.clone()
    other[ignored] = 50.0 * torch.randn(int(ignored.sum()), dtype=torch.float64)
    other_weights = pixel_weights.clone()
    other_weights[target == -1] = 100.0

    a = logits.clone().requires_grad_()
    b = other.clone().requires_grad_()
    loss_a = loss_fn(a, target, pixel_weights)  # type: ignore[operator]
    loss_b = loss_fn(b, target, other_weights)  # type: ignore[operator]
    loss_a.backward()
    loss_b.backward()
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(a.grad, b.grad)
    assert a.grad is not None and float(a.grad[ignored].abs().max()) == 0.0


@pytest.mark.parametrize("name", list(all_losses()))
def test_all_ignored_batch_gives_zero_with_finite_grad(name: str) -> None:
    loss_fn = all_losses()[name]
    logits, target, pixel_weights = make_batch(8)
    logits.requires_grad_()
    loss = loss_fn(logits, torch.full_like(target, -1), pixel_weights)  # type: ignore[operator]
    assert loss.ndim == 0 and float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", list(all_losses()))
def test_half_precision_logits_are_computed_in_float32(name: str) -> None:
    loss_fn = all_losses()[name]
    logits, target, pixel_weights = make_batch(9)
    loss = loss_fn(logits.bfloat16(), target, pixel_weights.float())  # type: ignore[operator]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("loss_fn", [cross_entropy, soft_dice_loss, focal_loss])
def test_spatial_size_mismatch_raises(loss_fn: object) -> None:
    logits, target, _ = make_batch(10, h=6, w=6)
    with pytest.raises(ValueError, match="crop"):
        loss_fn(logits, target[:, 1:-1, 1:-1])  # type: ignore[operator]
    with pytest.raises(ValueError, match="crop"):
        loss_fn(logits[..., 1:-1, 1:-1], target)  # type: ignore[operator]


def test_bad_arguments_raise() -> None:
    logits, target, pixel_weights = make_batch(11)
    with pytest.raises(ValueError, match="one weight per class"):
        cross_entropy(logits, target, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="pixel_weights"):
        cross_entropy(logits, target, pixel_weights=pixel_weights[0])
    with pytest.raises(ValueError, match="2 classes"):
        soft_dice_loss(logits[:, :1], target.clamp(max=0))
    with pytest.raises(TypeError, match="integer"):
        focal_loss(logits, target.double())


# ----------------------------------------------------------------------------- build_loss


def test_build_loss_names() -> None:
    assert set(LOSS_NAMES) == {"dice_ce", "ce", "dice", "focal", "weighted-ce"}
    logits, target, pixel_weights = make_batch(12)
    weights = (0.5, 1.0, 2.0)
    ce = cross_entropy(logits, target, class_weights=weights)
    dice = soft_dice_loss(logits, target)
    torch.testing.assert_close(build_loss("ce", class_weights=weights)(logits, target), ce)
    torch.testing.assert_close(build_loss("dice")(logits, target, pixel_weights), dice)
    torch.testing.assert_close(
        build_loss("dice_ce", class_weights=weights)(logits, target, pixel_weights), ce + dice
    )
    torch.testing.assert_close(
        build_loss("focal", class_weights=weights)(logits, target),
        focal_loss(logits, target, class_weights=weights),
    )
    weighted = cross_entropy(logits, target, pixel_weights=pixel_weights)
    torch.testing.assert_close(build_loss("weighted-ce")(logits, target, pixel_weights), weighted)
    torch.testing.assert_close(build_loss("ce")(logits, target, pixel_weights), weighted)


def test_build_loss_custom_ignore_index() -> None:
    logits, target, _ = make_batch(13)
    relabelled = torch.where(target == -1, 255, target)
    for name in ("dice_ce", "ce", "dice", "focal"):
        torch.testing.assert_close(
            build_loss(name, ignore_index=255)(logits, relabelled),
            build_loss(name)(logits, target),
        )


def test_build_loss_errors() -> None:
    with pytest.raises(ValueError, match="dice_ce, ce, dice, focal, weighted-ce"):
        build_loss("tversky")
    logits, target, _ = make_batch(14)
    with pytest.raises(ValueError, match="pixel weight"):
        build_loss("weighted-ce")(logits, target)


def test_distance_loss_is_the_mse_of_the_sigmoid_over_valid_pixels() -> None:
    from unetseg.losses import distance_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, generator=g, requires_grad=True)
    distance = torch.rand(2, 5, 6, generator=g)
    target = torch.randint(0, 2, (2, 5, 6), generator=g)
    target[0, :2] = -1
    valid = target != -1
    expected = ((torch.sigmoid(logits) - distance)[valid] ** 2).mean()
    loss = distance_loss(logits, distance, target)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert logits.grad is not None and (logits.grad[~valid] == 0).all()
    nothing = distance_loss(logits, distance, torch.full_like(target, -1))
    assert nothing.item() == 0.0


def test_instance_loss_adds_the_weighted_distance_term() -> None:
    from unetseg.losses import build_instance_loss, build_loss, distance_loss

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    ids = torch.randint(0, 2, (2, 4, 4), generator=g)
    distance = torch.rand(2, 4, 4, generator=g)
    combined = build_instance_loss("dice_ce", "distance", distance_weight=0.5)
    expected = (build_loss("dice_ce")(logits[:, :2], ids)
                + 0.5 * distance_loss(logits[:, 2], distance, ids))
    assert torch.allclose(combined(logits, ids, distance), expected)
    boundary = build_instance_loss("ce", "boundary")
    three = torch.randint(0, 3, (2, 4, 4), generator=g)
    assert torch.allclose(boundary(logits, three), build_loss("ce")(logits, three))
    with pytest.raises(ValueError, match="3 output channels"):
        combined(logits[:, :2], ids, distance)
