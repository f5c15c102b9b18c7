"""The ``unetseg`` command line: ``train``, ``predict``, ``evaluate``, ``check``, ``demo``, ...

Each command parses its flags into the same keywords and config dataclasses as the Python
function it calls (:func:`unetseg.fit`, :func:`unetseg.predict`, ...);
:data:`MIRROR_EXCEPTIONS` lists the few options that exist on one side only, and
``tests/test_cli_mirror.py`` holds both sides to it. torch is imported inside the commands so
``unetseg --help`` answers at once. A :class:`~unetseg.errors.UserError` ends the command with
one line on stderr and exit status 2.

The commands live in one module per group: :mod:`.train`, :mod:`.predict` (predict, evaluate,
demo), :mod:`.ship` (export, serve) and :mod:`.data` (check, convert-checkpoint, previews);
their flag tables in :mod:`.flags`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from unetseg.cli.data import add_data_commands
from unetseg.cli.flags import PREDICT_FLAGS, TRAIN_FLAGS
from unetseg.cli.predict import add_predict_commands
from unetseg.cli.ship import add_ship_commands
from unetseg.cli.train import add_train_command, run_config_from_args
from unetseg.errors import UserError

__all__ = ["MIRROR_EXCEPTIONS", "PREDICT_FLAGS", "TRAIN_FLAGS", "build_parser", "main",
           "run_config_from_args"]

MIRROR_EXCEPTIONS: dict[str, str] = {
    # RunConfig fields without a train flag of their own
    "model.in_channels": "read from the images by fit",
    "model.num_classes": "read from the masks (or --classes) by fit",
    "data.val_stems": "the held-out images of a fold, set per fold by --folds",
    **{f"augment.{name}": "augmentation strengths come from a --preset or a --config file"
       for name in ("flip", "rot90", "rotate_deg", "scale", "shift", "affine_p", "elastic_p",
                    "elastic_grid", "elastic_sigma", "brightness", "contrast", "gamma",
                    "intensity_p")},
    "train.momentum": "SGD only, tuned with the recipe; set it in a --config file",
    "train.warmup_epochs": "a schedule detail; set it in a --config file",
    "train.val_tile": "the validation tiling; set it in a --config file",
    "train.amp": "on unless the switch --no-amp",
    "train.sync_batchnorm": "off unless the switch --sync-batchnorm",
    **{f"model.{name}": "a volume network's form, planned from the voxel spacing by train"
       " --volume (UNet(spatial_dims=3, ...) in Python)"
       for name in ("spatial_dims", "kernel_sizes", "pool_sizes")},
    **{f"instance.{name}": "post-processing chosen on the validation images after training;"
       " its starting values come from a --config file"
       for name in ("seed_threshold", "mask_threshold", "min_size", "fill_holes")},
    # keywords of fit, predict and evaluate without a flag of the same name
    "fit:cfg": "the RunConfig that --preset or --config and the train flags build",
    "fit:show_progress": "the top-level -q/--quiet",
    "fit:callbacks": "Python callables",
    "fit:loss_fn": "a Python callable",
    "fit:fixed": "the fields the train flags given (and --config, --preset) set",
    "predict:config": "the PredictConfig that the prediction flags build",
    "predict:overlays": "on unless the switch --no-overlay",
    "predict:show_progress": "the top-level -q/--quiet",
    "evaluate:config": "the PredictConfig that the prediction flags build",
    "evaluate:show_progress": "the top-level -q/--quiet",
    # flags without a keyword or config field of the same name
    "train --config": "read into fit's cfg",
    "train --preset": "unetseg.presets.preset(NAME), fit's cfg",
    "train --no-amp": "sets train.amp to False",
    "train --sync-batchnorm": "sets train.sync_batchnorm",
    "train --nproc": "starts N processes; in Python, start them with torchrun",
    "predict --no-overlay": "sets overlays=False",
    "train --volume": "volumes train through unetseg.train.volumes.fit_volumes",
    "train --spacing": "fit_volumes(spacing=...)",
}
"""Where the command line and the Python API differ, with the reason: ``section.field`` of
RunConfig, ``function:keyword`` of :func:`unetseg.fit`, :func:`unetseg.predict` and
:func:`unetseg.evaluate`, or ``command --flag``. ``tests/test_cli_mirror.py`` holds everything
else to mirror, and refuses entries that are no longer needed."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetseg", description="Train U-Nets, predict images of any size, evaluate.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train_command(sub)
    add_predict_commands(sub)
    add_data_commands(sub)
    add_ship_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unetseg`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.entry, args.argv = main, list(sys.argv[1:] if argv is None else argv)  # train --nproc
    if args.version:
        from unetseg import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.WARNING, format="unetseg: %(levelname)s: %(message)s")
    from unetseg.runtime import tune_allocator

    tune_allocator()
    try:
        return int(args.run(args))
    except UserError as exc:
        print(f"unetseg: error: {exc}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("unetseg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout piped into a reader that stopped (``| head``)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141
