"""MONAI's BasicUNet trained the plain way, outside unetseg's pipeline: the usual tutorial loop.

The reference the DSB 2018 comparison is held to: ``BasicUNet(spatial_dims=2)`` (features 32,
32, 64, 128, 256, 32), random 256 x 256 crops (zero-padded where an image is smaller), random
flips and quarter turns, MONAI's ``DiceCELoss``, AdamW at 1e-3 with no schedule, batch 4, the
input divided by 255, no validation: it trains on every training image until the budget is
spent and keeps the last weights. Prediction is one pass over the whole image, padded by
reflection to a multiple of 16; the scores come from the confusion matrix summed over the test
images (:mod:`unetseg.metrics`), as ``unetseg evaluate`` computes them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unetseg.data.io import read_image, read_mask
from unetseg.metrics import confusion_matrix, summarize

PATCH = 256
BATCH = 4


def _pairs(folder: Path) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Every ``images/`` + ``masks/`` pair as ``(image (C, H, W) float in [0, 1], ids (H, W)
    int64, stem)``; masks hold class values 0 and 1 (any non-zero value is 1)."""
    out = []
    for image_path in sorted((folder / "images").glob("*.png")):
        image = read_image(image_path)  # uint8 / 255
        mask = read_mask(folder / "masks" / image_path.name)
        out.append((image, (np.asarray(mask) > 0).astype(np.int64), image_path.stem))
    return out


def _crop(image: np.ndarray, ids: np.ndarray, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    _, h, w = image.shape
    ph, pw = max(0, PATCH - h), max(0, PATCH - w)
    if ph or pw:
        image = np.pad(image, ((0, 0), (0, ph), (0, pw)))
        ids = np.pad(ids, ((0, ph), (0, pw)))
    y = int(rng.integers(0, image.shape[1] - PATCH + 1))
    x = int(rng.integers(0, image.shape[2] - PATCH + 1))
    image, ids = image[:, y:y + PATCH, x:x + PATCH], ids[y:y + PATCH, x:x + PATCH]
    if rng.random() < 0.5:
        image, ids = image[:, :, ::-1], ids[:, ::-1]
    if rng.random() < 0.5:
        image, ids = image[:, ::-1], ids[::-1]
    k = int(rng.integers(0, 4))
    return np.rot90(image, k, axes=(1, 2)).copy(), np.rot90(ids, k).copy()


def train_plain_basicunet(train: Path, budget_s: float, seed: int) -> dict[str, Any]:
    """Train on every pair under ``train`` for ``budget_s`` s; the model and what it did."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pairs = _pairs(train)
    model = BasicUNet(spatial_dims=2, in_channels=pairs[0][0].shape[0], out_channels=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    model.train()
    began, steps = time.perf_counter(), 0
    while time.perf_counter() - began < budget_s:
        batch = [_crop(*pairs[int(i)][:2], rng) for i in rng.integers(0, len(pairs), BATCH)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]))
        y = torch.from_numpy(np.stack([b[1] for b in batch])).unsqueeze(1)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    return {"model": model.eval(), "steps": steps, "train_s": time.perf_counter() - began,
            "images_seen": steps * BATCH}


@torch.no_grad()
def score_plain(model: torch.nn.Module, test: Path, class_names: tuple[str, ...]
                ) -> dict[str, Any]:
    """``unetseg.metrics.summarize`` of the confusion matrix summed over ``test``'s pairs."""
    total = torch.zeros(len(class_names), len(class_names), dtype=torch.int64)
    for image, ids, _ in _pairs(test):
        _, h, w = image.shape
        x = torch.from_numpy(image).unsqueeze(0)
        x = F.pad(x, (0, -w % 16, 0, -h % 16), mode="reflect")
        pred = model(x)[0, :, :h, :w].argmax(0)
        total += confusion_matrix(pred, torch.from_numpy(ids), len(class_names))
    return summarize(total, class_names)
