"""Losses, built once before the loop, and how the network's last layer is treated while training.

A layer list that ends in softmax (the mission's Keras-style model) would make cross-entropy take
``log(softmax(z))``: slow, and it underflows to ``-inf`` for confident mistakes. So the training
head drops a final softmax (or sigmoid, for binary cross-entropy) and the loss runs on logits with
the fused, stable kernels; the exported network keeps the layer, so serving returns probabilities.
Without such a final layer the outputs are logits and the manifest asks serving to apply
softmax/sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Targets = Literal["class_index", "one_hot", "binary", "regression"]


@dataclass(frozen=True)
class Objective:
    """The loss on the training head's outputs, and how to count correct predictions."""

    loss: LossFn
    strip_final: bool
    """The training head is the network without its last module (a softmax or sigmoid)."""
    outputs: Literal["logits", "probabilities", "values"]
    """What the *exported* network returns before serving's postprocess."""
    targets: Targets

    @property
    def metric(self) -> str:
        """The second figure of every epoch: accuracy for classifiers, mean absolute error otherwise."""
        return "mae" if self.targets == "regression" else "accuracy"

    def score(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Sum over the batch of :attr:`metric` (a 0-dim tensor: no device sync)."""
        if self.targets == "regression":
            return (out - y).abs().reshape(out.shape[0], -1).mean(dim=1).sum()  # (B, k) -> ()
        return self.correct(out, y)

    def correct(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Number of right predictions in a batch of training-head outputs (a 0-dim tensor, no sync)."""
        if self.targets == "class_index":
            return (out.argmax(dim=-1) == y).sum()  # (B, C) vs (B,)
        if self.targets == "one_hot":
            return (out.argmax(dim=-1) == y.argmax(dim=-1)).sum()  # (B, C) vs (B, C)
        threshold = 0.0 if self.strip_final or self.outputs == "logits" else 0.5
        return ((out > threshold) == (y > 0.5)).all(dim=-1).sum()  # (B, k) vs (B, k)


def final_activation(net: nn.Module) -> str | None:
    """'softmax', 'log_softmax' or 'sigmoid' when the network is a Sequential ending in that layer."""
    if not isinstance(net, nn.Sequential) or len(net) < 2:
        return None
    last = net[-1]
    if isinstance(last, nn.Softmax):
        return "softmax"
    if isinstance(last, nn.LogSoftmax):
        return "log_softmax"
    if isinstance(last, nn.Sigmoid):
        return "sigmoid"
    return None


def build_objective(
    name: str, *, final: str | None, label_smoothing: float = 0.0, one_hot: bool = False, classification: bool = False
) -> Objective:
    """The loss named in the spec, fitted to the network's last layer (see the module docstring)."""
    if name == "cross_entropy":
        strip = final in ("softmax", "log_softmax")
        if final == "log_softmax":
            return Objective(
                lambda z, y: F.cross_entropy(z, y, label_smoothing=label_smoothing), True, "values", "class_index"
            )
        outputs: Literal["logits", "probabilities", "values"] = "probabilities" if strip else "logits"
        return Objective(
            lambda z, y: F.cross_entropy(z, y, label_smoothing=label_smoothing), strip, outputs, "class_index"
        )
    if name == "binary_cross_entropy":
        targets: Targets = "one_hot" if one_hot else "binary"
        if final == "sigmoid":
            return Objective(F.binary_cross_entropy_with_logits, True, "probabilities", targets)
        if final == "softmax":
            return Objective(_bce_on_probabilities, False, "probabilities", targets)
        return Objective(F.binary_cross_entropy_with_logits, False, "logits", targets)
    kind: Targets = "one_hot" if one_hot else "regression"
    loss: LossFn = F.mse_loss if name == "mse" else F.l1_loss
    return Objective(loss, False, "probabilities" if final in ("softmax", "sigmoid") else "values", kind)


def _bce_on_probabilities(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    eps = 1e-7  # keep log() finite for saturated probabilities
    return F.binary_cross_entropy(p.clamp(eps, 1 - eps), y)
