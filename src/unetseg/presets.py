"""Training recipes as :class:`~unetseg.config.RunConfig` builders.

``unetseg train DATA --preset paper`` starts from :func:`paper_preset`; every flag given on the
command line still overrides its field. ``fit(data, out, preset("paper"))`` does the same in
Python.
"""

from __future__ import annotations

from collections.abc import Callable

from unetseg.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from unetseg.errors import UserError


def default_preset() -> RunConfig:
    """The toolkit's defaults: same padding, instance norm, Dice + cross-entropy, AdamW with a
    cosine schedule, 256-pixel crops in batches of 4 (see :mod:`unetseg.config`)."""
    return RunConfig()


def paper_preset() -> RunConfig:
    """The recipe of the U-Net paper (Ronneberger, Fischer, Brox, MICCAI 2015).

    Section numbers are the paper's.

    * Sec. 2, Fig. 1: unpadded ("valid") 3x3 convolutions, so the output is smaller than the
      input; 2x2 up-convolutions that halve the channels; 4 poolings and 64 channels at the
      first level; no normalisation layer (the paper has none).
    * Sec. 3.1: drop-out at the end of the contracting path; the rate is not stated, 0.5 (the
      usual rate, and that of the released model) is used.
    * Sec. 3: weights drawn from a Gaussian with std ``sqrt(2 / N)`` (He init; every
      :class:`~unetseg.model.UNet` is initialised so).
    * Sec. 3: stochastic gradient descent with momentum 0.99; "large input tiles over a large
      batch size": batches of one 572 x 572 tile (Fig. 1's input, output 388 x 388).
    * Sec. 3, eq. 1-2: pixel-wise softmax cross-entropy weighted by the map
      ``w_c + w0 exp(-(d1 + d2)^2 / (2 sigma^2))`` with ``w0 = 10``, ``sigma = 5`` pixels
      (``--loss weighted-ce``; :mod:`unetseg.data.weights`). Crops are uniform: the weight map
      already balances the classes.
    * Sec. 3.1: shift and rotation (any angle: quarter turns plus up to +-45 degrees; no
      scaling, no mirroring, neither is mentioned), gray-value variations (brightness, contrast,
      gamma) and elastic deformations on every sample: a 3 x 3 grid of displacements with
      10-pixel standard deviation, bicubically interpolated.

    Not stated in the paper and chosen here: the learning rate (0.01, constant after a one-epoch
    linear warm-up that keeps momentum 0.99 from diverging at the start) and no weight decay.
    """
    return RunConfig(
        model=ModelConfig(depth=4, width=64, padding="valid", up="transpose", norm="none",
                          dropout=0.5),
        data=DataConfig(patch_size=572, foreground_fraction=0.0, weight_w0=10.0,
                        weight_sigma=5.0),
        augment=AugmentConfig(flip=False, rot90=True, rotate_deg=45.0, scale=(1.0, 1.0),
                              shift=0.05, affine_p=1.0, elastic_p=1.0, elastic_grid=3,
                              elastic_sigma=10.0, intensity_p=0.5),
        train=TrainConfig(batch_size=1, optimizer="sgd", momentum=0.99, lr=0.01,
                          weight_decay=0.0, scheduler="constant", warmup_epochs=1,
                          loss="weighted-ce"),
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {"default": default_preset, "paper": paper_preset}
"""Preset name -> builder."""


def preset(name: str) -> RunConfig:
    """The :class:`RunConfig` of the preset called ``name``.

    Raises:
        UserError: for an unknown name (the message lists the known ones).
    """
    if name not in PRESETS:
        raise UserError(f"--preset {name}: unknown preset; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
