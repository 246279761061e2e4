"""training/nets.py: layer lists -> nn.Sequential, deterministic keys, shapes inferred, errors named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from modelport.training.nets import LayerSpecError, build_network, input_dtype, output_shape

MLP = [{"dense": 64, "activation": "relu"}, {"dropout": 0.1}, {"dense": 10, "activation": "softmax"}]


def test_state_dict_keys_are_deterministic() -> None:
    a, b = build_network(MLP, [784]), build_network(MLP, [784])
    assert list(a.state_dict()) == list(b.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert a.state_dict()["0.weight"].shape == (64, 784)


def test_safetensors_roundtrip_is_strict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_network(MLP, [784]).eval()
    safetensors.torch.save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    again = build_network(MLP, [784]).eval()
    again.load_state_dict(safetensors.torch.load_file(str(tmp_path / "w.safetensors")), strict=True)
    x = torch.rand(3, 784)
    torch.testing.assert_close(again(x), net(x))
    torch.testing.assert_close(net(x).sum(dim=1), torch.ones(3))  # the final softmax is in the net


@pytest.mark.parametrize(
    ("layers", "input_shape", "expected"),
    [
        (MLP, [784], (10,)),
        (
            [
                {"conv2d": {"filters": 8, "kernel_size": 5, "stride": 2, "padding": 1}, "activation": "gelu"},
                {"batchnorm": True},
                {"avgpool": {"kernel_size": 2, "stride": 1}},
                {"maxpool": 2},
                "flatten",
                {"dense": {"units": 3, "bias": False}},
            ],
            [3, 32, 32],
            (3,),
        ),
        ([{"reshape": [1, 28, 28]}, {"conv2d": 4, "kernel_size": 3, "padding": "valid"}, "flatten"], [784], (2704,)),
        ([{"embedding": {"num_embeddings": 100, "dim": 16}}, "layernorm", {"dense": 4}, "tanh"], [7], (7, 4)),
        ([{"dense": 6}, {"batchnorm": {"eps": 1e-3, "momentum": 0.2}}, "sigmoid", {"activation": "linear"}], [5], (6,)),
        ([{"reshape": [2, 6]}, "batchnorm", {"maxpool": 2}, "elu", "silu", "leaky_relu", "log_softmax"], [12], (2, 3)),
    ],
)
def test_shapes_are_inferred_and_match_a_real_forward(
    layers: list[Any], input_shape: list[int], expected: tuple[int, ...]
) -> None:
    assert output_shape(layers, input_shape) == expected
    net = build_network(layers, input_shape).eval()
    dtype = torch.int64 if input_dtype(layers) == "int64" else torch.float32
    with torch.no_grad():
        out = net(torch.zeros((2, *input_shape), dtype=dtype))
    assert tuple(out.shape) == (2, *expected)


def test_input_dtype() -> None:
    assert input_dtype(MLP) == "float32"
    assert input_dtype([{"embedding": {"num_embeddings": 10, "dim": 2}}]) == "int64"


def test_output_shape_allocates_nothing() -> None:
    assert output_shape([{"dense": 1_000_000}, {"dense": 1_000_000}], [1_000_000]) == (1_000_000,)


@pytest.mark.parametrize(
    ("layers", "input_shape", "match"),
    [
        ([], [4], "non-empty"),
        ([{"dense": 0}], [4], "positive integer"),
        ([{"dense": True}], [4], "positive integer"),
        ([{"dense": "64"}], [4], "positive integer"),
        ([{"dense": 4, "units": 5, "bias": "yes"}], [4], "bias"),
        ([{"dense": 4, "kernel": 3}], [4], "unknown option"),
        ([{"dense": 4, "conv2d": 3}], [4], "one layer kind"),
        ([{"dense": 4, "activation": "swish!"}], [4], "unknown activation"),
        ([{"python": "os:system"}], [4], "no layer kind"),
        (["eval"], [4], "unknown layer"),
        ([42], [4], "a layer is"),
        ([{"conv2d": 4}], [784], "channels, height, width"),
        ([{"conv2d": {"filters": 4, "kernel_size": 9}}], [1, 4, 4], "does not fit"),
        ([{"conv2d": {"filters": 4, "kernel_size": 2, "padding": "same"}}], [1, 4, 4], "odd"),
        ([{"conv2d": {"filters": 4, "padding": -1}}], [1, 4, 4], "padding"),
        ([{"maxpool": 8}], [1, 4, 4], "larger than"),
        ([{"dropout": 1.0}], [4], "probability"),
        ([{"dropout": float("nan")}], [4], "non-negative number"),
        ([{"reshape": [3, 3]}], [4], "cannot reshape"),
        ([{"dense": 4}, {"embedding": {"num_embeddings": 3, "dim": 2}}], [4], "first layer"),
        ([{"dense": 4}], [0], "input_shape"),
        ([{"dense": 4}], "784", "input_shape"),
        ([{"dense": 4}] * 300, [4], "at most"),
    ],
)
def test_errors_name_the_layer(layers: Any, input_shape: Any, match: str) -> None:
    with pytest.raises(LayerSpecError, match=match):
        build_network(layers, input_shape)
