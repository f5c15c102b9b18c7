"""Cross-validation as a product: one model per fold, each scored on the images it did not
train on, the fold models as one model set with post-processing chosen on those scores.

``fit(DATA, RUN, folds=5)`` (``unetseg train DATA --out RUN --folds 5``) splits the pairs into
folds (:mod:`unetseg.data.folds`: seeded, images from one source held out together) and, fold
by fold, trains ``RUN/fold-<i>/`` (a normal run folder) on the other folds with the held-out
fold as its validation set: its curves are the held-out scores and ``best.safetensors`` its
best epoch on them (so the fold's score, that epoch's, is a little optimistic, as any score of a
model chosen on it). Each fold's held-out images are then predicted by its ``best.safetensors``
and scored; their labels are kept in ``RUN/fold-<i>/heldout.npz`` beside the truth.

``RUN/folds.json`` holds the split, each finished fold's scores and seconds, and (once every
fold is done) their mean and sample standard deviation (n - 1) per metric. Then the
post-processing is chosen on all held-out predictions at once
(:func:`~unetseg.infer.postprocess.choose_postprocessing`) and ``RUN/modelset.json`` names the
fold models, their class table and the chosen steps: ``unetseg predict RUN images/`` predicts
with the mean of the fold models' probabilities, then post-processes.

**Resuming.** With ``resume`` a finished fold is skipped, an interrupted one continues from its
``resume.safetensors`` (the single run's machinery), and the rest start; the split and the
configuration are the stored ones.

**Time budget.** ``cfg.train.time_limit_s`` is the whole run's: fold ``i`` of ``k`` gets
``(budget - seconds spent by the finished folds) / (k - i)`` as its own limit, counted as a
single run counts it. The folds after the first take its planned width, so the members are one
network.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unetseg.config import PredictConfig, RunConfig, from_dict, replace, to_dict
from unetseg.data.classes import ClassTable
from unetseg.data.folds import GROUPING_RULE, split_folds
from unetseg.data.io import read_image
from unetseg.data.masks import encode_mask
from unetseg.data.pairs import Pair, find_pairs, read_pair_mask
from unetseg.errors import UserError
from unetseg.files import atomic_path, output_folder, write_text_atomic
from unetseg.infer.load import load_predictor
from unetseg.infer.modelset import MODEL_SET_FILE, write_model_set
from unetseg.infer.postprocess import (
    Selection,
    Step,
    choose_postprocessing,
    component_areas,
    foreground_dice,
    learned_min_size,
)
from unetseg.infer.predict import logits_to_labels
from unetseg.metrics import confusion_matrix, summarize
from unetseg.modelfile import read_card
from unetseg.train.distributed import DistEnv

log = logging.getLogger(__name__)

FOLDS_FILE = "folds.json"
HELD_OUT_FILE = "heldout.npz"
MIN_FOLD_BUDGET_S = 1.0
"""Least time limit of a fold whose share of the budget is spent already (it trains one
epoch)."""
SUMMARY_METRICS = ("mean_iou", "mean_dice", "foreground_dice", "pixel_accuracy")
"""The fold table's columns; ``folds.json`` also holds each class's IoU and Dice."""


@dataclass(frozen=True)
class CrossValidation:
    """What a cross-validation run left in ``run_dir``.

    Attributes:
        run_dir: the run folder, a model set (:mod:`unetseg.infer.modelset`).
        folds: one row of held-out scores per fold (``fold``, ``images``, ``seconds``,
            ``model``, the metrics).
        summary: metric -> ``{"mean", "sd", "n"}`` over the folds (sd with n - 1; None for
            fewer than 2 defined values).
        postprocessing: the steps kept on the held-out predictions.
        selection: the choice's metric before and after, and every step tried.
    """

    run_dir: Path
    folds: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]
    postprocessing: tuple[Step, ...]
    selection: dict[str, Any]

    @property
    def model_set(self) -> Path:
        return self.run_dir / MODEL_SET_FILE


def fold_summary(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and sample standard deviation (n - 1) over the folds of every metric of ``rows``
    (the numbers other than ``fold``, ``images`` and ``seconds``); undefined (None) values are
    left out."""
    skip = {"fold", "images", "seconds", "model"}
    names = [k for k in rows[0] if k not in skip] if rows else []
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        values = [float(r[name]) for r in rows if r.get(name) is not None]
        out[name] = {"mean": statistics.fmean(values) if values else None,
                     "sd": statistics.stdev(values) if len(values) > 1 else None,
                     "n": len(values)}
    return out


def fold_row(fold: int, images: int, cm: torch.Tensor, classes: ClassTable
             ) -> dict[str, Any]:
    """One fold's held-out scores from its pooled (K, K) confusion matrix."""
    s = summarize(cm, classes.names)
    fg = foreground_dice(cm)
    row: dict[str, Any] = {"fold": fold, "images": images, "mean_iou": s["mean_iou"],
                           "mean_dice": s["mean_dice"],
                           "foreground_dice": None if math.isnan(fg) else fg,
                           "pixel_accuracy": s["pixel_accuracy"]}
    for name, m in s["per_class"].items():
        row[f"iou/{name}"] = m["iou"]
        row[f"dice/{name}"] = m["dice"]
    return row


def format_fold_table(rows: Sequence[dict[str, Any]], summary: dict[str, dict[str, Any]]
                      ) -> str:
    """The folds' held-out scores as a text table, with a last row of mean +- sd."""
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))

    head = ["fold", "images", *SUMMARY_METRICS]
    lines = [head]
    for r in rows:
        lines.append([str(r["fold"]), str(r["images"]), *(cell(r.get(m)) for m in
                                                          SUMMARY_METRICS)])
    stats = [summary.get(m, {}) for m in SUMMARY_METRICS]
    lines.append(["mean+-sd", str(sum(r["images"] for r in rows)),
                  *(f"{cell(s.get('mean'))}+-{cell(s.get('sd'))}" for s in stats)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)


# ----------------------------------------------------------------------------- the run file


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads(path.read_text())
        state["split"] = [list(s) for s in state["split"]]
        state["results"] = list(state["results"])
        return state
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a readable cross-validation record ({exc}); start the"
                        " run afresh in another --out") from None


def _write_state(out: Path, state: dict[str, Any]) -> None:
    write_text_atomic(out / FOLDS_FILE, json.dumps(state, indent=2))


def _start(data: str | Path, out: Path, cfg: RunConfig, folds: int, resume: bool
           ) -> dict[str, Any]:
    """The stored record of a resumed run, or a new one with the split (written)."""
    if cfg.train.task == "instance":
        raise UserError("--folds: cross-validation scores and averages semantic models; train"
                        " an instance model (--task instance) without --folds")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another --out")
    record = out / FOLDS_FILE
    if resume:
        if not record.is_file():
            raise UserError(f"{out}: no cross-validation to resume (no {FOLDS_FILE}); drop"
                            " --resume")
        state = _read_state(record)
        if state["folds"] != folds:
            raise UserError(f"{out}: holds a {state['folds']}-fold cross-validation; resume it"
                            f" with --folds {state['folds']}")
        return state
    if record.exists():
        raise UserError(f"{out}: holds a cross-validation already; pass --resume to continue"
                        " it or choose another --out")
    if (out / "resume.safetensors").exists():
        raise UserError(f"{out}: holds a single run; choose another --out for --folds")
    stems = [p.stem for p in find_pairs(data)]
    split = split_folds(stems, folds, cfg.train.seed)
    state = {"folds": folds, "seed": cfg.train.seed, "method": split.method,
             "grouping_rule": GROUPING_RULE, "data": str(Path(data).resolve()),
             "time_limit_s": cfg.train.time_limit_s, "run": to_dict(cfg),
             "split": [list(s) for s in split.held_out], "results": [None] * folds,
             "summary": None}
    output_folder(out)
    _write_state(out, state)
    log.info("split %d pairs into %d folds by %s", len(stems), folds, split.method)
    return state


def _fold_config(state: dict[str, Any], fold: int, out: Path) -> RunConfig:
    """Fold ``fold``'s configuration: the run's, holding the fold out for validation, with
    its share of the budget and the first fold's planned width."""
    cfg = from_dict(RunConfig, state["run"])
    changes: dict[str, Any] = {"data.val_stems": tuple(state["split"][fold])}
    total = state["time_limit_s"]
    if total is not None:
        spent = sum(r["seconds"] for r in state["results"] if r is not None)
        left = len(state["results"]) - sum(r is not None for r in state["results"])
        changes["train.time_limit_s"] = max(MIN_FOLD_BUDGET_S, (total - spent) / max(left, 1))
    first = out / "fold-0" / "best.safetensors"
    if cfg.model.width is None and fold > 0 and first.is_file():
        planned = read_card(first).model
        changes["model.width"], changes["model.top_width"] = planned.width, planned.top_width
    return replace(cfg, **changes)


# ----------------------------------------------------------------------------- held-out scores


def _label_dtype(num_classes: int) -> type:
    return np.int16 if num_classes < 2**15 else np.int32


def score_held_out(data: str | Path, model: Path, stems: Sequence[str], fold: int,
                   target: Path, device: str = "auto") -> dict[str, Any]:
    """Predict the held-out ``stems`` of ``data`` with ``model`` (fp32), save their labels and
    true class ids in ``target`` (``pred/<stem>``, ``truth/<stem>``), and return the fold's
    row of scores."""
    predictor, card = load_predictor(model, PredictConfig(device=device, precision="fp32"))
    pairs: dict[str, Pair] = {p.stem: p for p in find_pairs(data)}
    k = card.classes.num_classes
    dtype = _label_dtype(k)
    total = torch.zeros(k, k, dtype=torch.int64)
    arrays: dict[str, np.ndarray] = {}
    for stem in stems:
        pair = pairs[stem]
        image = read_image(pair.image)
        truth = encode_mask(read_pair_mask(pair), card.classes)
        labels = logits_to_labels(predictor.logits(image)).numpy()
        total += confusion_matrix(torch.from_numpy(labels), torch.from_numpy(truth).long(), k)
        arrays[f"pred/{stem}"] = labels.astype(dtype)
        arrays[f"truth/{stem}"] = truth.astype(dtype)
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
    row = fold_row(fold, len(stems), total, card.classes)
    return {**row, "model": f"fold-{fold}/best.safetensors"}


def held_out_predictions(out: Path, folds: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every fold's held-out labels and true class ids, as :func:`score_held_out` saved them."""
    predictions, truths = [], []
    for fold in range(folds):
        with np.load(out / f"fold-{fold}" / HELD_OUT_FILE) as saved:
            for key in saved.files:
                if key.startswith("pred/"):
                    predictions.append(saved[key].astype(np.int64))
                    truths.append(saved["truth/" + key[5:]].astype(np.int64))
    return predictions, truths


def select_postprocessing(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                          num_classes: int) -> Selection:
    """The steps chosen on held-out predictions, with ``remove_small`` sizes learned from the
    true objects of all images (:func:`~unetseg.infer.postprocess.learned_min_size`)."""
    min_sizes = {}
    for class_id in range(1, num_classes):
        areas = [component_areas(t, class_id) for t in truths]
        min_sizes[class_id] = learned_min_size(np.concatenate(areas) if areas else
                                               np.zeros(0))
    return choose_postprocessing(predictions, truths, num_classes, min_sizes)


# ----------------------------------------------------------------------------- the run


def cross_validate(data: str | Path, out: str | Path, cfg: RunConfig | None = None, *,
                   folds: int, train_run: Callable[..., Any], resume: bool = False,
                   show_progress: bool = True,
                   callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
                   loss_fn: Any = None, plan: Any = "auto",
                   fixed: Collection[str] = ()) -> CrossValidation:
    """Cross-validate on ``data`` into ``out`` (see the module's text).

    ``train_run`` trains one fold: :func:`unetseg.train.fit.fit` (``fit(data, out, cfg,
    folds=...)`` passes itself), called as ``train_run(data, fold_dir, fold_cfg, resume=...,
    show_progress=..., callbacks=..., loss_fn=..., plan=..., fixed=...)``. ``callbacks``,
    ``loss_fn`` and ``fixed`` go to every fold's run, ``plan`` to the first fold's: the
    others take the first fold's ``plan.json`` (when it planned), so the members are one
    recipe. An exception from a callback stops the whole run, which ``resume`` continues.

    Raises:
        UserError: an unusable ``out``, a split that cannot be made, several processes.
    """
    if DistEnv.from_environ().world_size > 1:
        raise UserError("--folds trains the folds one after another in one process; drop"
                        " --nproc (or torchrun)")
    out = Path(out)
    state = _start(data, out, cfg or RunConfig(), folds, resume)
    for fold in range(folds):
        if state["results"][fold] is not None:
            log.info("fold %d: finished before, skipped", fold)
            continue
        fold_dir = out / f"fold-{fold}"
        started = time.perf_counter()
        again = (fold_dir / "resume.safetensors").is_file()
        fold_cfg = None if again else _fold_config(state, fold, out)
        text = (f"fold {fold + 1}/{folds}: {len(state['split'][fold])} held-out images"
                + (" (resumed)" if again else ""))
        log.info(text)
        if show_progress:
            tqdm.write(text)
        first_plan = out / "fold-0" / "plan.json"
        fold_plan = first_plan if fold > 0 and plan is not None and first_plan.is_file() else plan
        train_run(data, fold_dir, fold_cfg, resume=again, show_progress=show_progress,
                  callbacks=callbacks, loss_fn=loss_fn, plan=fold_plan, fixed=fixed)
        trained = read_card(fold_dir / "best.safetensors").run
        row = score_held_out(data, fold_dir / "best.safetensors", state["split"][fold], fold,
                             fold_dir / HELD_OUT_FILE,
                             trained.train.device if trained is not None else "auto")
        row["seconds"] = round(time.perf_counter() - started, 2)
        state["results"][fold] = row
        _write_state(out, state)
    rows = state["results"]
    state["summary"] = fold_summary(rows)
    card = read_card(out / "fold-0" / "best.safetensors")
    predictions, truths = held_out_predictions(out, folds)
    selection = select_postprocessing(predictions, truths, card.classes.num_classes)
    chosen = selection.to_dict(card.classes.names)
    state["postprocessing"] = chosen
    _write_state(out, state)
    write_model_set(out, [f"fold-{i}/best.safetensors" for i in range(folds)], card.classes,
                    selection.steps, chosen)
    return CrossValidation(out, rows, state["summary"], selection.steps, chosen)

