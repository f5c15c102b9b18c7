"""Resumable training state: the model file plus optimiser, schedule and RNG, in one file.

``resume.safetensors`` holds the model's tensors and card (see :mod:`unetseg.modelfile`), the
optimiser tensors and RNG states (prefixes ``optim/`` and ``rng/``) and the non-tensor loop
state as JSON, written atomically in one file so an interrupted write never leaves a model and
an optimiser from different steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

from unetseg.files import atomic_path
from unetseg.modelfile import FORMAT, ModelCard, load_state_tensors, state_tensors


def save_training_state(path: str | Path, model: torch.nn.Module, card: ModelCard,
                        optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Write everything needed to continue training, atomically, in one safetensors file.

    Args:
        state: JSON-ready loop state (epoch, step, history, scheduler and scaler state, ...).
    """
    tensors = state_tensors(model)
    opt = optimizer.state_dict()
    opt_json: dict[str, Any] = {"param_groups": opt["param_groups"], "scalars": {}}
    for idx, slots in opt["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{name}"] = value.detach().cpu().contiguous()
            else:
                opt_json["scalars"].setdefault(str(idx), {})[name] = value
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = s
    meta = {FORMAT: card.to_json(), "optimizer": json.dumps(opt_json), "state": json.dumps(state)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read_loop_state(path: str | Path) -> dict[str, Any]:
    """The JSON loop state of :func:`save_training_state` alone, without loading any tensor."""
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return json.loads(meta["state"])


def load_training_state(path: str | Path, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimiser and RNG from :func:`save_training_state`; return the loop state."""
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    tensors = load_file(str(path), device="cpu")
    load_state_tensors(model, tensors)
    opt_json = json.loads(meta["optimizer"])
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    for idx, scalars in opt_json["scalars"].items():
        opt_state.setdefault(int(idx), {}).update(scalars)
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v
               for k, v in group.items()} for group in opt_json["param_groups"]]
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    return json.loads(meta["state"])
