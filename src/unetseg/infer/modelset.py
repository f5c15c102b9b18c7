"""Model sets: several model files that predict as one, with their post-processing.

A model set is named in any of these ways wherever a model is (``predict``, ``evaluate``,
``serve``, ``export``):

* a run folder of ``train --folds``, or its ``modelset.json``: the fold models, their shared
  class table and the post-processing chosen on their held-out predictions;
* a list of model files trained on one class table (in Python a list, on the command line the
  files joined by commas: ``a.safetensors,b.safetensors``): no post-processing.

A run folder without ``modelset.json`` names its ``best.safetensors``. ``modelset.json`` lists
its members relative to its own folder, so a run folder can be moved as a whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unetseg.config import PredictConfig
from unetseg.data.classes import ClassTable
from unetseg.errors import UserError
from unetseg.files import write_text_atomic
from unetseg.infer.engine import ImagePredictor
from unetseg.infer.postprocess import Step
from unetseg.modelfile import ModelCard

MODEL_SET_FILE = "modelset.json"
FORMAT = "unetseg.modelset"
VERSION = 1

ModelSpec = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
"""A model file, a run folder, a ``modelset.json``, a comma-joined list or a list of files."""


@dataclass(frozen=True)
class ModelSet:
    """Member files, the class table they share (None: read from the members), the chosen
    post-processing and a name for messages."""

    members: tuple[Path, ...]
    classes: ClassTable | None = None
    postprocessing: tuple[Step, ...] = ()
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def resolve_model(model: ModelSpec) -> Path | ModelSet:
    """The one model file or the :class:`ModelSet` that ``model`` names (see the module's
    text); a path is not checked to exist here, except a folder's contents.

    Raises:
        UserError: an empty list, or a folder with neither ``modelset.json`` nor
            ``best.safetensors``.
    """
    if not isinstance(model, str | os.PathLike):
        paths = [Path(p) for p in model]
        if not paths:
            raise UserError("no model files given; name a model file, a run folder or several"
                            " model files")
        if len(paths) == 1:
            return resolve_model(paths[0])
        return ModelSet(tuple(paths), name=", ".join(str(p) for p in paths))
    text = os.fspath(model)
    path = Path(text)
    if "," in text and not path.exists():
        return resolve_model([part.strip() for part in text.split(",") if part.strip()])
    if path.is_dir():
        if (path / MODEL_SET_FILE).is_file():
            return read_model_set(path / MODEL_SET_FILE)
        if (path / "best.safetensors").is_file():
            return path / "best.safetensors"
        raise UserError(f"{path}: a folder without {MODEL_SET_FILE} or best.safetensors; pass a"
                        " run folder, a model file or several model files")
    if path.name == MODEL_SET_FILE or (path.suffix.lower() == ".json" and path.is_file()):
        return read_model_set(path)
    return path


def read_model_set(path: str | Path) -> ModelSet:
    """The :class:`ModelSet` a ``modelset.json`` describes.

    Raises:
        UserError: a missing or damaged file, or a member that is not there.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, not {FORMAT}")
        members = tuple(path.parent / m for m in data["members"])
        classes = ClassTable.from_dict(data["classes"]) if data.get("classes") else None
        steps = tuple(Step.from_dict(s) for s in data.get("postprocessing") or ())
    except (OSError, ValueError, KeyError, TypeError, UserError) as exc:
        raise UserError(f"{path}: not a readable model set ({exc}); train one with"
                        " unetseg train DATA --folds 5, or name the model files") from None
    if not members:
        raise UserError(f"{path}: a model set without members; retrain it")
    missing = [m for m in members if not m.is_file()]
    if missing:
        raise UserError(f"{missing[0]}: a member of the model set {path} is missing; restore it"
                        " or finish the run with unetseg train ... --folds N --resume")
    return ModelSet(members, classes, steps, str(path.parent), dict(data.get("selection") or {}))


def write_model_set(folder: Path, members: Sequence[str], classes: ClassTable,
                    postprocessing: Sequence[Step], selection: dict[str, Any] | None = None
                    ) -> Path:
    """Write ``folder/modelset.json`` (members relative to ``folder``) atomically."""
    target = folder / MODEL_SET_FILE
    data = {"format": FORMAT, "version": VERSION, "members": list(members),
            "classes": classes.to_dict(),
            "postprocessing": [s.to_dict(classes.names) for s in postprocessing],
            "selection": selection or {}}
    write_text_atomic(target, json.dumps(data, indent=2))
    return target


def model_name(model: ModelSpec) -> str:
    """A short name of ``model`` for titles and messages."""
    if isinstance(model, str | os.PathLike):
        return Path(model).name
    return "+".join(Path(p).name for p in model)


def load_model_set_predictor(model_set: ModelSet, config: PredictConfig
                             ) -> tuple[ImagePredictor, ModelCard]:
    """A ready :class:`~unetseg.infer.engine.ImagePredictor` averaging the members' class
    probabilities (:mod:`unetseg.infer.ensemble`), with the ensemble's card.

    Raises:
        UserError: members of different class tables or inputs, or of another class table
            than ``modelset.json`` states.
    """
    from unetseg.infer.ensemble import load_ensemble_predictor

    predictor, card = load_ensemble_predictor(model_set.members, config)
    if model_set.classes is not None and card.classes != model_set.classes:
        raise UserError(f"{model_set.members[0]}: trained on another class table than the model"
                        f" set {model_set.name} states; retrain or rewrite {MODEL_SET_FILE}")
    return predictor, card
