"""formats/torch.py: safetensors weights + the layer list, rebuilt strictly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from modelport.errors import InvalidArtifact, InvalidManifest
from modelport.formats import torch as torch_format
from modelport.store.bundle import Manifest, ManifestInput, TensorSpec
from modelport.training.nets import build_network

ToManifest = Callable[..., Manifest]
MLP = [{"dense": 64, "activation": "relu"}, {"dropout": 0.1}, {"dense": 10, "activation": "softmax"}]
CNN = [
    {"reshape": [1, 28, 28]},
    {"conv2d": {"filters": 4, "kernel_size": 3, "padding": "same"}, "activation": "relu"},
    "batchnorm",
    {"maxpool": 2},
    "flatten",
    {"dense": 10},
]


def _given(layers: list[Any], input_shape: list[int]) -> ManifestInput:
    return ManifestInput(architecture=torch_format.architecture(layers, input_shape))


def _trained(layers: list[Any], input_shape: list[int], folder: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_network(layers, input_shape)
    for module in net.modules():  # non-trivial batchnorm statistics, so eval mode matters
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    torch_format.save(net, folder, layers=layers, input_shape=input_shape)
    return net.eval()


@pytest.mark.parametrize(("layers", "input_shape"), [(MLP, [784]), (CNN, [784])])
def test_roundtrip_predictions_match(
    tmp_path: Path, to_manifest: ToManifest, layers: list[Any], input_shape: list[int]
) -> None:
    net = _trained(layers, input_shape, tmp_path)
    given = _given(layers, input_shape)
    info = torch_format.inspect(tmp_path, "model.safetensors", given)
    assert info.signature is not None
    assert info.signature.inputs == [TensorSpec(name="input", dtype="float32", shape=[-1, 784])]
    assert info.signature.outputs == [TensorSpec(name="output", dtype="float32", shape=[-1, 10])]
    predictor = torch_format.load(tmp_path, to_manifest("torch", "model.safetensors", info, given))
    x = np.random.default_rng(0).random((6, 784), dtype=np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predictor({"input": x})["output"], expected, atol=1e-5)
    predictor.unload()


def test_final_softmax_is_part_of_the_net(tmp_path: Path, to_manifest: ToManifest) -> None:
    _trained(MLP, [784], tmp_path)
    given = _given(MLP, [784])
    info = torch_format.inspect(tmp_path, "model.safetensors", given)
    out = torch_format.load(tmp_path, to_manifest("torch", "model.safetensors", info, given))(
        {"input": np.ones((3, 784), np.float32)}
    )["output"]
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_embedding_networks_take_int64_ids(tmp_path: Path, to_manifest: ToManifest) -> None:
    layers = [{"embedding": {"num_embeddings": 50, "dim": 8}}, "flatten", {"dense": 3}]
    net = _trained(layers, [5], tmp_path)
    given = _given(layers, [5])
    info = torch_format.inspect(tmp_path, "model.safetensors", given)
    assert info.signature is not None and info.signature.inputs[0].dtype == "int64"
    ids = np.array([[1, 2, 3, 4, 49]], dtype=np.int64)
    out = torch_format.load(tmp_path, to_manifest("torch", "model.safetensors", info, given))({"input": ids})
    with torch.no_grad():
        np.testing.assert_allclose(out["output"], net(torch.from_numpy(ids)).numpy(), atol=1e-5)


@pytest.mark.parametrize(
    ("architecture", "match"),
    [
        (None, "needs"),
        ({"layers": MLP}, "input_shape"),
        ({"layers": [], "input_shape": [784]}, "non-empty"),
        ({"layers": MLP, "input_shape": [784], "python": "os:system"}, "unknown key"),
        ({"layers": [{"dense": 64, "activation": "evil"}], "input_shape": [784]}, "unknown activation"),
        ({"layers": [{"lambda": "x"}], "input_shape": [784]}, "no layer kind"),
    ],
)
def test_bad_architectures_are_invalid_manifests(tmp_path: Path, architecture: Any, match: str) -> None:
    _trained(MLP, [784], tmp_path)
    with pytest.raises(InvalidManifest, match=match):
        torch_format.inspect(tmp_path, "model.safetensors", ManifestInput(architecture=architecture))


def test_weights_for_another_layer_list_are_refused(tmp_path: Path) -> None:
    _trained(CNN, [784], tmp_path)
    with pytest.raises(InvalidArtifact, match="missing") as info:
        torch_format.inspect(tmp_path, "model.safetensors", _given(MLP, [784]))
    message = info.value.message  # 2 missing keys, 7 unexpected ones of which 5 are shown
    assert "['0.bias', '0.weight']" in message and message.count("'6.") == 0 and message.endswith("] ...")
    _trained(MLP, [784], tmp_path)
    with pytest.raises(InvalidArtifact, match="shapes"):
        torch_format.inspect(tmp_path, "model.safetensors", _given(MLP, [100]))


def test_huge_layer_lists_are_checked_before_allocating(tmp_path: Path) -> None:
    _trained(MLP, [784], tmp_path)
    huge = [{"dense": 1_000_000}, {"dense": 1_000_000}]  # 4 TB of float32 if it were built for real
    with pytest.raises(InvalidArtifact, match="do not match"):
        torch_format.inspect(tmp_path, "model.safetensors", _given(huge, [1_000_000]))


def test_save_refuses_a_model_that_does_not_fit_the_layers(tmp_path: Path) -> None:
    other = torch.nn.Sequential(torch.nn.Linear(784, 10))
    with pytest.raises(InvalidArtifact):
        torch_format.save(other, tmp_path, layers=MLP, input_shape=[784])
    assert not (tmp_path / "model.safetensors").exists()


def test_garbage_weights_are_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(InvalidArtifact) as info:
        torch_format.inspect(tmp_path, "model.safetensors", _given(MLP, [784]))
    assert str(tmp_path) not in str(info.value)


def test_safetensors_written_elsewhere_load_strictly(tmp_path: Path) -> None:
    net = build_network(MLP, [784])
    safetensors.torch.save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    info = torch_format.inspect(tmp_path, "w.safetensors", _given(MLP, [784]))
    assert info.extra["parameters"] == 784 * 64 + 64 + 64 * 10 + 10
