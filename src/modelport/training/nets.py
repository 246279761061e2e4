"""Build a ``torch.nn.Sequential`` from the layer list of a training spec.

The layer list *is* the model's code: a version of format ``torch`` stores only safetensors weights
and this list, and serving rebuilds the network here. So the build is deterministic (module ``i``
of the Sequential is always the i-th module emitted, and ``state_dict`` keys are ``"0.weight"``,
``"0.bias"``, ...), sizes come from ``input_shape`` rather than lazy modules, and nothing in a spec
can name Python code.

Layers, as dicts with one kind key (options nested or as siblings) or bare strings::

    {"dense": 64, "activation": "relu"}            {"dense": {"units": 64, "bias": false}}
    {"conv2d": {"filters": 8, "kernel_size": 3, "padding": "same"}, "activation": "relu"}
    {"maxpool": 2}  {"avgpool": {"kernel_size": 2, "stride": 2}}  "flatten"  {"dropout": 0.1}
    "batchnorm"  "layernorm"  {"activation": "softmax"}  "relu"  {"reshape": [1, 28, 28]}
    {"embedding": {"num_embeddings": 1000, "dim": 32}}   (first layer only; inputs are int64 ids)
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

Shape = tuple[int, ...]
"""Per-example shape, without the batch dimension."""
Built = tuple[list[nn.Module], Shape]

MAX_LAYERS = 256
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softmax": lambda: nn.Softmax(dim=-1),
    "log_softmax": lambda: nn.LogSoftmax(dim=-1),
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}
_NO_ACTIVATION = frozenset({"linear", "identity", "none"})
_PRIMARY = {
    "dense": "units",
    "conv2d": "filters",
    "maxpool": "kernel_size",
    "avgpool": "kernel_size",
    "dropout": "p",
    "reshape": "shape",
    "embedding": "num_embeddings",
}


class LayerSpecError(ValueError):
    """A layer list or input shape that cannot be built; the message names the layer."""


class Reshape(nn.Module):
    """Reshape each example to ``shape``: (B, *) -> (B, *shape)."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


def build_python_module(ref: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Instantiate ``package.module:ClassName(**kwargs)`` from an installed package.

    This runs code named by the spec: the caller must have checked that the spec's author may do
    so (``TrainSpec.uses_python_module``). Only an ``nn.Module`` subclass is accepted.
    """
    module_name, _, class_name = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise LayerSpecError(f"model.python: module {module_name[:100]!r} is not installed") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise LayerSpecError(f"model.python: {ref[:200]!r} is not an nn.Module class")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise LayerSpecError(f"model.python: {class_name}(**kwargs) failed: {str(exc)[:200]}") from None


def first_layer_kind(layers: Sequence[Any]) -> str:
    """The kind of the first layer ('dense', 'conv2d', 'activation', ...); raises LayerSpecError."""
    if not layers:
        raise LayerSpecError("layers must be a non-empty list")
    return _kind(layers[0], "layers[0]")[0]


def build_network(layers: Sequence[Any], input_shape: Sequence[int]) -> nn.Sequential:
    """The network for ``layers`` on examples of ``input_shape``; raises LayerSpecError."""
    modules, _ = _build_all(layers, input_shape)
    return nn.Sequential(*modules)


def output_shape(layers: Sequence[Any], input_shape: Sequence[int]) -> Shape:
    """Per-example output shape, computed on the meta device (no weights allocated)."""
    with torch.device("meta"):
        _, shape = _build_all(layers, input_shape)
    return shape


def input_dtype(layers: Sequence[Any]) -> str:
    """``int64`` when the network starts with an embedding (token ids), else ``float32``."""
    if layers and _kind(layers[0], "layers[0]")[0] == "embedding":
        return "int64"
    return "float32"


def _build_all(layers: Sequence[Any], input_shape: Sequence[int]) -> Built:
    if not isinstance(layers, list | tuple) or not layers:
        raise LayerSpecError("layers must be a non-empty list")
    if len(layers) > MAX_LAYERS:
        raise LayerSpecError(f"at most {MAX_LAYERS} layers")
    if not isinstance(input_shape, list | tuple) or len(input_shape) > 7:
        raise LayerSpecError("input_shape must be a list of at most 7 sizes (no batch dimension)")
    shape: Shape = tuple(_positive(d, "input_shape") for d in input_shape)
    modules: list[nn.Module] = []
    for index, layer in enumerate(layers):
        where = f"layers[{index}]"
        kind, opts = _kind(layer, where)
        if kind == "embedding" and index != 0:
            raise LayerSpecError(f"{where}: embedding must be the first layer (it takes token ids)")
        built, shape = _BUILDERS[kind](opts, shape, where)
        modules.extend(built)
    return modules, shape


def _kind(layer: Any, where: str) -> tuple[str, dict[str, Any]]:
    """Split a layer into its kind and its options (nested value plus sibling keys)."""
    if isinstance(layer, str):
        if layer in ACTIVATIONS or layer in _NO_ACTIVATION:
            return "activation", {"activation": layer}
        if layer in ("flatten", "batchnorm", "layernorm"):
            return layer, {}
        raise LayerSpecError(f"{where}: unknown layer {layer[:40]!r}")
    if not isinstance(layer, Mapping):
        raise LayerSpecError(f"{where}: a layer is an object like {{'dense': 64}} or a name like 'flatten'")
    kinds = [k for k in layer if k in _BUILDERS and k != "activation"]
    if not kinds:
        if "activation" in layer:
            return "activation", dict(layer)
        raise LayerSpecError(f"{where}: no layer kind among {sorted(_BUILDERS)}")
    if len(kinds) > 1:
        raise LayerSpecError(f"{where}: one layer kind per entry, got {kinds}")
    kind = kinds[0]
    value = layer[kind]
    opts = dict(value) if isinstance(value, Mapping) else {}
    if not isinstance(value, Mapping) and value is not True and value is not None:
        opts[_PRIMARY.get(kind, kind)] = value
    opts.update({k: v for k, v in layer.items() if k != kind})
    return kind, opts


def _check_keys(opts: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise LayerSpecError(f"{where}: unknown option(s) {unknown}; allowed: {sorted(allowed)}")


def _positive(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LayerSpecError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _number(opts: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = opts.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise LayerSpecError(f"{where}.{key}: expected a non-negative number")
    return float(value)


def _activation(opts: Mapping[str, Any], where: str) -> list[nn.Module]:
    name = opts.get("activation")
    if name is None or name in _NO_ACTIVATION:
        return []
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise LayerSpecError(f"{where}: unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return [ACTIVATIONS[name]()]


def _dense(opts: dict[str, Any], shape: Shape, where: str) -> Built:
    _check_keys(opts, {"units", "activation", "bias"}, where)
    if not shape:
        raise LayerSpecError(f"{where}: dense needs at least one input dimension")
    units = _positive(opts.get("units"), f"{where}.units")
    bias = opts.get("bias", True)
    if not isinstance(bias, bool):
        raise LayerSpecError(f"{where}.bias: expected true or false")
    # (B, *, in) -> (B, *, units)
    return [nn.Linear(shape[-1], units, bias=bias), *_activation(opts, where)], (*shape[:-1], units)


def _conv2d(opts: dict[str, Any], shape: Shape, where: str) -> Built:
    _check_keys(opts, {"filters", "kernel_size", "stride", "padding", "activation", "bias"}, where)
    if len(shape) != 3:
        raise LayerSpecError(f"{where}: conv2d needs (channels, height, width) inputs, got {list(shape)}")
    filters = _positive(opts.get("filters"), f"{where}.filters")
    kernel = _positive(opts.get("kernel_size", 3), f"{where}.kernel_size")
    stride = _positive(opts.get("stride", 1), f"{where}.stride")
    padding = opts.get("padding", 0)
    if padding == "same":
        if stride != 1:
            raise LayerSpecError(f"{where}: padding 'same' needs stride 1")
        pad = (kernel - 1) // 2
        if kernel % 2 == 0:
            raise LayerSpecError(f"{where}: padding 'same' needs an odd kernel_size")
    elif padding == "valid":
        pad = 0
    elif isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        pad = padding
    else:
        raise LayerSpecError(f"{where}.padding: expected a non-negative integer, 'same' or 'valid'")
    channels, height, width = shape
    out_h, out_w = (height + 2 * pad - kernel) // stride + 1, (width + 2 * pad - kernel) // stride + 1
    if out_h < 1 or out_w < 1:
        raise LayerSpecError(f"{where}: kernel {kernel} does not fit a {height}x{width} input")
    conv = nn.Conv2d(channels, filters, kernel, stride=stride, padding=pad, bias=opts.get("bias", True) is not False)
    # (B, C, H, W) -> (B, filters, out_h, out_w)
    return [conv, *_activation(opts, where)], (filters, out_h, out_w)


def _pool(kind: str) -> Callable[[dict[str, Any], Shape, str], Built]:
    def build(opts: dict[str, Any], shape: Shape, where: str) -> Built:
        _check_keys(opts, {"kernel_size", "stride"}, where)
        kernel = _positive(opts.get("kernel_size", 2), f"{where}.kernel_size")
        stride = _positive(opts.get("stride", kernel), f"{where}.stride")
        if len(shape) not in (2, 3):
            raise LayerSpecError(f"{where}: {kind} needs (channels, length) or (channels, height, width)")
        spatial = [(d - kernel) // stride + 1 for d in shape[1:]]
        if min(spatial) < 1:
            raise LayerSpecError(f"{where}: kernel {kernel} is larger than the input {list(shape[1:])}")
        two_d = len(shape) == 3
        if kind == "maxpool":
            module: nn.Module = (nn.MaxPool2d if two_d else nn.MaxPool1d)(kernel, stride=stride)
        else:
            module = (nn.AvgPool2d if two_d else nn.AvgPool1d)(kernel, stride=stride)
        return [module], (shape[0], *spatial)

    return build


def _flatten(opts: dict[str, Any], shape: Shape, where: str) -> Built:
    _check_keys(opts, set(), where)
    return [nn.Flatten()], (math.prod(shape),)  # (B, *shape) -> (B, prod(shape))


def _reshape(opts: dict[str, Any], shape: Shape, where: str) -> Built:
    _check_keys(opts, {"shape"}, where)
    target = opts.get("shape")
    if not isinstance(target, list | tuple) or not target:
        raise LayerSpecError(f"{where}.shape: expected a list of sizes")
    new = tuple(_positive(d, f"{where}.shape") for d in target)
    if math.prod(new) != math.prod(shape):
        raise LayerSpecError(f"{where}: cannot reshape {list(shape)} to {list(new)}")
    return [Reshape(new)], new


def _dropout(opts: dict[str, Any], shape: Shape, where: str) -> Built:
    _check_keys(opts, {"p"}, where)
    p = _number(opts, "p", 0.5, where)
    if p >= 1:
        raise LayerSpecError(f"{where}.p: expected a probability in [0, 1)")
    return [nn.Dropout(p)], shape


def _batchnorm(opts: dict[str, Any], shape: Shape, where: str) -> Built:
    _check_keys(opts, {"eps", "momentum"}, where)
    if len(shape) not in (1, 2, 3):
        raise LayerSpecError(f"{where}: batchnorm needs 1-3 input dimensions, got {list(shape)}")
    norm = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d  # normalizes over channels: shape[0]
    eps, momentum = _number(opts, "eps", 1e-5, where), _number(opts, "momentum", 0.1, where)
    return [norm(shape[0], eps=eps, momentum=momentum)], shape


def _layernorm(opts: dict[str, Any], shape: Shape, where: str) -> Built:
    _check_keys(opts, {"eps"}, where)
    if not shape:
        raise LayerSpecError(f"{where}: layernorm needs at least one input dimension")
    return [nn.LayerNorm(shape[-1], eps=_number(opts, "eps", 1e-5, where))], shape  # over the last dim


def _embedding(opts: dict[str, Any], shape: Shape, where: str) -> Built:
    _check_keys(opts, {"num_embeddings", "dim"}, where)
    count = _positive(opts.get("num_embeddings"), f"{where}.num_embeddings")
    dim = _positive(opts.get("dim"), f"{where}.dim")
    return [nn.Embedding(count, dim)], (*shape, dim)  # (B, *ids) -> (B, *ids, dim)


def _activation_layer(opts: dict[str, Any], shape: Shape, where: str) -> Built:
    _check_keys(opts, {"activation"}, where)
    return _activation(opts, where), shape


_BUILDERS: dict[str, Callable[[dict[str, Any], Shape, str], Built]] = {
    "dense": _dense,
    "conv2d": _conv2d,
    "maxpool": _pool("maxpool"),
    "avgpool": _pool("avgpool"),
    "flatten": _flatten,
    "reshape": _reshape,
    "dropout": _dropout,
    "batchnorm": _batchnorm,
    "layernorm": _layernorm,
    "embedding": _embedding,
    "activation": _activation_layer,
}
