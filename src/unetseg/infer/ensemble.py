"""Several models as one: the mean of their class probabilities.

:class:`EnsembleNet` is a module from windows as read (not normalised) to the log of the
members' mean class probabilities. Each member normalises the window with its own training
statistics (fold models each have their own) and predicts it as it would alone, with
test-time augmentation when asked (the mean of its logits over the transforms); the members'
softmax probabilities are averaged. Its log is returned as the "logits": their softmax is the
mean probability again, and their argmax its most probable class, so everything that reads
logits (labels, probability TIFFs, the ISBI metrics) works on it unchanged.

Because it is a module with a :class:`~unetseg.config.ModelConfig`, an ensemble goes through
the same tiling, blending, bf16 check and band-by-band streaming as one model: an
:class:`~unetseg.infer.engine.ImagePredictor` over it with :func:`identity_stats` (the members
normalise inside), or with a per-image z-score for members normalised per image
(:func:`split_normalisation`). Members must take the same channels and classes and share
padding; valid padding also needs one depth (the windows' geometry).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from unetseg.config import PredictConfig
from unetseg.data.normalize import ChannelStats, normalize
from unetseg.errors import UserError
from unetseg.infer.engine import ImagePredictor, resolve_device
from unetseg.infer.tta import with_tta
from unetseg.model import model_config
from unetseg.modelfile import ModelCard, load_model

MIN_PROBABILITY = 1e-30
"""Probabilities are clamped here before the log, so a class no member predicts stays finite."""


def identity_stats(channels: int) -> ChannelStats:
    """Mean 0 and standard deviation 1 per channel: normalisation that changes nothing."""
    return ChannelStats((0.0,) * channels, (1.0,) * channels)


def split_normalisation(stats: Sequence[ChannelStats]) -> tuple[ChannelStats, list[ChannelStats]]:
    """(the ensemble's own normalisation, each member's inside it) for members normalised by
    ``stats``. Members normalised per image (the ``image`` scheme) need the whole image's
    statistics, which a window does not have: the ensemble then z-scores each image before
    tiling (its card says ``image``) and the members take it as it is. Otherwise the ensemble
    passes images as read and each member normalises every window with its own statistics.

    Raises:
        UserError: some members are normalised per image and others not.
    """
    channels = stats[0].channels
    per_image = [s.scheme == "image" for s in stats]
    if all(per_image):
        outer = ChannelStats((0.0,) * channels, (1.0,) * channels, "image")
        return outer, [identity_stats(channels)] * len(stats)
    if any(per_image):
        raise UserError("a model set mixes models normalised per image with others; use models"
                        " trained with one --normalization")
    return identity_stats(channels), list(stats)


def probabilities_to_logits(probabilities: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax (sigmoid for one class) gives ``probabilities`` (B, K, H, W) back:
    their log for K > 1, their logit for K = 1."""
    p = probabilities.clamp_min(MIN_PROBABILITY)
    if probabilities.shape[1] == 1:
        return torch.log(p) - torch.log((1 - probabilities).clamp_min(MIN_PROBABILITY))
    return torch.log(p)


class EnsembleNet(nn.Module):
    """Members' mean class probabilities, as log-probabilities (see the module's text).

    Args:
        members: models in eval mode on one device.
        stats: each member's normalisation.
        tta: test-time augmentation of each member (``flip``, ``d4``, ``rot:N``) or None.

    Shape:
        (B, C, h, w) as read -> (B, K, h', w'), as one member.
    """

    def __init__(self, members: Sequence[nn.Module], stats: Sequence[ChannelStats],
                 tta: str | None = None):
        super().__init__()
        if not members or len(members) != len(stats):
            raise ValueError("an ensemble needs one normalisation per member, and a member")
        configs = [model_config(m) for m in members]
        first = configs[0]
        for cfg in configs[1:]:
            if (cfg.in_channels, cfg.num_classes, cfg.padding) != (
                    first.in_channels, first.num_classes, first.padding):
                raise ValueError("members must take the same channels, give the same classes"
                                 " and share padding")
            if first.padding == "valid" and cfg.depth != first.depth:
                raise ValueError("valid-padding members must have one depth")
        depth = max(c.depth for c in configs)
        self.config = dataclasses.replace(first, depth=depth)
        self.members = nn.ModuleList(members)
        self.stats = list(stats)
        self.tta = tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for member, stats in zip(self.members, self.stats):
            predictor = with_tta(member, self.tta)
            logits = predictor(normalize(x, stats)).float()
            p = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)
            total = p if total is None else total + p
        assert total is not None
        return probabilities_to_logits(total / len(self.members))


def ensemble_card(cards: Sequence[ModelCard], net: EnsembleNet, sources: Sequence[str]
                  ) -> ModelCard:
    """The card of an ensemble: the members' shared geometry and class table, the ensemble's
    own normalisation (:func:`split_normalisation`: the identity, the members normalising
    inside, or a per-image z-score), the member files in ``info``."""
    outer, _ = split_normalisation([c.stats for c in cards])
    return ModelCard(net.config, cards[0].classes, outer, info={"members": list(sources)})


def check_members(paths: Sequence[Path], cards: Sequence[ModelCard]) -> None:
    """:class:`UserError` naming the first member whose class table or input differs from the
    first member's."""
    first = cards[0]
    for path, card in zip(paths, cards):
        if card.instance is not None:
            raise UserError(f"{path}: an instance model; model sets average class"
                            " probabilities of semantic models, so predict instance models one"
                            " at a time")
    for path, card in zip(paths[1:], cards[1:]):
        if card.classes != first.classes:
            raise UserError(f"{path}: trained on another class table than {paths[0]}"
                            f" ({', '.join(card.classes.names)} against"
                            f" {', '.join(first.classes.names)}); a model set needs models of"
                            " one class table")
        ours, theirs = card.model, first.model
        if (ours.in_channels, ours.padding) != (theirs.in_channels, theirs.padding) or (
                ours.padding == "valid" and ours.depth != theirs.depth):
            raise UserError(f"{path}: takes other input than {paths[0]} (channels"
                            f" {ours.in_channels}/{theirs.in_channels}, padding"
                            f" {ours.padding}/{theirs.padding}); a model set needs one input")


def load_ensemble(paths: Sequence[str | Path], device: torch.device | str = "cpu",
                  tta: str | None = None) -> tuple[EnsembleNet, ModelCard]:
    """An :class:`EnsembleNet` of model files, in eval mode on ``device``, with its card."""
    files = [Path(p) for p in paths]
    loaded = [load_model(p, device) for p in files]
    cards = [card for _, card in loaded]
    check_members(files, cards)
    _, inner = split_normalisation([c.stats for c in cards])
    net = EnsembleNet([m for m, _ in loaded], inner, tta=tta).eval()
    return net, ensemble_card(cards, net, [str(p) for p in files])


def load_ensemble_predictor(paths: Sequence[str | Path], config: PredictConfig
                            ) -> tuple[ImagePredictor, ModelCard]:
    """A ready :class:`ImagePredictor` of the ensemble of ``paths``: ``config``'s tiling,
    device and precision; its test-time augmentation applied to each member."""
    from unetseg.infer.tta import parse_tta

    config.check()
    try:
        parse_tta(config.tta)
    except ValueError as exc:
        raise UserError(f"--tta {config.tta}: {exc}") from None
    net, card = load_ensemble(paths, resolve_device(config.device), config.tta)
    predictor = ImagePredictor(net, card.stats, tile=config.tile, overlap=config.overlap,
                               batch_size=config.batch_size, fast_layout=True,
                               precision=config.precision)
    return predictor, card
