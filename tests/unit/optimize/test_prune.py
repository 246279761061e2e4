"""optimize/prune.py: exact sparsity, schedules that never revive, held zeros, exact structured removal."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelport.optimize.prune import (
    Masks,
    Scope,
    apply_masks,
    count,
    hold_masks,
    magnitude_masks,
    masks_of,
    prunable,
    random_masks,
    structured,
    taylor_masks,
)
from modelport.training.nets import build_network

MLP = [{"dense": 300, "activation": "relu"}, {"dense": 100, "activation": "relu"}, {"dense": 10}]
CNN = [
    {"conv2d": {"filters": 8, "kernel_size": 3, "padding": "same"}, "activation": "relu"},
    {"maxpool": 2},
    {"conv2d": {"filters": 16, "kernel_size": 3, "padding": "same"}, "activation": "relu"},
    "flatten",
    {"dense": 32, "activation": "relu"},
    {"dense": 10},
]
# Odd sizes, so round(sparsity * n) is not a trivial product.
SMALL_CNN = [
    {"conv2d": {"filters": 5, "kernel_size": 3}, "activation": "relu"},
    {"maxpool": 2},
    "flatten",
    {"dense": 7, "activation": "relu"},
    {"dense": 3},
]
METHODS = ["random", "magnitude", "taylor"]
SCOPES: list[Scope] = ["layer", "global"]


def small_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return build_network(SMALL_CNN, [2, 9, 9])


def masks_by(method: str, model: nn.Sequential, sparsity: float, scope: Scope, current: Masks | None = None) -> Masks:
    if method == "random":
        return random_masks(model, sparsity, scope=scope, seed=1, current=current)
    if method == "magnitude":
        return magnitude_masks(model, sparsity, scope=scope, current=current)
    x, y = torch.rand(40, 2, 9, 9), torch.randint(0, 3, (40,))

    def loss_of(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(xb), yb)

    return taylor_masks(model, sparsity, scope=scope, loss_of=loss_of, x=x, y=y, batch_size=16, current=current)


def pruned_count(masks: Masks) -> int:
    return sum(int((~m).sum()) for m in masks.values())


def test_prunable_lists_dense_and_conv_weights_by_state_dict_key() -> None:
    model = build_network([*SMALL_CNN[:3], "batchnorm", *SMALL_CNN[3:]], [2, 9, 9])
    weights = prunable(model)
    assert list(weights) == ["0.weight", "5.weight", "7.weight"]
    assert weights["0.weight"] is model[0].weight


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("method", METHODS)
def test_each_method_prunes_exactly_the_rounded_count(method: str, scope: Scope) -> None:
    model = small_cnn()
    masks = masks_by(method, model, 0.37, scope)
    weights = prunable(model)
    assert list(masks) == list(weights)
    assert all(m.dtype == torch.bool and m.shape == weights[k].shape for k, m in masks.items())
    if scope == "layer":
        assert {k: int((~m).sum()) for k, m in masks.items()} == {
            k: round(0.37 * w.numel()) for k, w in weights.items()
        }
    else:
        assert pruned_count(masks) == round(0.37 * sum(w.numel() for w in weights.values()))


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("method", METHODS)
def test_a_schedule_never_revives_a_pruned_weight(method: str, scope: Scope) -> None:
    model = small_cnn()
    total = sum(w.numel() for w in prunable(model).values())
    current: Masks | None = None
    for sparsity in (0.5, 0.8, 0.9):
        masks = masks_by(method, model, sparsity, scope, current)
        if current is not None:
            assert all(not (m & ~current[k]).any() for k, m in masks.items())
        if scope == "global":
            assert pruned_count(masks) == round(sparsity * total)
        apply_masks(model, masks)
        with torch.no_grad():  # "fine-tuning": survivors change order, and pruned weights get large values
            for w in prunable(model).values():
                w.add_(torch.randn_like(w) * 5)
        current = masks


@pytest.mark.parametrize("scope", SCOPES)
def test_magnitude_keeps_the_largest_weights(scope: Scope) -> None:
    model = small_cnn()
    masks = magnitude_masks(model, 0.6, scope=scope)
    weights = {k: w.detach().abs() for k, w in prunable(model).items()}
    groups = [(weights[k], masks[k]) for k in masks]
    if scope == "global":
        groups = [(torch.cat([w.flatten() for w, _ in groups]), torch.cat([m.flatten() for _, m in groups]))]
    for w, keep in groups:
        assert w[keep].min() >= w[~keep].max()


def test_magnitude_ties_are_broken_by_position() -> None:
    model = nn.Sequential(nn.Linear(5, 2, bias=False))
    with torch.no_grad():
        prunable(model)["0.weight"].fill_(1.0)
    masks = magnitude_masks(model, 0.3, scope="layer")
    assert masks["0.weight"].flatten().tolist() == [False] * 3 + [True] * 7


def test_taylor_prunes_a_large_weight_without_gradient_before_a_small_one_with_gradient() -> None:
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        prunable(model)["0.weight"].copy_(torch.tensor([[10.0, 0.1, 0.2, 0.3]]))
    x = torch.rand(64, 4)
    x[:, 0] = 0  # the first weight never sees an input: its gradient is zero
    y = torch.rand(64, 1)

    def loss_of(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(model(xb), yb)

    masks = taylor_masks(model, 0.25, scope="layer", loss_of=loss_of, x=x, y=y, batch_size=10)
    assert masks["0.weight"].tolist() == [[False, True, True, True]]
    assert magnitude_masks(model, 0.25, scope="layer")["0.weight"].tolist() == [[True, False, True, True]]


def test_taylor_leaves_mode_grads_and_batchnorm_statistics_untouched() -> None:
    model = build_network([{"dense": 6}, "batchnorm", "relu", {"dropout": 0.5}, {"dense": 2}], [3])
    model.train()
    stats = model.state_dict()["1.running_mean"].clone()

    def loss_of(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(xb), yb)

    x, y = torch.rand(20, 3), torch.randint(0, 2, (20,))
    first = taylor_masks(model, 0.5, scope="global", loss_of=loss_of, x=x, y=y, batch_size=8)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model.state_dict()["1.running_mean"], stats)
    again = taylor_masks(model, 0.5, scope="global", loss_of=loss_of, x=x, y=y, batch_size=8)
    assert all(torch.equal(first[k], again[k]) for k in first)  # eval mode: dropout does not vary the result


def test_random_masks_depend_only_on_the_seed() -> None:
    a = random_masks(small_cnn(0), 0.5, scope="global", seed=7)
    b = random_masks(small_cnn(1), 0.5, scope="global", seed=7)
    c = random_masks(small_cnn(0), 0.5, scope="global", seed=8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_apply_masks_zeroes_exactly_the_pruned_weights_and_count_sees_them() -> None:
    model = small_cnn()
    total, nonzero = count(model)
    assert total == nonzero == sum(p.numel() for p in model.parameters())
    masks = magnitude_masks(model, 0.5, scope="layer")
    with torch.no_grad():
        prunable(model)["0.weight"][0, 0, 0, 0] = float("nan")
    apply_masks(model, masks)
    assert all(torch.equal(m, masks[k]) for k, m in masks_of(model).items())
    assert count(model) == (total, total - pruned_count(masks))


@pytest.mark.parametrize(
    "make_optimizer",
    [
        partial(torch.optim.Adam, lr=0.05, weight_decay=0.1),
        partial(torch.optim.AdamW, lr=0.05, weight_decay=0.1),
        partial(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
    ],
)
def test_hold_masks_keeps_pruned_weights_at_zero_while_training(
    make_optimizer: Callable[..., torch.optim.Optimizer],
) -> None:
    torch.manual_seed(0)
    model = build_network([{"dense": 16, "activation": "relu"}, {"dense": 4}], [8])
    masks = magnitude_masks(model, 0.7, scope="global")
    before = {k: w.detach().clone() for k, w in prunable(model).items()}
    release = hold_masks(model, masks)  # zeroes the pruned weights itself
    optimizer = make_optimizer(model.parameters())
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    for _ in range(20):
        F.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        optimizer.step()
        optimizer.zero_grad()
    for key, w in prunable(model).items():
        assert (w[~masks[key]] == 0).all()
        assert not torch.equal(w[masks[key]], before[key][masks[key]])  # the survivors did train
    release()
    F.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
    optimizer.step()
    assert any((w[~masks[k]] != 0).any() for k, w in prunable(model).items())


def test_bad_sparsity_scope_and_masks_are_refused() -> None:
    model = small_cnn()
    for bad in (-0.1, 1.0, float("nan"), True):
        with pytest.raises(ValueError, match="sparsity"):
            magnitude_masks(model, bad, scope="layer")
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(model, 0.5, scope="row")  # type: ignore[arg-type]
    current = magnitude_masks(model, 0.8, scope="global")
    with pytest.raises(ValueError, match="already pruned"):
        magnitude_masks(model, 0.5, scope="global", current=current)
    with pytest.raises(ValueError, match="names no prunable weight"):
        apply_masks(model, {"0.bias": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        hold_masks(model, {"0.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="computed with the model"):
        taylor_masks(
            model, 0.5, scope="layer", loss_of=lambda xb, yb: xb.sum(), x=torch.rand(4, 2, 9, 9), y=torch.zeros(4)
        )


# --- structured ---------------------------------------------------------------------------------------


def shrink(model: nn.Sequential, module: int, rows: list[int]) -> None:
    """Make ``rows`` of a layer the weakest by far, so which neurons go does not depend on ranking details."""
    with torch.no_grad():
        prunable(model)[f"{module}.weight"][rows] *= 1e-3


def zeroed(model: nn.Sequential, zero_at: dict[int, tuple[int, list[int]]]) -> nn.Sequential:
    """A copy of ``model`` whose module ``m`` sees features ``(dim, indices)`` of its input set to zero."""
    reference = copy.deepcopy(model)
    for m, (dim, indices) in zero_at.items():

        def hook(_: nn.Module, args: tuple[torch.Tensor], dim: int = dim, indices: list[int] = indices) -> Any:
            return (args[0].index_fill(dim, torch.tensor(indices), 0),)

        reference[m].register_forward_pre_hook(hook)
    return reference


def assert_same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        # float64 and a tight tolerance: removing terms changes the summation order, not the sums.
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-12)


def test_structured_mlp_is_smaller_and_equals_the_original_with_those_neurons_zeroed() -> None:
    torch.manual_seed(0)
    model = build_network(MLP, [784]).double().eval()
    gone_1, gone_2 = torch.randperm(300)[:150].tolist(), torch.randperm(100)[:50].tolist()
    shrink(model, 0, gone_1)
    shrink(model, 2, gone_2)
    smaller, layers = structured(model, MLP, [784], 0.5)
    assert layers == [{"dense": 150, "activation": "relu"}, {"dense": 50, "activation": "relu"}, {"dense": 10}]
    assert MLP[0] == {"dense": 300, "activation": "relu"}  # the input list is not modified
    assert count(smaller)[0] == 784 * 150 + 150 + 150 * 50 + 50 + 50 * 10 + 10 < count(model)[0]
    assert not smaller.training
    assert next(smaller.parameters()).dtype == torch.float64
    build_network(layers, [784]).load_state_dict(smaller.state_dict())
    assert_same_outputs(smaller, zeroed(model, {2: (1, gone_1), 4: (1, gone_2)}), torch.rand(16, 784).double())


def test_structured_cnn_removes_filters_and_their_flattened_blocks() -> None:
    torch.manual_seed(0)
    model = build_network(CNN, [1, 28, 28]).double().eval()
    gone_0, gone_3, gone_6 = [0, 3, 5, 6], torch.randperm(16)[:8].tolist(), torch.randperm(32)[:16].tolist()
    shrink(model, 0, gone_0)
    shrink(model, 3, gone_3)
    shrink(model, 6, gone_6)
    smaller, layers = structured(model, CNN, [1, 28, 28], 0.5, criterion="l2")
    assert layers[0] == {"conv2d": {"filters": 4, "kernel_size": 3, "padding": "same"}, "activation": "relu"}
    assert layers[2]["conv2d"]["filters"] == 8
    assert layers[4] == {"dense": 16, "activation": "relu"}
    assert layers[5] == {"dense": 10}
    assert smaller[6].in_features == 8 * 14 * 14
    assert count(smaller)[0] < count(model)[0] / 2
    build_network(layers, [1, 28, 28]).load_state_dict(smaller.state_dict())
    reference = zeroed(model, {3: (1, gone_0), 5: (1, gone_3), 8: (1, gone_6)})  # 5: the flatten
    assert_same_outputs(smaller, reference, torch.rand(4, 1, 28, 28).double())


@pytest.mark.parametrize(
    ("layers", "input_shape", "zero_at"),
    [
        ([{"dense": 12}, "batchnorm", "sigmoid", {"dense": 3}], [5], (3, 1)),
        ([{"conv2d": 12, "kernel_size": 3}, {"batchnorm": True}, "gelu", "flatten", {"dense": 3}], [2, 6, 6], (3, 1)),
        ([{"dense": {"units": 12, "bias": False}, "activation": "tanh"}, "flatten", {"dense": 3}], [4, 5], (2, 2)),
        (
            [{"conv2d": 12, "kernel_size": 3}, {"activation": "softmax"}, {"conv2d": 2, "kernel_size": 3}],
            [1, 7, 7],
            (2, 1),
        ),
    ],
)
def test_structured_carries_removals_through_batchnorm_flatten_and_width_softmax(
    layers: list[Any], input_shape: list[int], zero_at: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    model = build_network(layers, input_shape).double()
    for key, value in model.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            value.uniform_(0.5, 2)
    model.eval()
    gone = [1, 4, 5, 6, 9, 10]
    shrink(model, 0, gone)
    smaller, new_layers = structured(model, layers, input_shape, 0.5)
    assert prunable(smaller)["0.weight"].shape[0] == 6
    build_network(new_layers, input_shape).load_state_dict(smaller.state_dict())
    at, dim = zero_at
    assert_same_outputs(smaller, zeroed(model, {at: (dim, gone)}), torch.rand(5, *input_shape).double())


def test_structured_follows_an_embedding() -> None:
    layers = [
        {"embedding": {"num_embeddings": 20, "dim": 6}},
        {"dense": 8, "activation": "relu"},
        "flatten",
        {"dense": 3},
    ]
    torch.manual_seed(0)
    model = build_network(layers, [5]).double().eval()
    shrink(model, 1, [0, 2, 4, 6])
    smaller, new_layers = structured(model, layers, [5], 0.5)
    assert new_layers[1] == {"dense": 4, "activation": "relu"}
    assert_same_outputs(smaller, zeroed(model, {3: (2, [0, 2, 4, 6])}), torch.randint(0, 20, (3, 5)))


def test_structured_ranks_by_the_chosen_norm_and_keeps_at_least_one_neuron() -> None:
    layers: list[Any] = [{"dense": {"units": 2, "bias": False}}, {"dense": 1}]
    model = build_network(layers, [4])
    with torch.no_grad():
        prunable(model)["0.weight"].copy_(
            torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
        )  # L1 4 vs 3, L2 2 vs 3
    by_l1, _ = structured(model, layers, [4], 0.5, criterion="l1")
    by_l2, _ = structured(model, layers, [4], 0.5, criterion="l2")
    assert prunable(by_l1)["0.weight"].tolist() == [[1.0, 1.0, 1.0, 1.0]]
    assert prunable(by_l2)["0.weight"].tolist() == [[3.0, 0.0, 0.0, 0.0]]
    _, almost_all = structured(model, layers, [4], 0.99)
    assert almost_all[0] == {"dense": {"units": 1, "bias": False}}


@pytest.mark.parametrize(
    ("layers", "input_shape", "message"),
    [
        ([{"dense": 12, "activation": "relu"}, {"reshape": [3, 4]}, "flatten", {"dense": 2}], [5], r"layers\[1\]"),
        ([{"dense": 8}, "layernorm", {"dense": 2}], [5], r"layers\[1\].*LayerNorm"),
        ([{"dense": 8, "activation": "softmax"}, {"dense": 2}], [5], r"layers\[0\].*Softmax"),
        ([{"conv2d": 4, "kernel_size": 3}, {"dense": 2}], [1, 6, 6], r"layers\[1\].*flatten"),
        ([{"dense": 3}], [5], "nothing to prune"),
    ],
)
def test_structured_refuses_what_it_cannot_remove_exactly(
    layers: list[Any], input_shape: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        structured(build_network(layers, input_shape), layers, input_shape, 0.5)


def test_structured_refuses_a_bad_amount_or_a_model_of_other_layers() -> None:
    model = build_network(MLP, [784])
    for bad in (-0.1, 1.0, True):
        with pytest.raises(ValueError, match="amount"):
            structured(model, MLP, [784], bad)
    with pytest.raises(ValueError, match="does not match"):
        structured(model, [{"dense": 200, "activation": "relu"}, *MLP[1:]], [784], 0.5)
