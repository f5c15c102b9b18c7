"""The plan: a run's patch size, depth, batch, width, normalisation and loss chosen from the
data set's fingerprint (:mod:`unetseg.data.fingerprint`), the device and the time budget,
each with its reason.

Rules, each stated with its reason in the plan:

* **patch size**: at least :data:`OBJECT_CONTEXT` times the 90th-percentile equivalent
  diameter of the foreground objects (the connected components of every class but the
  first) and at least :data:`CONTEXT_PATCH` pixels (the crop the recipe was tuned with on
  ISBI 2012 and CamVid, where it leads), a multiple of ``2**depth``, and no larger than the
  smallest image side rounded down to that multiple (a data set of small images gets a
  smaller patch).
* **depth**: pool until the bottleneck is at most :data:`BOTTLENECK` pixels of the patch,
  at most :data:`MAX_DEPTH` times.
* **batch**: on a CPU the recipe's 4 (a step's time grows with the batch, so a larger one
  buys fewer steps of a budget); on a GPU as many patches as a rough activation-memory
  estimate (:func:`activation_bytes`) fits in :data:`GPU_MEMORY_SHARE` of the free memory,
  between 2 and :data:`GPU_MAX_BATCH` per GPU.
* **width**: :func:`unetseg.train.plan.plan_width` (timed on the device, from the budget).
* **normalisation**: ``image`` (each image z-scored by its own statistics) when the images
  differ in brightness so much that at least :data:`BETWEEN_SHARE` of the pixel variance lies
  between the images' means (mixed modalities, such as dark-background fluorescence beside
  light-background brightfield); else ``percentile`` (clipping to the 0.5th and 99.5th
  percentiles first) when intensities are heavy-tailed: the 99.5th percentile lies more than
  :data:`TAIL_SD` sd above the mean, or the brightest pixels reach further beyond it than the
  whole 0.5-99.5 range (hot pixels); else ``dataset``.
* **network**: the plain U-Net (``--arch unet``), which no built-in variant beat in every
  run of the quality benchmark at equal budgets (:data:`ARCH_REASON`).
* **loss**: Dice + cross-entropy.
* **steps**: what the budget buys at the timed step (or the epochs' steps without one).

A plan is written as ``plan.json`` (:meth:`Plan.to_dict`); its values may be edited and
given back to ``train --plan plan.json``. Fields the user sets (a flag, a ``--config`` file,
a preset) are kept and recorded as given; the rest of the plan is made around them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unetseg.config import PLANNED_FIELDS, RunConfig, check_run_config, flag_hint, replace
from unetseg.data.fingerprint import Fingerprint
from unetseg.errors import UserError
from unetseg.train.plan import (
    MIN_STEPS_PER_EPOCH,
    EpochPlan,
    WidthPlan,
    estimate_validation_s,
    plan_epochs,
    plan_width,
)

FORMAT = "unetseg-plan"
VERSION = 1

CONTEXT_PATCH = 256
"""Smallest planned patch side where the images allow it (pixels)."""
OBJECT_CONTEXT = 3
"""Planned patches span at least this many 90th-percentile object diameters."""
BOTTLENECK = 16
"""Largest bottleneck side (pixels of the patch) the depth pools down to. With
:data:`CONTEXT_PATCH` and :data:`OBJECT_CONTEXT` it keeps the recipe measured on ISBI 2012 and
CamVid (patch 256, depth 4: ``benchmarks/results/quality-*.md``) for those data sets; a larger
patch or a smaller bottleneck is a change to measure first."""
MAX_DEPTH = 5
CPU_BATCH = 4
GPU_MIN_BATCH = 2
GPU_MAX_BATCH = 16
GPU_MEMORY_SHARE = 0.5
"""Share of a GPU's free memory the planned batch's activations may take."""
BETWEEN_SHARE = 0.5
"""Share of the pixel variance between image means above which images are z-scored alone."""
TAIL_SD = 5.0
"""A 99.5th percentile more than this many sd above the mean makes intensities heavy-tailed."""

LABELS = {"model.arch": "network", "data.patch_size": "patch size", "model.depth": "depth",
          "train.batch_size": "batch size", "model.width": "width",
          "model.top_width": "first-level width", "data.normalization": "normalisation",
          "train.loss": "loss", "steps": "steps"}


@dataclass(frozen=True)
class Choice:
    """A planned value and why."""

    value: Any
    reason: str


@dataclass(frozen=True)
class Plan:
    """Planned RunConfig fields (dotted names, :data:`PLANNED_FIELDS`) with their reasons,
    and ``estimates`` that follow from them (``steps``: the optimiser steps the run is
    expected to take), for the data set, device and budget named."""

    choices: dict[str, Choice]
    data: str = ""
    device: str = "cpu"
    time_budget_s: float | None = None
    estimates: dict[str, Choice] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``plan.json``."""
        return {"format": FORMAT, "version": VERSION, "data": self.data, "device": self.device,
                "time_budget_s": self.time_budget_s,
                "plan": {k: {"value": c.value, "reason": c.reason}
                         for k, c in self.choices.items()},
                "estimates": {k: {"value": c.value, "reason": c.reason}
                              for k, c in self.estimates.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """A plan from :meth:`to_dict`'s JSON (raises ValueError or KeyError otherwise)."""
        if d.get("format") != FORMAT:
            raise ValueError(f"format is {d.get('format')!r}, not {FORMAT!r}")
        unknown = sorted(set(d["plan"]) - set(PLANNED_FIELDS))
        if unknown:
            raise ValueError(f"unknown planned fields {unknown}; a plan sets"
                             f" {', '.join(PLANNED_FIELDS)}")
        return cls({k: Choice(v["value"], str(v.get("reason", "")))
                    for k, v in d["plan"].items()},
                   str(d.get("data", "")), str(d.get("device", "cpu")), d.get("time_budget_s"),
                   {k: Choice(v["value"], str(v.get("reason", "")))
                    for k, v in (d.get("estimates") or {}).items()})

    def apply(self, cfg: RunConfig, fixed: Collection[str] = ()) -> RunConfig:
        """``cfg`` with the planned values, except the fields in ``fixed``."""
        changes = {k: c.value for k, c in self.choices.items() if k not in fixed}
        return replace(cfg, **changes)

    def rows(self) -> list[tuple[str, str, str]]:
        """(what, value, reason) of every choice and estimate, for a table."""
        items = [*self.choices.items(), *self.estimates.items()]
        return [(LABELS.get(k, k), "-" if c.value is None else str(c.value), c.reason)
                for k, c in items]


def read_plan(path: str | Path) -> Plan:
    """A ``plan.json``; :class:`UserError` naming the file when it is not one."""
    path = Path(path)
    try:
        return Plan.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UserError(f"{path}: no such plan file; write one with: unetseg plan DATA --out"
                        f" {path.parent}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a readable plan ({exc}); write one with unetseg plan"
                        " DATA, or fix the file") from None


def format_plan(plan: Plan) -> str:
    """The plan as a table with a reason per row."""
    rows = plan.rows()
    wide = max(len(r[0]) for r in rows)
    value_wide = max(len(r[1]) for r in rows)
    budget = ("no time budget" if plan.time_budget_s is None
              else f"time budget {plan.time_budget_s:g} s")
    lines = [f"plan for {plan.data} on {plan.device}, {budget}:"]
    lines += [f"  {what:<{wide}}  {value:<{value_wide}}  {reason}" for what, value, reason in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the rules


def depth_for(patch: int) -> int:
    """Poolings that bring ``patch`` down to at most :data:`BOTTLENECK` pixels (1 to
    :data:`MAX_DEPTH`)."""
    return max(1, min(MAX_DEPTH, math.ceil(math.log2(max(patch, 2) / BOTTLENECK))))


def plan_geometry(fp: Fingerprint, patch: int | None = None, depth: int | None = None
                  ) -> tuple[Choice, Choice]:
    """The patch side and depth (each None to plan, else kept), from the objects' sizes and
    the smallest image side (module docstring)."""
    min_side = int(fp.sizes["min_side"]["min"])
    diameter = (fp.objects.get("diameter") or {}).get("p90")
    reasons = []
    if patch is None:
        wanted = CONTEXT_PATCH
        if diameter:
            wanted = max(wanted, math.ceil(OBJECT_CONTEXT * diameter))
            reasons.append(f"at least {OBJECT_CONTEXT}x the 90th-percentile object diameter"
                           f" ({diameter:.0f} px over {fp.objects['count']} objects) and"
                           f" {CONTEXT_PATCH} px of context")
        else:
            reasons.append(f"{CONTEXT_PATCH} px of context (no foreground objects measured)")
    else:
        wanted = patch
    planned_depth = depth is None
    depth = depth_for(wanted) if depth is None else depth
    if patch is not None:
        patch_choice = Choice(patch, f"given ({flag_hint('data.patch_size')})")
    else:
        step = 2**depth
        value = math.ceil(wanted / step) * step
        cap = max(step, min_side // step * step)
        if value > cap:
            value = cap
            reasons.append(f"capped by the smallest image side ({min_side} px)")
            if planned_depth:
                depth = depth_for(value)
        reasons.append(f"a multiple of 2**{depth}")
        patch_choice = Choice(value, "; ".join(reasons))
    side = patch_choice.value
    if planned_depth:
        depth_choice = Choice(depth, f"pools the {side}-px patch {depth} times, to a bottleneck"
                                     f" of {side / 2**depth:g} px (pooling until at most"
                                     f" {BOTTLENECK} px, at most {MAX_DEPTH} times)")
    else:
        depth_choice = Choice(depth, f"given ({flag_hint('model.depth')})")
    return patch_choice, depth_choice


def activation_bytes(width: int, depth: int, patch: int, top_width: int | None = None) -> int:
    """A rough upper estimate of one training sample's activation memory (bytes) in a
    same-padding U-Net: every level keeps its two convolutions' outputs, their normalised and
    activated copies (6 maps of its channels), the decoder also the upsampled map and the
    concatenation (3 more), all in float32, doubled for the gradients of the backward pass."""
    elements = 0
    for level in range(depth + 1):
        channels = (top_width or width) if level == 0 else width * 2**level
        maps = 6 + (3 if level < depth else 0)
        elements += maps * channels * (patch // 2**level) ** 2
    return 2 * 4 * elements


def plan_batch(device: torch.device, patch: int, depth: int, width: int | None,
               top_width: int | None = None, processes: int = 1) -> Choice:
    """The global batch (module docstring); a multiple of ``processes``."""
    if device.type != "cuda":
        batch = math.ceil(CPU_BATCH / processes) * processes
        return Choice(batch, f"{batch} patches per step on a CPU, the recipe's default: a"
                             " step's time grows with the batch, so a larger one buys fewer"
                             " steps of the budget")
    free, _ = torch.cuda.mem_get_info(device)
    guess = width or 64
    per_sample = activation_bytes(guess, depth, patch, top_width)
    fits = int(free * GPU_MEMORY_SHARE // per_sample)
    per_gpu = max(GPU_MIN_BATCH, min(GPU_MAX_BATCH, fits))
    return Choice(per_gpu * processes,
                  f"{per_gpu} patches per GPU: about {per_sample / 2**20:.0f} MiB of"
                  f" activations each (width {guess}, {patch}-px patches), {fits} fit in"
                  f" {GPU_MEMORY_SHARE:.0%} of the {free / 2**30:.0f} GiB free; kept within"
                  f" {GPU_MIN_BATCH}..{GPU_MAX_BATCH}"
                  + (f", times {processes} processes" if processes > 1 else ""))


def intensity_evidence(fp: Fingerprint) -> dict[str, float]:
    """The numbers the normalisation is chosen by, worst channel: ``between`` (share of the
    pixel variance between image means), ``tail_sd`` ((99.5th percentile - mean) / sd) and
    ``outliers`` ((max - 99.5th percentile) / (99.5th - 0.5th percentile))."""
    rows = fp.intensity["all"]
    tail = max(((r["p99.5"] - r["mean"]) / r["sd"]) if r["sd"] > 0 else 0.0 for r in rows)
    outliers = max(((r["max"] - r["p99.5"]) / (r["p99.5"] - r["p0.5"]))
                   if r["p99.5"] > r["p0.5"] else 0.0 for r in rows)
    return {"between": max(fp.intensity["between_image_share"]), "tail_sd": tail,
            "outliers": outliers}


def plan_normalization(fp: Fingerprint) -> Choice:
    """``image``, ``percentile`` or ``dataset`` (module docstring)."""
    e = intensity_evidence(fp)
    brighter = fp.intensity.get("foreground_brighter")
    polarity = ("" if brighter is None else
                f"; the foreground is brighter than the background in {brighter:.0%} of the"
                " images")
    if e["between"] >= BETWEEN_SHARE:
        return Choice("image", f"per-image z-score: the images differ in brightness,"
                               f" {e['between']:.0%} of the pixel variance lies between their"
                               f" means (>= {BETWEEN_SHARE:.0%}: mixed modalities or"
                               f" exposures){polarity}")
    if e["tail_sd"] > TAIL_SD or e["outliers"] > 1.0:
        return Choice("percentile", f"clip to the 0.5-99.5th percentiles, then z-score:"
                                    f" heavy-tailed intensities (99.5th percentile"
                                    f" {e['tail_sd']:.1f} sd above the mean, the brightest"
                                    f" pixels {e['outliers']:.1f}x the 0.5-99.5 range beyond"
                                    " it)")
    return Choice("dataset", f"per-dataset z-score: the images share one intensity scale"
                             f" ({e['between']:.0%} of the variance between image means),"
                             f" without heavy tails (99.5th percentile {e['tail_sd']:.1f} sd"
                             " above the mean)")


ARCH_REASON = (
    "the plain U-Net: at equal CPU budgets no built-in variant beat it in every run, on ISBI"
    " 2012 (5 folds) or CamVid (3 seeds); see benchmarks/results/variants-*.md")


def plan_arch() -> Choice:
    """The network: the plain U-Net, which the variants did not beat (:data:`ARCH_REASON`)."""
    return Choice("unet", ARCH_REASON)


def plan_loss(fp: Fingerprint) -> Choice:
    rarest = min(fp.classes, key=lambda c: c["share"])
    return Choice("dice_ce", f"Dice + cross-entropy: the Dice term keeps the rarest class"
                             f" ({rarest['name']}, {rarest['share']:.1%} of the pixels) from"
                             " being outweighed")


def plan_from_fingerprint(fp: Fingerprint, cfg: RunConfig, device: torch.device, *,
                          fixed: Collection[str] = (), processes: int = 1) -> Plan:
    """The plan of every :data:`PLANNED_FIELDS` field but the width (planned by timing, see
    :func:`complete_plan`), around the ``fixed`` fields of ``cfg``."""
    def given(name: str) -> Choice:
        return _given(cfg, name)

    patch, depth = plan_geometry(
        fp, cfg.data.patch_size if "data.patch_size" in fixed else None,
        cfg.model.depth if "model.depth" in fixed else None)
    choices = {"model.arch": given("model.arch") if "model.arch" in fixed else plan_arch(),
               "data.patch_size": patch, "model.depth": depth}
    choices["train.batch_size"] = (
        given("train.batch_size") if "train.batch_size" in fixed else
        plan_batch(device, patch.value, depth.value, cfg.model.width, cfg.model.top_width,
                   processes))
    for name in ("model.width", "model.top_width"):
        if name in fixed:
            choices[name] = given(name)
    choices["data.normalization"] = (given("data.normalization")
                                     if "data.normalization" in fixed
                                     else plan_normalization(fp))
    choices["train.loss"] = given("train.loss") if "train.loss" in fixed else plan_loss(fp)
    return Plan(choices, fp.data, str(device), cfg.train.time_limit_s)


def complete_plan(plan: Plan, cfg: RunConfig, width: WidthPlan | None,
                  epochs: EpochPlan | None, steps_per_epoch: int) -> Plan:
    """``plan`` with the width and the expected steps of the resolved ``cfg``: the width's
    reason from ``width`` (planned) or the plan it came from; ``steps`` from the epoch plan of
    a budget, else the configured epochs."""
    choices = dict(plan.choices)
    if width is not None:
        choices["model.width"] = Choice(cfg.model.width, width.reason)
        choices["model.top_width"] = Choice(
            cfg.model.top_width, "at least 2 channels per class at the first level"
            if cfg.model.top_width else "none: 2 channels per class fit in the width")
    for name in ("model.width", "model.top_width"):
        section, key = name.split(".")
        value = getattr(getattr(cfg, section), key)
        if name in choices and choices[name].value == value:
            continue
        choices[name] = (Choice(None, "none: the first level has the width's channels")
                         if value is None else _given(cfg, name))
    ordered = {k: choices[k] for k in PLANNED_FIELDS if k in choices}
    if epochs is not None:
        steps = Choice(epochs.steps_per_epoch * epochs.epochs, f"the budget buys about"
                       f" {epochs.epochs} epochs of {epochs.reason}")
    else:
        steps = Choice(steps_per_epoch * cfg.train.epochs, f"{cfg.train.epochs} epochs of"
                       f" {steps_per_epoch} steps (no time budget)")
    return Plan(ordered, plan.data, plan.device, plan.time_budget_s, {"steps": steps})


def fixed_fields(cfg: RunConfig, named: Collection[str] = ()) -> set[str]:
    """The planned fields a plan must keep in ``cfg``: those ``named`` (the flags given, the
    keys of a ``--config`` file) and those that differ from :class:`RunConfig`'s defaults."""
    default = RunConfig()
    kept = set(named) & set(PLANNED_FIELDS)
    for name in PLANNED_FIELDS:
        section, key = name.split(".")
        if getattr(getattr(cfg, section), key) != getattr(getattr(default, section), key):
            kept.add(name)
    return kept


def _given(cfg: RunConfig, name: str) -> Choice:
    section, key = name.split(".")
    return Choice(getattr(getattr(cfg, section), key), f"given ({flag_hint(name)})")


def apply_plan(cfg: RunConfig, plan: Plan, fixed: Collection[str] = ()
               ) -> tuple[RunConfig, Plan]:
    """``cfg`` with ``plan`` applied around ``fixed``, checked (a value edited into a plan
    file that no run can use is a one-line :class:`UserError`), and the plan as applied (the
    ``fixed`` fields it holds recorded as given)."""
    out = plan.apply(cfg, fixed)
    check_run_config(out)
    choices = {k: _given(out, k) if k in fixed else c for k, c in plan.choices.items()}
    return out, Plan(choices, plan.data, plan.device, plan.time_budget_s, plan.estimates)


def plan_for_data(fp: Fingerprint, cfg: RunConfig, device: torch.device, *,
                  fixed: Collection[str] = (), val_fraction: float | None = None) -> Plan:
    """The whole plan for ``unetseg plan``: :func:`plan_from_fingerprint`, then the width
    timed on ``device`` for the budget and the steps it buys, with the validation share of
    ``val_fraction`` (default the config's) of the images' area."""
    cfg = replace(cfg, **{"model.in_channels": fp.channels,
                          "model.num_classes": len(fp.classes)})
    cfg, plan = apply_plan(cfg, plan_from_fingerprint(fp, cfg, device, fixed=fixed), fixed)
    share = cfg.data.val_fraction if val_fraction is None else val_fraction
    patch, batch = cfg.data.patch_size, cfg.train.batch_size
    width_plan = None
    if cfg.model.width is None:
        width_plan = plan_width(cfg, batch, patch, device)
        cfg = replace(cfg, **{"model.width": width_plan.width,
                              "model.top_width": width_plan.top_width})
    area = fp.images * fp.sizes["height"]["p50"] * fp.sizes["width"]["p50"]
    area_steps = max(MIN_STEPS_PER_EPOCH, math.ceil(area * (1 - share) / patch**2 / batch))
    epochs = None
    if cfg.train.time_limit_s is not None:
        if width_plan is not None and not math.isnan(width_plan.probe_step_s):
            step_s = width_plan.probe_step_s * (width_plan.width / width_plan.probe_width) ** 2
        else:
            from unetseg.train.plan import time_train_step

            step_s = time_train_step(cfg, batch, patch, device)
        epochs = plan_epochs(cfg.train.time_limit_s, step_s, area_steps,
                             estimate_validation_s(step_s, batch, patch, area * share))
    return complete_plan(plan, cfg, width_plan, epochs, area_steps)
