"""``unetseg check``, ``plan``, ``info``, ``convert-checkpoint``, ``preview-augment`` and
``preview-weights``: commands about data and model files that train nothing."""

from __future__ import annotations

import argparse
import json
from typing import Any

from unetseg.cli.flags import TRAIN_FLAGS, add_train_flags, dest

CHECK_FLAGS = ("--classes", "--class-names", "--ignore-value", "--palette", "--weight-objects")
PREVIEW_FLAGS = tuple(flag for flag, (key, _, _) in TRAIN_FLAGS.items()
                      if key.startswith(("data.", "augment.")))


def add_data_commands(sub: Any) -> None:
    p = sub.add_parser("check", help="check a data folder: pairs, unreadable files, sizes, mask"
                       " values, channels, class balance and suggested class weights, objects")
    p.add_argument("data", help="folder with images/ and masks/ (and optionally instances/)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--volume", action="store_true",
                   help="the files are volumes (TIFF stacks; NIfTI and .npy always are): report"
                        " shape, spacing and anisotropy per volume")
    p.add_argument("--spacing", default=None, metavar="Z,Y,X",
                   help="voxel size of volumes whose files carry none, e.g. 4,1,1")
    add_train_flags(p, CHECK_FLAGS)
    p.set_defaults(run=_check)

    p = sub.add_parser("plan", help="measure a data set's fingerprint and plan a run from it:"
                       " patch size, depth, batch size, width, normalisation, loss and steps,"
                       " each with its reason (writes fingerprint.json and plan.json)")
    p.add_argument("data", help="folder with images/ and masks/")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="seconds the run may take (train's --time-limit); the width and the"
                        " steps are planned for it (default: none)")
    p.add_argument("--out", default=".", help="folder for fingerprint.json and plan.json"
                   " (default %(default)s)")
    p.add_argument("--device", default="auto", help="device the width is timed on and the"
                   " batch sized for: auto, cpu, cuda, ... (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print plan.json instead of the table")
    add_train_flags(p, CHECK_FLAGS)
    p.set_defaults(run=_plan)

    p = sub.add_parser("info", help="what a model file says about itself: task, network (a"
                       " volume network's spacing, kernels and poolings), classes and"
                       " normalisation")
    p.add_argument("model", help="model file (.safetensors) or run folder")
    p.add_argument("--json", action="store_true", help="print the whole model card as JSON")
    p.set_defaults(run=_info)

    p = sub.add_parser("convert-checkpoint", help="convert a TRUSTED pickled PyTorch"
                       " checkpoint (.pt, .pth, .ckpt) of a unetseg U-Net to a model file")
    p.add_argument("checkpoint", help="the trusted .pt/.pth/.ckpt file (a state_dict)")
    p.add_argument("--config", required=True, help="the run's config.json (model, classes and"
                   " normalisation)")
    p.add_argument("--out", required=True, help="model file to write (.safetensors)")
    p.set_defaults(run=_convert_checkpoint)

    p = sub.add_parser("preview-augment", help="picture of images beside augmented copies")
    _add_preview_flags(p)
    p.add_argument("--samples", type=int, default=3,
                   help="augmented copies per image (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the augmentation (default %(default)s)")
    p.add_argument("--volume", action="store_true",
                   help="the data are volumes (TIFF stacks; NIfTI and .npy always are): draw"
                        " a 3D training patch per volume and its augmented copies as"
                        " orthogonal views with the mask blended over them")
    p.add_argument("--spacing", default=None, metavar="Z,Y,X",
                   help="voxel size of volumes whose files carry none, e.g. 4,1,1")
    p.set_defaults(run=_preview_augment)

    p = sub.add_parser("preview-weights", help="heat maps of the paper's border weight maps")
    _add_preview_flags(p)
    p.set_defaults(run=_preview_weights)


def _check(args: argparse.Namespace) -> int:
    from unetseg.config import DataConfig
    from unetseg.data.doctor import check_data
    from unetseg.data.report import format_report
    from unetseg.data.volumes import (
        check_volumes,
        format_volume_check,
        has_volume_only_files,
        parse_spacing,
    )

    if args.volume or has_volume_only_files(args.data):
        spacing = parse_spacing(args.spacing) if args.spacing is not None else None
        volumes = check_volumes(args.data, spacing=spacing)
        print(json.dumps(volumes.to_dict(), indent=2) if args.json
              else format_volume_check(volumes))
        return 0 if volumes.clean else 1
    cfg = DataConfig(class_values=args.classes, class_names=args.class_names,
                     ignore_value=args.ignore_value, palette=args.palette,
                     weight_objects=args.weight_objects)
    report = check_data(args.data, cfg, progress=not args.quiet and not args.json)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0 if report.clean else 1


def _plan(args: argparse.Namespace) -> int:
    from unetseg.api import plan
    from unetseg.train.autoplan import format_plan

    result = plan(args.data, args.out, time_budget=args.time_budget, device=args.device,
                  classes=args.classes, class_names=args.class_names,
                  ignore_value=args.ignore_value, palette=args.palette,
                  show_progress=not args.quiet and not args.json)
    if args.json:
        print(json.dumps(result.plan.to_dict(), indent=2))
        return 0
    print(format_plan(result.plan))
    print(f"wrote {result.fingerprint_path} and {result.plan_path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unetseg.errors import UserError
    from unetseg.modelfile import describe_card, read_card

    path = Path(args.model)
    if path.is_dir():
        path = path / "best.safetensors"
        if not path.is_file():
            raise UserError(f"{args.model}: a folder without best.safetensors; pass a model"
                            " file or a run folder")
    card = read_card(path)
    print(json.dumps(json.loads(card.to_json()), indent=2) if args.json
          else "\n".join([str(path), *describe_card(card)]))
    return 0


def _convert_checkpoint(args: argparse.Namespace) -> int:
    from unetseg.train.convert import convert_checkpoint

    convert_checkpoint(args.checkpoint, args.config, args.out)
    print(f"wrote {args.out}")
    return 0


def _add_preview_flags(p: argparse.ArgumentParser) -> None:
    """DATA, --out PNG, --images, --preset, and the data/augmentation flags of ``train``."""
    p.add_argument("data", help="folder with images/ and masks/")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--images", type=int, default=3, help="how many images (default %(default)s)")
    p.add_argument("--preset", default=None, metavar="NAME", help="recipe: default or paper")
    add_train_flags(p, PREVIEW_FLAGS)


def _preview_config(args: argparse.Namespace) -> Any:
    from unetseg.config import RunConfig, replace
    from unetseg.presets import preset

    cfg = preset(args.preset) if args.preset else RunConfig()
    changes = {TRAIN_FLAGS[flag][0]: getattr(args, dest(flag)) for flag in PREVIEW_FLAGS}
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})


def _preview_augment(args: argparse.Namespace) -> int:
    from unetseg.data.volumes import parse_spacing
    from unetseg.preview import preview_augment

    spacing = parse_spacing(args.spacing) if args.spacing is not None else None
    path = preview_augment(args.data, args.out, cfg=_preview_config(args), images=args.images,
                           samples=args.samples, seed=args.seed, volume=args.volume,
                           spacing=spacing)
    print(f"wrote {path}")
    return 0


def _preview_weights(args: argparse.Namespace) -> int:
    from unetseg.preview import preview_weights

    path = preview_weights(args.data, args.out, cfg=_preview_config(args), images=args.images)
    print(f"wrote {path}")
    return 0
