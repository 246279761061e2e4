"""training/regularization.py: penalties cover weights only; dropout goes after hidden activations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelport.training.regularization import insert_dropout, make_penalty


def test_penalty_covers_weights_not_biases() -> None:
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -2.0]]))
        net.bias.fill_(100.0)
    penalty = make_penalty(net, l1=0.1, l2=0.01)
    assert penalty is not None and penalty().item() == pytest.approx(0.1 * 3 + 0.01 * 5)
    assert make_penalty(net, l1=0.0, l2=0.0) is None


def test_dropout_insertion() -> None:
    layers = [
        {"dense": 64, "activation": "relu"},
        {"dropout": 0.5},
        {"dense": 32, "activation": "tanh"},
        "flatten",
        {"dense": 10, "activation": "softmax"},
    ]
    assert insert_dropout(layers, 0.2) == [
        {"dense": 64, "activation": "relu"},
        {"dropout": 0.5},
        {"dense": 32, "activation": "tanh"},
        {"dropout": 0.2},
        "flatten",
        {"dense": 10, "activation": "softmax"},
    ]
