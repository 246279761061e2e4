"""Pruning of networks built by ``training.nets.build_network``: unstructured masks and structured removal.

Unstructured pruning zeroes single weights of ``nn.Linear`` and ``nn.Conv2d`` modules. A *mask* is a bool
tensor per weight (True = kept), keyed by the weight's ``state_dict`` key, so masks travel with a version
the same way its weights do. The three criteria (``random_masks``, ``magnitude_masks``, ``taylor_masks``)
share one selection rule, so they differ only in their scores:

- ``sparsity`` is the fraction of weights that are zero afterwards, per layer or over all prunable
  weights (``scope="global"``), and the count is exact: ``round(sparsity * n)`` (Python's round, half to
  even), ties broken by position.
- ``current`` masks from an earlier step of an iterative schedule (50% -> 80% -> 90%) stay pruned; the
  new zeros are chosen among the survivors, so fine-tuning in between is never undone.

During fine-tuning ``hold_masks`` keeps the zeros at zero. Structured pruning (``structured``) instead
removes whole neurons and filters and returns a smaller network, which is what makes it faster.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import nn

from modelport.training.nets import build_network, output_shape

Masks = dict[str, torch.Tensor]
"""State-dict key of a weight -> bool tensor of the same shape (True = kept)."""
Scope = Literal["layer", "global"]
"""Where the sparsity holds: in every prunable layer, or over all prunable weights together."""
Criterion = Literal["l1", "l2"]
_Segment = tuple[int, list[tuple[int, nn.Module]], list[tuple[int, ...]]]
"""One layer of a list: its index, its (module index, module) pairs, each module's per-example input shape."""

_SCOPES = ("layer", "global")
# Modules that act on each feature on its own, so removed features can pass through them unchanged.
_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Dropout)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_COUNT_KEY = {"dense": "units", "conv2d": "filters"}


def prunable(model: nn.Module) -> dict[str, torch.Tensor]:
    """The live weight tensors of ``nn.Linear`` and ``nn.Conv2d`` modules, by state-dict key.

    Biases and normalization parameters are never pruned: they are a tiny share of the parameters, and
    zeroing them shifts every output of a neuron instead of cutting one connection.
    """
    return {
        f"{name}.weight" if name else "weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv2d)
    }


def random_masks(model: nn.Module, sparsity: float, *, scope: Scope, seed: int, current: Masks | None = None) -> Masks:
    """Masks that prune a uniformly random ``sparsity`` of the weights; the same seed gives the same masks.

    The random baseline: a criterion that does no better than this one is not worth its cost.
    """
    generator = torch.Generator().manual_seed(seed)
    # Drawn on the CPU in a fixed order, so a seed means the same masks on every device.
    scores = {k: torch.rand(w.shape, generator=generator).to(w.device) for k, w in prunable(model).items()}
    return _select(scores, sparsity, scope, current)


def magnitude_masks(model: nn.Module, sparsity: float, *, scope: Scope, current: Masks | None = None) -> Masks:
    """Masks that prune the weights of smallest magnitude ``|w|`` (L1), the usual strong baseline."""
    scores = {k: w.detach().abs() for k, w in prunable(model).items()}
    return _select(scores, sparsity, scope, current)


def taylor_masks(
    model: nn.Module,
    sparsity: float,
    *,
    scope: Scope,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 256,
    current: Masks | None = None,
) -> Masks:
    """Masks that prune the weights of least first-order Taylor importance, summed over batches of (x, y).

    ``|w * dL/dw|`` estimates how much the loss changes when ``w`` is set to zero, so unlike magnitude it
    prunes a large weight that the data never exercises. ``loss_of(xb, yb)`` must run the model and return
    a scalar loss. The model runs in eval mode (deterministic dropout, batch-norm statistics untouched) and
    its ``.grad`` fields are left as they were.
    """
    _check_sparsity(sparsity)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"x and y must be non-empty and of the same length, got {len(x)} and {len(y)}")
    weights = prunable(model)
    importance = {k: torch.zeros_like(w, dtype=torch.float32) for k, w in weights.items()}
    was_training = model.training
    needed_grad = {k: w.requires_grad for k, w in weights.items()}
    model.eval()
    try:
        for w in weights.values():
            w.requires_grad_(True)
        with torch.enable_grad():
            for start in range(0, len(x), batch_size):
                grads = _weight_grads(loss_of, x[start : start + batch_size], y[start : start + batch_size], weights)
                for (key, w), grad in zip(weights.items(), grads, strict=True):
                    if grad is not None:  # None: the weight does not reach the loss, importance stays 0
                        importance[key] += (w.detach() * grad).abs().float()
    finally:
        model.train(was_training)
        for key, w in weights.items():
            w.requires_grad_(needed_grad[key])
    return _select(importance, sparsity, scope, current)


def _weight_grads(
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    xb: torch.Tensor,
    yb: torch.Tensor,
    weights: dict[str, torch.Tensor],
) -> tuple[torch.Tensor | None, ...]:
    loss = loss_of(xb, yb)
    if loss.dim() != 0 or not loss.requires_grad:
        raise ValueError("loss_of must return a scalar loss computed with the model")
    if not torch.isfinite(loss):
        raise ValueError("loss_of returned a non-finite loss; Taylor importance would be meaningless")
    # autograd.grad rather than backward(): the caller's .grad fields stay untouched.
    return torch.autograd.grad(loss, list(weights.values()), allow_unused=True)


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned weights in place; weights without a mask are left alone."""
    weights = prunable(model)
    _check_masks(weights, masks)
    with torch.no_grad():
        for key, keep in masks.items():
            w = weights[key]
            # masked_fill rather than multiply: a pruned inf or NaN weight still becomes exactly 0.
            w.masked_fill_(~keep.to(device=w.device, dtype=torch.bool), 0)


def hold_masks(model: nn.Module, masks: Masks) -> Callable[[], None]:
    """Zero the pruned weights now and keep them zero while training; returns a function removing the hooks.

    A hook sets the gradient of each pruned weight to zero before any optimizer sees it. With the weight
    and its gradient at zero, SGD (with momentum, Nesterov, weight decay) and Adam/AdamW (with weight
    decay) all leave it at exactly zero. The optimizer must start its state after pruning: momentum
    gathered before would still move a pruned weight.
    """
    weights = prunable(model)
    _check_masks(weights, masks)
    apply_masks(model, masks)
    handles = []
    for key, keep in masks.items():
        hook = partial(_zero_pruned_grad, keep.to(device=weights[key].device, dtype=torch.bool))
        handles.append(weights[key].register_hook(hook))  # type: ignore[no-untyped-call]  # torch leaves it unannotated

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove


def _zero_pruned_grad(keep: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return grad.masked_fill(~keep, 0)


def masks_of(model: nn.Module) -> Masks:
    """Masks read from the current zeros (``w != 0``), e.g. of a pruned version loaded from the registry."""
    return {key: w.detach() != 0 for key, w in prunable(model).items()}


def count(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters) over all parameters, biases and norms included, for size reports."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int(torch.count_nonzero(p.detach())) for p in params)


def _check_sparsity(sparsity: float) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")


def _check_masks(weights: Mapping[str, torch.Tensor], masks: Masks) -> None:
    for key, keep in masks.items():
        if key not in weights:
            raise ValueError(f"mask {key!r} names no prunable weight; prunable: {sorted(weights)[:20]}")
        if keep.shape != weights[key].shape:
            raise ValueError(f"mask {key!r} has shape {list(keep.shape)}, the weight {list(weights[key].shape)}")


def _select(scores: dict[str, torch.Tensor], sparsity: float, scope: Scope, current: Masks | None) -> Masks:
    """Keep all but the ``round(sparsity * n)`` lowest scores; weights pruned in ``current`` go first."""
    _check_sparsity(sparsity)
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {list(_SCOPES)}, got {scope!r}")
    current = current or {}
    _check_masks(scores, current)
    keep_now = {k: torch.ones_like(s, dtype=torch.bool) for k, s in scores.items()}
    keep_now.update({k: m.to(scores[k].device, torch.bool) for k, m in current.items()})
    if scope == "layer":
        return {k: _keep_highest(s, keep_now[k], round(sparsity * s.numel()), k) for k, s in scores.items()}
    if not scores:
        return {}
    device = next(iter(scores.values())).device
    flat_scores = torch.cat([s.flatten().to(device) for s in scores.values()])
    flat_keep = torch.cat([k.flatten().to(device) for k in keep_now.values()])
    kept = _keep_highest(flat_scores, flat_keep, round(sparsity * flat_scores.numel()), "all prunable weights")
    parts = torch.split(kept, [s.numel() for s in scores.values()])
    return {k: part.reshape(s.shape).to(s.device) for (k, s), part in zip(scores.items(), parts, strict=True)}


def _keep_highest(scores: torch.Tensor, keep: torch.Tensor, n_pruned: int, where: str) -> torch.Tensor:
    """A mask pruning exactly ``n_pruned`` entries: those already pruned, then the lowest scores."""
    already = int((~keep).sum())
    if already > n_pruned:
        raise ValueError(
            f"{where}: {already} of {scores.numel()} weights are already pruned, more than the {n_pruned} the "
            "target sparsity allows; a schedule must not lower its sparsity"
        )
    # -inf puts the already pruned first; a stable sort breaks ties by position, so the result is exact
    # and reproducible even when many scores are equal (all-zero gradients, a constant init).
    ranked = scores.detach().float().flatten().masked_fill(~keep.flatten(), -math.inf)
    order = torch.argsort(ranked, stable=True)
    kept = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    kept[order[:n_pruned]] = False
    return kept.reshape(scores.shape)


# --- structured pruning -------------------------------------------------------------------------------


@dataclass
class _Removed:
    """Features of the current activation that a pruned layer removed and no consumer has dropped yet."""

    axis: int  # per-example axis (no batch dimension) along which features were removed
    kept: torch.Tensor  # sorted int64 indices kept along ``axis``
    size: int  # the original length of ``axis``


@dataclass
class _Walk:
    """What ``structured`` builds while it walks the layers in order."""

    amount: float
    criterion: Criterion
    last_weighted: int  # module index of the output layer, which keeps all its neurons
    state: dict[str, torch.Tensor]
    layers: list[Any]
    removed: _Removed | None = None


def structured(
    model: nn.Sequential, layers: list[Any], input_shape: list[int], amount: float, *, criterion: Criterion = "l1"
) -> tuple[nn.Sequential, list[Any]]:
    """A new, smaller network without the ``amount`` weakest neurons of each hidden dense and conv2d layer.

    Neurons (dense rows) and filters (conv2d output channels) are ranked by the ``criterion`` norm of their
    incoming weights, counted after the previous layer's removals (the "greedy" variant of Li et al. 2017,
    Pruning Filters for Efficient ConvNets): a weight from a removed input no longer contributes. Each
    hidden layer loses ``round(amount * n)`` of its ``n`` outputs, keeping at least one; the last dense or
    conv2d layer (the outputs) keeps all. The layers that consume removed features lose the matching
    inputs: weight columns, conv in-channels, the ``H*W`` block of each removed channel after a flatten,
    and batch-norm channels. The smaller network computes exactly what the original computes when the
    removed neurons' outputs are zeroed where they are consumed. Returns the network (same device, dtype
    and train/eval mode) and its layer list, in the input's dict shapes with new units/filters.

    Raises ``ValueError`` naming the layer for a list it cannot carry removals through (a reshape, a
    layer norm or softmax over the removed axis), or when there is no hidden layer to prune.
    """
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 <= amount < 1:
        raise ValueError(f"amount must be a fraction in [0, 1), got {amount!r}")
    if criterion not in ("l1", "l2"):
        raise ValueError(f"criterion must be 'l1' or 'l2', got {criterion!r}")
    _check_matches(model, layers, input_shape)  # also validates the list as a whole
    segments = _segments(layers, input_shape)
    weighted = [m for _, modules, _ in segments for m, module in modules if isinstance(module, nn.Linear | nn.Conv2d)]
    if len(weighted) < 2:
        raise ValueError("nothing to prune: the network has no dense or conv2d layer before its output layer")
    walk = _Walk(amount, criterion, weighted[-1], dict(model.state_dict()), copy.deepcopy(layers))
    for index, modules, shapes in segments:
        for (m, module), shape in zip(modules, shapes, strict=True):
            if isinstance(module, nn.Linear | nn.Conv2d):
                _weighted(walk, m, module, shape, index)
            elif walk.removed is not None:
                _carry(walk, walk.removed, m, module, shape, f"layers[{index}] {layers[index]!r:.80}")
    reference = next(model.parameters())
    smaller = build_network(walk.layers, input_shape).to(device=reference.device, dtype=reference.dtype)
    smaller.load_state_dict(walk.state)
    smaller.train(model.training)
    return smaller, walk.layers


def _segments(layers: list[Any], input_shape: list[int]) -> list[_Segment]:
    """Per layer: its index, its (module index, module) pairs, and the per-example input shape of each module.

    Built layer by layer on the meta device with the public builders, so the walk sees exactly the
    modules ``build_network`` emits without allocating weights.
    """
    segments: list[_Segment] = []
    shape = tuple(input_shape)
    offset = 0
    with torch.device("meta"):
        for index, layer in enumerate(layers):
            modules = list(build_network([layer], list(shape)))
            out = output_shape([layer], list(shape))
            # The kind's module sees the layer's input; a following activation module sees its output.
            shapes = [shape if j == 0 else out for j in range(len(modules))]
            segments.append((index, list(enumerate(modules, start=offset)), shapes))
            offset += len(modules)
            shape = out
    return segments


def _check_matches(model: nn.Module, layers: list[Any], input_shape: list[int]) -> None:
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_network(layers, input_shape).state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if expected != actual:
        differ = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
        raise ValueError(f"the model does not match the layer list (first differing keys: {differ[:5]})")


def _weighted(walk: _Walk, m: int, module: nn.Module, shape: tuple[int, ...], index: int) -> None:
    """Drop the inputs a previous layer removed, then (hidden layers only) this layer's weakest outputs."""
    # A dense reads its last axis and writes the same axis; a conv2d reads and writes channels (axis 0).
    axis = len(shape) - 1 if isinstance(module, nn.Linear) else 0
    kind = "dense" if isinstance(module, nn.Linear) else "conv2d"
    weight = walk.state[f"{m}.weight"]  # (out, in) or (out, in, kh, kw)
    if walk.removed is not None:
        if walk.removed.axis != axis:
            raise ValueError(
                f"layers[{index}] ({kind}) reads axis {axis} but the features removed before it lie along "
                f"axis {walk.removed.axis}; add a flatten before it"
            )
        weight = weight.index_select(1, walk.removed.kept.to(weight.device))
        walk.removed = None
    if m != walk.last_weighted:
        norms = weight.flatten(1).norm(p=1 if walk.criterion == "l1" else 2, dim=1)
        n = weight.shape[0]
        n_kept = max(1, n - round(walk.amount * n))
        # Stable ascending order: among equal norms the lower index is removed first.
        kept = torch.argsort(norms, stable=True)[n - n_kept :].sort().values
        weight = weight.index_select(0, kept)
        if f"{m}.bias" in walk.state:
            walk.state[f"{m}.bias"] = walk.state[f"{m}.bias"].index_select(0, kept)
        walk.removed = _Removed(axis=axis, kept=kept.cpu(), size=n)
        walk.layers[index] = _resized(walk.layers[index], kind, n_kept)
    walk.state[f"{m}.weight"] = weight


def _carry(walk: _Walk, removed: _Removed, m: int, module: nn.Module, shape: tuple[int, ...], where: str) -> None:
    """Carry removed features through a non-weighted module, or refuse when it mixes them with others."""
    if isinstance(module, nn.Flatten):
        # Flat index of every kept feature, in the order the smaller network's flatten produces them.
        flat = torch.arange(math.prod(shape)).reshape(shape).index_select(removed.axis, removed.kept)
        walk.removed = _Removed(axis=0, kept=flat.flatten(), size=math.prod(shape))
        return
    mixed = _mixed_axes(module, shape)
    name = type(module).__name__
    if mixed is None:
        raise ValueError(f"{where}: cannot carry removed neurons through a {name} to the layer that consumes them")
    if removed.axis in mixed:
        raise ValueError(
            f"{where}: a {name} combines the removed neurons with the kept ones (axis {removed.axis}), so "
            "removing them would change its output; cannot prune the layer before it"
        )
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):  # per-channel parameters and running statistics
        for key, value in walk.state.items():
            if key.startswith(f"{m}.") and value.dim() == 1 and len(value) == removed.size:
                walk.state[key] = value.index_select(0, removed.kept.to(value.device))


def _mixed_axes(module: nn.Module, shape: tuple[int, ...]) -> set[int] | None:
    """The per-example axes along which ``module`` combines features; None for a module it cannot follow."""
    if isinstance(module, _ELEMENTWISE):
        return set()
    if isinstance(module, nn.Softmax | nn.LogSoftmax):
        return set(range(len(shape))) if module.dim is None else {module.dim % (len(shape) + 1) - 1}
    if isinstance(module, nn.LayerNorm):
        return set(range(len(shape) - len(module.normalized_shape), len(shape)))
    if isinstance(module, _POOLS):
        return set(range(1, len(shape)))
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        return set(range(1, len(shape)))  # training statistics run over every axis but the channels
    return None  # reshape and anything unknown


def _resized(layer: Any, kind: str, n: int) -> Any:
    """``layer`` in the same dict shape, with its units/filters set to ``n``."""
    key = _COUNT_KEY[kind]
    new = dict(layer)
    if key in new:  # the option given as a sibling of the kind key wins when the network is built
        new[key] = n
    elif isinstance(new[kind], Mapping):
        new[kind] = {**new[kind], key: n}
    else:
        new[kind] = n
    return new
