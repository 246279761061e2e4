"""L1/L2 penalties on weights and dropout insertion into a layer list.

Penalties cover weight matrices and kernels only (``dim > 1``), not biases or norm scales, as in
Keras' ``kernel_regularizer``; weight decay (decoupled or not) is an optimizer option instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

_HIDDEN_ACTIVATIONS = frozenset({"relu", "gelu", "tanh", "sigmoid", "leaky_relu", "elu", "silu"})


def make_penalty(model: nn.Module, *, l1: float, l2: float) -> Callable[[], torch.Tensor] | None:
    """``() -> l1 * sum|w| + l2 * sum w^2`` over the weights, or None when both are zero."""
    if not l1 and not l2:
        return None
    weights = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]

    def penalty() -> torch.Tensor:
        total = torch.zeros((), device=weights[0].device)
        for w in weights:
            if l1:
                total = total + l1 * w.abs().sum()
            if l2:
                total = total + l2 * w.pow(2).sum()
        return total

    return penalty if weights else None


def insert_dropout(layers: Sequence[Any], p: float) -> list[Any]:
    """A copy of ``layers`` with ``{"dropout": p}`` after every hidden layer that has an activation.

    The last layer is never followed by dropout (it would drop outputs), nor is an existing dropout
    doubled.
    """
    out: list[Any] = []
    for index, layer in enumerate(layers):
        out.append(layer)
        last = index == len(layers) - 1
        following = layers[index + 1] if not last else None
        if not last and _has_activation(layer) and not _is_dropout(following):
            out.append({"dropout": p})
    return out


def _has_activation(layer: Any) -> bool:
    if isinstance(layer, str):
        return layer in _HIDDEN_ACTIVATIONS
    return isinstance(layer, dict) and layer.get("activation") in _HIDDEN_ACTIVATIONS


def _is_dropout(layer: Any) -> bool:
    return isinstance(layer, dict) and "dropout" in layer
