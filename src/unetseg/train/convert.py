"""Convert a trusted pickled PyTorch checkpoint of a unetseg U-Net into a model file.

unetseg never unpickles when it loads a model (see :mod:`unetseg.modelfile`). Weights
saved with ``torch.save(model.state_dict(), "model.pt")`` are converted once, explicitly::

    unetseg convert-checkpoint model.pt --config RUN/config.json --out model.safetensors

The file is read with ``torch.load(..., weights_only=True)``, PyTorch's restricted unpickler that
rebuilds only tensors and plain containers and refuses any other object, so even this step does
not run code from the file. ``config.json`` (written by ``unetseg train`` into every run folder)
supplies the model config, the class table and the normalisation.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from unetseg.config import ModelConfig, RunConfig, from_dict
from unetseg.data.classes import ClassTable
from unetseg.data.normalize import ChannelStats
from unetseg.errors import UserError
from unetseg.model import build_model
from unetseg.modelfile import PICKLE_SUFFIXES, ModelCard, save_model

_WRAPPERS = ("state_dict", "model", "model_state_dict", "weights")
_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def _read_config(path: Path) -> tuple[ModelConfig, ClassTable, ChannelStats, RunConfig | None]:
    try:
        d = json.loads(path.read_text())
        run = from_dict(RunConfig, d["run"]) if d.get("run") else None
        model = from_dict(ModelConfig, d["model"]) if "model" in d else None
        model = model or (run.model if run is not None else None)
        if model is None:
            raise KeyError("run.model")
        return model, ClassTable.from_dict(d["classes"]), ChannelStats.from_dict(d["stats"]), run
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found; pass the run's config.json") from None
    except (OSError, ValueError, KeyError, TypeError, UserError) as exc:
        raise UserError(f"{path}: not a unetseg run config.json ({type(exc).__name__}: {exc});"
                        " pass the config.json of the run that trained the weights") from None


def _state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in _WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise UserError(f"{path}: holds no state_dict of tensors; save the weights with"
                        " torch.save(model.state_dict(), path) and convert that file")
    out = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def convert_checkpoint(checkpoint: str | os.PathLike[str], config: str | os.PathLike[str],
                       out: str | os.PathLike[str]) -> Path:
    """Write ``out`` (safetensors + JSON card) from a trusted pickled state_dict.

    Args:
        checkpoint: ``.pt``/``.pth``/``.ckpt`` holding a state_dict of a unetseg network (or a
            dict with it under ``state_dict``/``model``); ``module.`` prefixes are dropped.
        config: the run's ``config.json`` (``run.model``, ``classes``, ``stats``).
        out: the model file to write.

    Raises:
        UserError: unreadable or unsafe checkpoint, config not ours, or weights that do not
            fit the config.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if out.suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(f"{out}: model files are safetensors; name it {out.stem}.safetensors")
    model_cfg, classes, stats, run = _read_config(Path(config))
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: no such file; check the path")
    try:
        with warnings.catch_warnings():  # protocol notes would break the one-line output
            warnings.simplefilter("ignore")
            obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # refused by the restricted unpickler, corrupt, not a pickle, ...
        first = " ".join(str(exc).split())[:160]
        raise UserError(f"{checkpoint}: cannot be read as plain weights ({first}); save"
                        " torch.save(model.state_dict(), path) from the trusted model and convert"
                        " that") from None
    model = build_model(model_cfg)
    weights = _state_dict(obj, checkpoint)
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    extra = [k for k in weights if k not in expected]
    if missing or wrong or extra:
        first = (missing or wrong or extra)[0]
        raise UserError(f"{checkpoint}: weights do not fit the model in {config} ({len(missing)}"
                        f" missing, {len(wrong)} of another shape, {len(extra)} unexpected;"
                        f" first: {first}); pass the config.json of the run that trained them")
    model.load_state_dict(weights)
    save_model(out, model.eval(), ModelCard(model_cfg, classes, stats, run,
                                            info={"converted_from": checkpoint.name}))
    return out
