"""The training loop's state between epochs, as stored in ``resume.safetensors``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunState:
    """What one epoch hands to the next, and all of the loop that ``--resume`` restores.

    ``epochs`` is the planned number of epochs (the loop's end), which a time budget re-plans
    after each epoch; the last of them takes ``last_epoch_steps`` optimiser steps when the
    budget shortened it (None: as many as the others). ``elapsed_s`` is the summed wall time
    of the completed epochs' training and validation (s), the time a budget counts;
    ``train_s`` / ``timed_steps`` is the mean training-step time (s). ``stopped`` names why the
    run ended (``"epochs"``, ``"early_stopping"``, ``"time_limit"``), None while it goes on.
    """

    epochs: int
    epoch: int = 0
    last_epoch_steps: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -math.inf
    bad_epochs: int = 0
    elapsed_s: float = 0.0
    optimizer_steps: int = 0
    train_s: float = 0.0
    timed_steps: int = 0
    stopped: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the keys are the field names)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunState:
        """The state stored by :meth:`to_json`, or by an older unetseg: fields it lacks take
        their defaults (a file from before ``train_s`` times steps from the resumed epochs
        alone), keys this class does not know are skipped."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def steps_in(self, epoch: int, steps: int) -> int:
        """Optimiser steps of ``epoch`` (1-based) in epochs of ``steps``: fewer in a shortened
        last epoch."""
        shortened = self.last_epoch_steps is not None and epoch == self.epochs
        return self.last_epoch_steps if shortened else steps  # type: ignore[return-value]

    def total_steps(self, steps: int) -> int:
        """Optimiser steps of the whole planned run in epochs of ``steps``."""
        last = steps if self.last_epoch_steps is None else self.last_epoch_steps
        return (self.epochs - 1) * steps + last

    def count_epoch(self, steps: int, train_s: float, elapsed_s: float) -> None:
        """Add an epoch's ``steps`` optimiser steps, their ``train_s`` seconds and the
        epoch's ``elapsed_s`` seconds of training and validation."""
        self.optimizer_steps += steps
        self.timed_steps += steps
        self.train_s += train_s
        self.elapsed_s += elapsed_s

    def record(self, row: dict[str, Any], score: float) -> bool:
        """Append the epoch's metrics ``row`` with its ``score`` (higher is better) and mark the
        epoch done; return whether it beat every earlier epoch."""
        self.history.append(row)
        improved = score > self.best_score
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        self.best_score = max(self.best_score, score)
        self.epoch = row["epoch"]
        return improved
