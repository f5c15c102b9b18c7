"""The model file: weights plus a JSON :class:`ModelCard`, in one safetensors file.

A model file (``best.safetensors``, ``last.safetensors``) holds the weights and, in the
safetensors header, the model config, the class table and the intensity normalisation: enough
to rebuild the network and run it on images with no other input. Nothing is ever unpickled, so
a model file from anywhere is safe to load. Training, inference, export and serving all read
it; it knows only the model, the class table and the normalisation below it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from unetseg.config import InstanceConfig, ModelConfig, RunConfig, from_dict, to_dict
from unetseg.data.classes import ClassTable
from unetseg.data.normalize import ChannelStats
from unetseg.errors import UserError
from unetseg.files import atomic_path
from unetseg.model import build_model

FORMAT = "unetseg"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")


@dataclass(frozen=True)
class ModelCard:
    """What a model file says about itself: enough to rebuild, normalise and decode.

    ``instance`` is set for an instance model (``train.task="instance"``): its target and the
    post-processing that turns its output into objects, as chosen on the validation images;
    None for a semantic model, whose output channels are ``classes``.
    """

    model: ModelConfig
    classes: ClassTable
    stats: ChannelStats
    run: RunConfig | None = None
    info: dict[str, Any] = field(default_factory=dict)
    instance: InstanceConfig | None = None

    @property
    def task(self) -> str:
        """``"instance"`` or ``"semantic"``."""
        return "semantic" if self.instance is None else "instance"

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": to_dict(self.model),
            "classes": self.classes.to_dict(),
            "stats": self.stats.to_dict(),
            "run": to_dict(self.run) if self.run is not None else None,
            "info": self.info,
            "instance": to_dict(self.instance) if self.instance is not None else None,
        })

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        d = json.loads(text)
        return cls(
            model=from_dict(ModelConfig, d["model"]),
            classes=ClassTable.from_dict(d["classes"]),
            stats=ChannelStats.from_dict(d["stats"]),
            run=from_dict(RunConfig, d["run"]) if d.get("run") else None,
            info=d.get("info") or {},
            instance=from_dict(InstanceConfig, d["instance"]) if d.get("instance") else None,
        )


def describe_card(card: ModelCard) -> list[str]:
    """What ``unetseg info`` prints of a model file, one fact a line: the task and network
    (for a volume network its spacing, the per-level conv kernels and poolings and the training
    patch), the classes and the normalisation."""
    m = card.model
    width = f"{m.width}" + (f" (first level {m.top_width})" if m.top_width else "")
    lines = [f"task: {card.task}",
             f"network: {m.arch}, {m.spatial_dims}D, depth {m.depth}, width {width},"
             f" {m.padding} padding, {m.norm} norm, {m.in_channels} input channel(s)"]
    if m.spatial_dims == 3:
        spacing = card.info.get("spacing")
        lines.append("spacing (z, y, x): " + (",".join(f"{v:g}" for v in spacing) if spacing
                                               else "not recorded"))
        lines.append("kernels per level: " + _levels_text(m.kernel_sizes, 3, m.depth + 1))
        lines.append("poolings per level: " + _levels_text(m.pool_sizes, 2, m.depth))
        if card.info.get("patch"):
            lines.append("training patch (d, h, w): " + "x".join(map(str, card.info["patch"])))
    named = zip(card.classes.values, card.classes.names, strict=True)
    lines.append("classes: " + ", ".join(f"{v}={n}" for v, n in named))
    lines.append(f"normalisation: {card.stats.scheme}")
    return lines


def _levels_text(levels: Any, default: int, count: int) -> str:
    """``1x3x3 3x3x3 ...``: one size per axis for each level (``default`` everywhere if None)."""
    sizes = levels if levels is not None else [(default,) * 3] * count
    return " ".join("x".join(str(v) for v in level) for level in sizes)


def state_aliases(model: torch.nn.Module) -> dict[str, str]:
    """Names under which a state tensor appears a second time (a submodule registered under two
    names, as in fepegar's ``unet``), each mapped to the tensor's first name. Model files store
    such a tensor once: safetensors refuses tensors that share memory."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in first:
            aliases[name] = first[id(tensor)]
        else:
            first[id(tensor)] = name
    return aliases


def state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as contiguous CPU tensors, each shared tensor once."""
    aliases = state_aliases(model)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if k not in aliases}


def load_state_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], *,
                       assign: bool = False) -> None:
    """``model.load_state_dict`` from stored tensors (optimiser and RNG entries skipped), each
    alias filled from its first name; ``assign`` makes the tensors the model's own instead of
    copying them (for a model on the meta device)."""
    weights = {k: v for k, v in tensors.items() if not k.startswith(("optim/", "rng/"))}
    for alias, name in state_aliases(model).items():
        if name in weights:
            weights[alias] = weights[name]
    model.load_state_dict(weights, assign=assign)


def save_model(path: str | Path, model: torch.nn.Module, card: ModelCard) -> None:
    """Write ``model``'s weights and ``card`` atomically to a safetensors file."""
    with atomic_path(path) as tmp:
        save_file(state_tensors(model), str(tmp), metadata={FORMAT: card.to_json()})


def read_card(path: str | Path) -> ModelCard:
    """The :class:`ModelCard` of a model file; :class:`UserError` if it is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found; pass the best.safetensors of a run")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(
            f"{path}: pickled model files are refused (loading them can run arbitrary code);"
            f" {_convert_hint(path)}"
        )
    if _looks_pickled(path):
        raise UserError(f"{path}: a pickled PyTorch file, refused (loading it can run arbitrary"
                        f" code); {_convert_hint(path)}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a safetensors model file ({' '.join(str(exc).split())});"
                        " pass a unetseg model such as RUN/best.safetensors") from None
    if FORMAT not in meta:
        raise UserError(f"{path}: a safetensors file without unetseg metadata; pass a model"
                        " written by unetseg train")
    try:
        return ModelCard.from_json(meta[FORMAT])
    except (KeyError, TypeError, ValueError, UserError) as exc:
        raise UserError(f"{path}: damaged unetseg metadata ({exc}); retrain or re-export") from None


def _convert_hint(path: Path) -> str:
    out = path.with_name(path.stem + ("-converted" if path.suffix == ".safetensors" else "")
                         + ".safetensors")
    return (f"if you trust it, convert it once with: unetseg convert-checkpoint {path}"
            f" --config RUN/config.json --out {out}")


_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _looks_pickled(path: Path) -> bool:
    """Whether a file starts like ``torch.save`` output (a zip archive or a raw pickle)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head.startswith(_PICKLE_MAGIC)


def _check_shapes(path: Path, card: ModelCard) -> torch.nn.Module:
    """Compare the card's architecture with the stored tensor shapes before building it, so a
    forged card (say, a width of 10**9) is refused without allocating anything. Returns the
    network on the meta device (shapes, no storage)."""
    try:
        with torch.device("meta"):
            skeleton = build_model(card.model)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise UserError(f"{path}: the stored model config is invalid ({exc}); retrain or"
                        " re-export") from None
    aliases = state_aliases(skeleton)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items() if k not in aliases}
    with safe_open(str(path), framework="pt") as fh:
        names = list(fh.keys())
        stored = {k: tuple(fh.get_slice(k).get_shape()) for k in names
                  if not k.startswith(("optim/", "rng/"))}
    if stored != expected:
        diff = sorted(set(stored.items()) ^ set(expected.items()))
        raise UserError(f"{path}: weights do not match the stored config (first difference:"
                        f" {diff[0][0]}); retrain or re-export the model")
    return skeleton


def _loads_in_place(skeleton: torch.nn.Module) -> bool:
    """Whether the stored weights can become ``skeleton``'s own tensors (meta device): they
    fill every tensor (no non-persistent buffers) and no tensor is shared between names."""
    transient = any(m._non_persistent_buffers_set for m in skeleton.modules())
    return not transient and not state_aliases(skeleton)


def load_model(path: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[torch.nn.Module, ModelCard]:
    """Rebuild the model of a model file from its own config; returns (model in eval mode, card).

    The stored tensor shapes are checked against the config before anything is allocated.
    """
    card = read_card(path)
    skeleton = _check_shapes(Path(path), card)
    # the network checked is the one loaded, its weights not drawn at random only to be replaced
    in_place = _loads_in_place(skeleton)
    model = skeleton if in_place else build_model(card.model)
    tensors = load_file(str(path), device="cpu")
    if in_place:
        # copies in the dtypes the network was built in: load_file maps the file, and a model
        # that outlived a rewrite of its file in place (a server) must not change with it
        dtypes = {k: v.dtype for k, v in skeleton.state_dict().items()}
        tensors = {k: v.to(dtypes[k], copy=True) for k, v in tensors.items() if k in dtypes}
    try:
        load_state_tensors(model, tensors, assign=in_place)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"{path}: weights do not match the stored config ({first})") from None
    return model.to(device).eval(), card
