"""The small stateful helpers the loop calls in a fixed order: progress events, early stopping.

Each keeps its state in a JSON-ready dict so a checkpoint restores it exactly. Checkpoint writing
itself lives in :mod:`modelport.training.loop` (``Hooks``), which knows the position to save.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

Event = dict[str, Any]
Report = Callable[[Event], None]
PROGRESS_INTERVAL_S = 0.5


class ProgressEvents:
    """Emits ``progress`` events at most every 0.5 s; the only per-step cost is reading the clock.

    ``loss.item()`` is a device sync, so it is read only when an event is due.
    """

    def __init__(self, report: Report, *, epochs: int, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self._report = report
        self._epochs = epochs
        self._interval = interval_s
        self._last = time.perf_counter()
        self._epoch_start = self._last
        self._epoch_first_step = 0

    def start_epoch(self, step: int) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_first_step = step

    def step(self, *, epoch: int, step: int, steps: int, loss: torch.Tensor, lr: float, batch: int) -> None:
        now = time.perf_counter()
        if now - self._last < self._interval:
            return
        self._last = now
        done = step - self._epoch_first_step
        elapsed = max(now - self._epoch_start, 1e-9)
        per_step = elapsed / max(done, 1)
        remaining = (steps - step) + (self._epochs - epoch - 1) * steps
        self._report(
            {
                "type": "progress",
                "epoch": epoch + 1,
                "epochs": self._epochs,
                "step": step,
                "steps_per_epoch": steps,
                "loss": float(loss.item()),  # sync point, throttled
                "throughput": done * batch / elapsed,
                "eta_s": remaining * per_step,
                "lr": lr,
            }
        )


@dataclass
class EarlyStopping:
    """Stop when ``metric`` has not improved by ``min_delta`` for ``patience`` epochs."""

    metric: str
    mode: str
    patience: int
    min_delta: float
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0

    @classmethod
    def create(cls, metric: str, mode: str, patience: int, min_delta: float) -> EarlyStopping:
        if mode == "auto":
            mode = "max" if metric.endswith("accuracy") else "min"
        return cls(metric=metric, mode=mode, patience=patience, min_delta=min_delta)

    def update(self, epoch: int, metrics: dict[str, float]) -> tuple[bool, bool]:
        """(improved, stop) after an epoch's metrics."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            self.bad_epochs += 1
            return False, self.bad_epochs > self.patience
        sign = 1.0 if self.mode == "min" else -1.0
        if self.best is None or sign * (self.best - value) > self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True, False
        self.bad_epochs += 1
        return False, self.bad_epochs > self.patience

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EarlyStopping:
        return cls(**state)
