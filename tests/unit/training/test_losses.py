"""training/losses.py: a final softmax/sigmoid is stripped for training, so losses stay finite and exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modelport.training.losses import build_objective, final_activation


def test_cross_entropy_on_a_softmax_network_uses_logits_and_stays_finite() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.Softmax(dim=-1))
    objective = build_objective("cross_entropy", final=final_activation(net))
    assert objective.strip_final and objective.outputs == "probabilities"
    logits = torch.tensor([[200.0, -200.0, 0.0]])  # softmax underflows to exactly 0 for class 1
    target = torch.tensor([1])
    loss = objective.loss(logits, target)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(400.0)
    assert torch.isinf(-torch.log(torch.softmax(logits, -1))[0, 1])  # what the naive form would give


def test_label_smoothing_is_passed_on() -> None:
    objective = build_objective("cross_entropy", final=None, label_smoothing=0.2)
    z, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(objective.loss(z, y), F.cross_entropy(z, y, label_smoothing=0.2))
    assert objective.outputs == "logits" and not objective.strip_final


def test_binary_cross_entropy_with_and_without_a_final_sigmoid() -> None:
    with_sigmoid = build_objective("binary_cross_entropy", final="sigmoid")
    z, y = torch.tensor([[30.0], [-30.0]]), torch.tensor([[0.0], [1.0]])
    assert with_sigmoid.strip_final and torch.isfinite(with_sigmoid.loss(z, y))
    assert with_sigmoid.correct(torch.tensor([[0.3], [-0.2]]), torch.tensor([[1.0], [1.0]])).item() == 1
    on_probabilities = build_objective("binary_cross_entropy", final="softmax")
    assert torch.isfinite(on_probabilities.loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])))


def test_regression_losses_and_mae_score() -> None:
    mse, mae = build_objective("mse", final=None), build_objective("mae", final=None)
    out, y = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]])
    assert mse.loss(out, y).item() == pytest.approx(2.5) and mae.loss(out, y).item() == pytest.approx(1.5)
    assert mse.metric == "mae" and mse.score(out, y).item() == pytest.approx(3.0)
    one_hot = build_objective("mse", final="softmax", one_hot=True)
    assert one_hot.metric == "accuracy" and one_hot.correct(torch.eye(2), torch.eye(2)).item() == 2
