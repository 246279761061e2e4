"""Learning-rate and batch-size schedules as pure functions of the position in training.

Each function maps a position ``t`` to a learning rate and knows nothing about torch, so it is
unit-tested as plain arithmetic (nanoGPT's ``get_lr(it)``). ``t`` is in whatever unit the caller
uses for the parameters; the training loop passes fractional epochs (``epoch + step / steps``), so
``step_size: 2`` means two epochs whatever the batch size. Reduce-on-plateau depends on metrics, so
it is a small object whose state is a JSON-ready dict (it goes into checkpoints).
:func:`apply_lr` is the only line that touches an optimizer.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

LrFn = Callable[[float], float]


def constant(t: float, *, base_lr: float) -> float:
    return base_lr


def step(t: float, *, base_lr: float, step_size: float, gamma: float) -> float:
    """Multiply by ``gamma`` every ``step_size``."""
    return base_lr * gamma ** math.floor(t / step_size + 1e-9)


def multistep(t: float, *, base_lr: float, milestones: Sequence[float], gamma: float) -> float:
    """Multiply by ``gamma`` at each milestone passed."""
    return base_lr * gamma ** bisect.bisect_right(sorted(milestones), t + 1e-9)


def exponential(t: float, *, base_lr: float, gamma: float) -> float:
    """Multiply by ``gamma`` once per whole unit (per epoch): torch's ExponentialLR stepped each epoch."""
    return base_lr * gamma ** math.floor(t + 1e-9)


def linear_warmup(t: float, *, base_lr: float, warmup: float) -> float:
    """Rise linearly to ``base_lr`` at ``warmup``, then hold; never exactly 0, so no step is wasted."""
    if warmup <= 0 or t >= warmup:
        return base_lr
    return base_lr * max(t / warmup, 1e-3)


def cosine(t: float, *, base_lr: float, warmup: float, total: float, min_lr: float) -> float:
    """Linear warm-up to ``base_lr``, then a half cosine down to ``min_lr`` at ``total``."""
    if t < warmup:
        return linear_warmup(t, base_lr=base_lr, warmup=warmup)
    if total <= warmup:
        return base_lr
    progress = min(1.0, (t - warmup) / (total - warmup))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def cyclic(
    t: float, *, base_lr: float, max_lr: float, step_size: float, mode: str = "triangular", gamma: float = 1.0
) -> float:
    """Triangular cycles between ``base_lr`` and ``max_lr`` (Smith 2017); ``triangular2`` halves the
    amplitude each cycle, ``exp_range`` scales it by ``gamma ** t``."""
    cycle = math.floor(1 + t / (2 * step_size))
    x = abs(t / step_size - 2 * cycle + 1)
    amplitude = (max_lr - base_lr) * max(0.0, 1.0 - x)
    if mode == "triangular2":
        amplitude /= 2.0 ** (cycle - 1)
    elif mode == "exp_range":
        amplitude *= gamma**t
    return base_lr + amplitude


def one_cycle(
    t: float,
    *,
    max_lr: float,
    total: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> float:
    """One cycle (torch's OneCycleLR, cosine): up from max/div to max, then down to max/div/final_div."""
    initial = max_lr / div_factor
    final = initial / final_div_factor
    peak = pct_start * total
    if t <= peak:
        return _cos_between(initial, max_lr, t / peak if peak > 0 else 1.0)
    return _cos_between(max_lr, final, min(1.0, (t - peak) / max(total - peak, 1e-12)))


def _cos_between(start: float, end: float, fraction: float) -> float:
    return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * fraction))


@dataclass
class ReduceOnPlateau:
    """Multiply the rate by ``factor`` when ``metric`` has not improved for ``patience`` epochs."""

    mode: str = "min"
    factor: float = 0.1
    patience: int = 2
    threshold: float = 1e-4
    min_scale: float = 0.0
    best: float | None = None
    bad_epochs: int = 0
    scale: float = 1.0

    def update(self, value: float) -> float:
        """Record one epoch's metric; return the scale the base rate is multiplied by from now on."""
        if self.best is None or self._improved(value, self.best):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.scale = max(self.scale * self.factor, self.min_scale)
                self.bad_epochs = 0
        return self.scale

    def _improved(self, value: float, best: float) -> bool:
        if self.mode == "min":
            return value < best * (1 - self.threshold) if best > 0 else value < best - self.threshold * abs(best)
        return value > best * (1 + self.threshold) if best > 0 else value > best + self.threshold * abs(best)

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ReduceOnPlateau:
        return cls(**dict(state))


class _Options(Protocol):
    """The fields of spec.ScheduleSpec this module reads (a Protocol, so schedules never import pydantic)."""

    @property
    def name(self) -> str: ...
    @property
    def gamma(self) -> float | None: ...
    @property
    def step_size(self) -> float | None: ...
    @property
    def milestones(self) -> list[float] | None: ...
    @property
    def warmup(self) -> float | None: ...
    @property
    def min_lr(self) -> float | None: ...
    @property
    def mode(self) -> str | None: ...
    @property
    def max_lr(self) -> float | None: ...
    @property
    def pct_start(self) -> float | None: ...
    @property
    def div_factor(self) -> float | None: ...
    @property
    def final_div_factor(self) -> float | None: ...


def make_lr_fn(options: _Options | None, *, base_lr: float, total: float) -> LrFn:
    """``t -> lr`` for a spec's schedule (plateau's metric-driven scale is applied by the caller)."""
    if options is None or options.name in ("constant", "plateau"):
        return lambda t: base_lr
    o = options
    builders: dict[str, LrFn] = {
        "step": lambda t: step(t, base_lr=base_lr, step_size=o.step_size or 1.0, gamma=_g(o.gamma, 0.1)),
        "multistep": lambda t: multistep(t, base_lr=base_lr, milestones=o.milestones or [], gamma=_g(o.gamma, 0.1)),
        "exponential": lambda t: exponential(t, base_lr=base_lr, gamma=_g(o.gamma, 0.95)),
        "warmup": lambda t: linear_warmup(t, base_lr=base_lr, warmup=_g(o.warmup, 1.0)),
        "cosine": lambda t: cosine(t, base_lr=base_lr, warmup=o.warmup or 0.0, total=total, min_lr=o.min_lr or 0.0),
        "cyclic": lambda t: cyclic(
            t,
            base_lr=base_lr,
            max_lr=_g(o.max_lr, base_lr * 10),
            step_size=o.step_size or 2.0,
            mode=o.mode or "triangular",
            gamma=_g(o.gamma, 1.0),
        ),
        "one_cycle": lambda t: one_cycle(
            t,
            max_lr=_g(o.max_lr, base_lr * 10),
            total=total,
            pct_start=_g(o.pct_start, 0.3),
            div_factor=_g(o.div_factor, 25.0),
            final_div_factor=_g(o.final_div_factor, 1e4),
        ),
    }
    return builders[o.name]


def _g(value: float | None, default: float) -> float:
    return default if value is None else value


def batch_size_at(epoch: int, sizes: int | Mapping[int, int]) -> int:
    """The batch size for ``epoch``: fixed, or the entry of the latest epoch key not after ``epoch``."""
    if isinstance(sizes, int):
        return sizes
    return sizes[max(e for e in sizes if e <= epoch)]


class _ParamGroups(Protocol):
    param_groups: list[dict[str, Any]]


def apply_lr(optimizer: _ParamGroups, lr: float) -> float:
    """The thin adapter to torch: set every parameter group's rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
