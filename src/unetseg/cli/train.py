"""``unetseg train``: flags to a :class:`~unetseg.config.RunConfig`, then
:func:`unetseg.train.fit.fit`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from unetseg.cli.flags import TRAIN_FLAGS, add_train_flags, dest
from unetseg.errors import UserError


def add_train_command(sub: Any) -> None:
    p = sub.add_parser("train", help="train a U-Net on DATA/images + DATA/masks")
    p.add_argument("data", help="folder with images/ and masks/ (paired by file stem)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--config", help="RunConfig JSON (flags override it)")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="start from a recipe: default or paper (the U-Net paper's; flags"
                        " override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--volume", action="store_true",
                   help="the data are volumes (TIFF stacks; NIfTI and .npy always are): train a"
                        " 3D U-Net planned from the voxel spacing")
    p.add_argument("--spacing", default=None, metavar="Z,Y,X",
                   help="voxel size of volumes whose files carry none, e.g. 4,1,1")
    p.add_argument("--folds", type=int, default=None, metavar="K",
                   help="cross-validate: one model per fold in --out/fold-<i>/, each scored on"
                        " its held-out images; --out becomes a model set (default: one model)")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on GPUs")
    p.add_argument("--nproc", type=int, default=1, help="train data-parallel in N local"
                   " processes, e.g. one per GPU; --batch-size is split over them (default"
                   " %(default)s)")
    p.add_argument("--sync-batchnorm", action="store_true",
                   help="batch-norm statistics over all processes' samples (GPUs only)")
    p.add_argument("--plan", default="auto", metavar="auto|off|PLAN.json",
                   help="auto plans patch size, depth, batch size, width, normalisation and"
                        " loss from the data, the device and --time-limit (written as"
                        " plan.json in the run folder); a plan.json (from unetseg plan or a"
                        " run, edited or not) applies that plan; off trains the defaults."
                        " Every flag given overrides the plan (default %(default)s)")
    add_train_flags(p, planned=True)
    p.set_defaults(run=_train)


def run_config_from_args(args: argparse.Namespace) -> Any:
    """A RunConfig from ``--preset`` or ``--config`` (if any) with every given flag on top."""
    from unetseg.config import RunConfig, from_dict, replace
    from unetseg.presets import preset

    if getattr(args, "preset", None) and args.config:
        raise UserError(f"{args.config}: give either --config or --preset {args.preset}, not"
                        " both (flags override either)")
    cfg = preset(args.preset) if getattr(args, "preset", None) else RunConfig()
    if args.config:
        path = Path(args.config)
        try:
            cfg = from_dict(RunConfig, json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"{path}: not a readable RunConfig JSON ({exc}); fix the file (a"
                            " run's config.json holds one under \"run\") or drop --config"
                            ) from None
    changes = {key: getattr(args, dest(flag)) for flag, (key, _, _) in TRAIN_FLAGS.items()}
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.no_amp:
        changes["train.amp"] = False
    if getattr(args, "sync_batchnorm", False):
        changes["train.sync_batchnorm"] = True
    return replace(cfg, **changes)


def fixed_from_args(args: argparse.Namespace) -> set[str]:
    """The RunConfig fields the user set, which a plan keeps: the flags given, the fields a
    ``--config`` file names, every field of a ``--preset`` other than ``default`` (a recipe),
    and ``train.amp`` for ``--no-amp``."""
    from unetseg.config import PLANNED_FIELDS

    fixed = {key for flag, (key, _, _) in TRAIN_FLAGS.items()
             if getattr(args, dest(flag), None) is not None}
    if getattr(args, "preset", None) not in (None, "default"):
        fixed |= set(PLANNED_FIELDS)
    if getattr(args, "config", None):
        try:
            stored = json.loads(Path(args.config).read_text())
        except (OSError, ValueError):
            stored = {}  # run_config_from_args says what is wrong with the file
        fixed |= {f"{section}.{key}" for section, part in stored.items()
                  if isinstance(part, dict) for key in part}
    return fixed


def _plan_source(args: argparse.Namespace) -> str | None:
    return None if str(args.plan).lower() in ("off", "none") else args.plan


def _train(args: argparse.Namespace) -> int:
    from unetseg.train import distributed

    if args.nproc < 1:
        raise UserError(f"--nproc {args.nproc}: give at least 1 process")
    from unetseg.data.volumes import has_volume_only_files, parse_spacing

    if args.volume or has_volume_only_files(args.data):
        return _train_volumes(args, parse_spacing(args.spacing) if args.spacing else None)
    if args.folds is not None:
        if args.nproc > 1:
            raise UserError(f"--folds {args.folds} trains the folds one after another in one"
                            " process; drop --nproc")
        return _cross_validate(args)
    if args.nproc > 1 and not distributed.launched():  # under torchrun the processes exist
        if not args.resume:  # say it once, before starting processes
            distributed.batch_shard(run_config_from_args(args).train.batch_size,
                                    distributed.DistEnv(world_size=args.nproc))
        return distributed.launch(args.nproc, args.entry, args.argv)
    from unetseg.train.fit import fit

    main_process = distributed.DistEnv.from_environ().is_main
    if not main_process:  # warnings once, from rank 0
        logging.getLogger("unetseg").setLevel(logging.ERROR)
    with distributed.leaving_at_the_end():
        result = fit(args.data, args.out, run_config_from_args(args), resume=args.resume,
                     show_progress=not args.quiet, plan=_plan_source(args),
                     fixed=fixed_from_args(args))
    if not main_process:
        return 0
    score = ("val_dsb_score" if any(h.get("val_dsb_score") is not None for h in result.history)
             else "val_mean_iou")
    best = max((h for h in result.history if h.get(score) is not None),
               key=lambda h: h[score], default=None)
    print(f"run folder: {result.run_dir}  (stopped: {result.stopped})")
    if best:
        what = "DSB score" if score == "val_dsb_score" else "mean IoU"
        print(f"best validation {what} {best[score]:.4f} at epoch {best['epoch']}")
    print(f"model: {result.best_model}")
    return 0


def _cross_validate(args: argparse.Namespace) -> int:
    from unetseg.train.crossval import format_fold_table
    from unetseg.train.fit import fit

    result = fit(args.data, args.out, run_config_from_args(args), folds=args.folds,
                 resume=args.resume, show_progress=not args.quiet)
    print("held-out scores per fold (mean+-sd: sample standard deviation over the folds):")
    print(format_fold_table(result.folds, result.summary))
    selection = result.selection
    if result.postprocessing:
        print("post-processing kept (mean foreground Dice"
              f" {selection['before']:.4f} -> {selection['after']:.4f}): "
              + "; ".join(_step_text(s) for s in selection["trials"] if s["kept"]))
    else:
        print("post-processing: none improved the held-out predictions")
    print(f"run folder: {result.run_dir}  (folds.json, modelset.json)")
    print(f"predict with: unetseg predict {result.run_dir} IMAGES --out PREDICTIONS")
    return 0


def _step_text(trial: dict[str, Any]) -> str:
    if trial["step"] == "remove_small":
        return f"{trial['class']}: remove components under {trial['min_size']} px"
    return f"{trial['class']}: " + {"largest_component": "keep the largest component",
                                     "fill_holes": "fill holes"}[trial["step"]]


def _train_volumes(args: argparse.Namespace, spacing: Any) -> int:
    """``train`` on a volume data set (:func:`unetseg.train.volumes.fit_volumes`), in
    ``--nproc`` processes as 2D training."""
    from unetseg.train import distributed
    from unetseg.train.volumes import fit_volumes

    if args.folds is not None:
        raise UserError("--folds is not available for volumes yet; drop it")
    if args.nproc > 1 and not distributed.launched():
        if not args.resume:
            distributed.batch_shard(run_config_from_args(args).train.batch_size,
                                    distributed.DistEnv(world_size=args.nproc))
        return distributed.launch(args.nproc, args.entry, args.argv)
    main_process = distributed.DistEnv.from_environ().is_main
    if not main_process:
        logging.getLogger("unetseg").setLevel(logging.ERROR)
    with distributed.leaving_at_the_end():
        result = fit_volumes(args.data, args.out, run_config_from_args(args), spacing=spacing,
                             resume=args.resume, show_progress=not args.quiet)
    if not main_process:
        return 0
    best = max(result.history, key=lambda h: h["val_mean_iou"])
    print(f"trained {len(result.history)} epoch(s) ({result.stopped}); best validation mean"
          f" IoU {best['val_mean_iou']:.4f} at epoch {best['epoch']}: {result.best_model}")
    return 0
