"""Optimizers from the spec, with default learning rates that work.

The defaults are chosen so that the mission's example (784 -> dense 64 relu -> dense 10 softmax,
batch 32, 10 epochs, inputs / 255) reaches >= 97% MNIST test accuracy with every optimizer when only
its name is given (measured: docs/benchmarks.md, "Training"). Keras's defaults leave Adagrad
(0.001) near 90% and Adadelta (0.001) near 75%; torch's Adadelta default of 1.0 and an Adagrad rate
of 0.05 fix that. ``gd`` is plain gradient descent on the full training set (one step per epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from modelport.training.spec import OptimizerSpec

DEFAULT_LR: dict[str, float] = {
    "gd": 0.5,
    "sgd": 0.01,
    "adagrad": 0.05,
    "adadelta": 1.0,
    "rmsprop": 0.001,
    "adam": 0.001,
    "adamw": 0.001,
}
_TORCH: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "gd": torch.optim.SGD,
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def base_lr(spec: OptimizerSpec) -> float:
    return spec.lr if spec.lr is not None else DEFAULT_LR[spec.name]


def build_optimizer(spec: OptimizerSpec, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The torch optimizer for ``spec``; options not given keep torch's defaults."""
    options: dict[str, Any] = {
        k: getattr(spec, k) for k in spec.model_fields_set if k not in ("name", "lr") and getattr(spec, k) is not None
    }
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    return _TORCH[spec.name](list(params), lr=base_lr(spec), **options)
