"""formats/onnx.py: a real exported MLP, external data, and hostile external-data locations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from modelport.errors import InvalidArtifact, InvalidManifest
from modelport.formats import onnx as onnx_format
from modelport.store.bundle import Manifest, ManifestInput, Signature, TensorSpec

ToManifest = Callable[..., Manifest]


@pytest.fixture(scope="module")
def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()


@pytest.fixture
def mlp_bundle(tmp_path: Path, mlp: torch.nn.Module) -> Path:
    torch.onnx.export(
        mlp,
        (torch.zeros(1, 784),),
        str(tmp_path / "mnist.onnx"),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return tmp_path


def _matmul_model(weights: np.ndarray) -> onnx.ModelProto:
    """Y = X @ W with W as an initializer; X: (batch, 4), W: (4, 3)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "matmul",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weights, name="W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _save_external(model: onnx.ModelProto, bundle: Path, location: str) -> None:
    onnx.save_model(model, str(bundle / "m.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    if location != "weights.bin":  # rewrite the location the way an attacker would
        saved = onnx.load_model(str(bundle / "m.onnx"), load_external_data=False)
        for entry in saved.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = location
        onnx.save_model(saved, str(bundle / "m.onnx"))


def test_inspect_reads_the_signature(mlp_bundle: Path) -> None:
    info = onnx_format.inspect(mlp_bundle, "mnist.onnx", ManifestInput())
    assert info.signature == Signature(
        inputs=[TensorSpec(name="input", dtype="float32", shape=[-1, 784])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=[-1, 10])],
    )
    assert info.extra["opset"]["ai.onnx"] >= 13


def test_predictions_match_torch(mlp_bundle: Path, mlp: torch.nn.Module, to_manifest: ToManifest) -> None:
    info = onnx_format.inspect(mlp_bundle, "mnist.onnx", ManifestInput())
    predictor = onnx_format.load(mlp_bundle, to_manifest("onnx", "mnist.onnx", info))
    x = np.random.default_rng(0).random((5, 784), dtype=np.float32)
    out = predictor({"input": x})
    with torch.no_grad():
        expected = mlp(torch.from_numpy(x)).numpy()
    assert set(out) == {"logits"} and out["logits"].shape == (5, 10)
    np.testing.assert_allclose(out["logits"], expected, atol=1e-5)
    assert predictor.memory_bytes > (mlp_bundle / "mnist.onnx").stat().st_size
    predictor.unload()


def test_given_signature_may_narrow_but_not_contradict(mlp_bundle: Path) -> None:
    narrow = Signature(inputs=[TensorSpec(name="input", shape=[-1, 784], allow_nan=True)])
    info = onnx_format.inspect(mlp_bundle, "mnist.onnx", ManifestInput(signature=narrow))
    assert info.signature is not None and info.signature.inputs[0].allow_nan
    assert [o.name for o in info.signature.outputs] == ["logits"]
    for wrong in (
        Signature(inputs=[TensorSpec(name="pixels", shape=[-1, 784])]),
        Signature(inputs=[TensorSpec(name="input", dtype="float64", shape=[-1, 784])]),
        Signature(inputs=[TensorSpec(name="input", shape=[-1, 28, 28])]),
        Signature(inputs=[TensorSpec(name="input")], outputs=[TensorSpec(name="probs")]),
    ):
        with pytest.raises(InvalidManifest):
            onnx_format.inspect(mlp_bundle, "mnist.onnx", ManifestInput(signature=wrong))


def test_external_data_inside_the_bundle_loads(tmp_path: Path, to_manifest: ToManifest) -> None:
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    _save_external(_matmul_model(w), tmp_path, "weights.bin")
    info = onnx_format.inspect(tmp_path, "m.onnx", ManifestInput())
    assert info.extra["external_data"] == ["weights.bin"]
    predictor = onnx_format.load(tmp_path, to_manifest("onnx", "m.onnx", info))
    x = np.ones((2, 4), dtype=np.float32)
    np.testing.assert_allclose(predictor({"X": x})["Y"], x @ w, atol=1e-5)


@pytest.mark.parametrize("location", ["../x", "/etc/passwd", "sub/../../x", "..\\x", "C:/x", ".."])
def test_external_data_outside_the_bundle_is_refused(tmp_path: Path, location: str) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (tmp_path / "x").write_bytes(b"\0" * 48)  # a real file there, so only the location check can refuse
    _save_external(_matmul_model(np.ones((4, 3), dtype=np.float32)), bundle, location)
    with pytest.raises(InvalidArtifact, match="inside the bundle") as info:
        onnx_format.inspect(bundle, "m.onnx", ManifestInput())
    assert str(tmp_path) not in str(info.value)


def test_symlinked_external_data_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (tmp_path / "secret").write_bytes(b"\0" * 48)
    _save_external(_matmul_model(np.ones((4, 3), dtype=np.float32)), bundle, "weights.bin")
    (bundle / "weights.bin").unlink()
    (bundle / "weights.bin").symlink_to(tmp_path / "secret")
    with pytest.raises(InvalidArtifact, match="inside the bundle"):
        onnx_format.inspect(bundle, "m.onnx", ManifestInput())


def test_missing_external_data_is_refused(tmp_path: Path) -> None:
    _save_external(_matmul_model(np.ones((4, 3), dtype=np.float32)), tmp_path, "weights.bin")
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(InvalidArtifact, match="missing"):
        onnx_format.inspect(tmp_path, "m.onnx", ManifestInput())


def test_non_tensor_outputs_are_left_out(tmp_path: Path, to_manifest: ToManifest) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["X"], ["Y"]), helper.make_node("SequenceConstruct", ["Y"], ["S"])],
        "seq",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 2])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_sequence_value_info("S", TensorProto.FLOAT, None),
        ],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "s.onnx"))
    info = onnx_format.inspect(tmp_path, "s.onnx", ManifestInput())
    assert info.signature is not None and [o.name for o in info.signature.outputs] == ["Y"]
    assert info.extra["skipped_outputs"] == ["S"]
    out = onnx_format.load(tmp_path, to_manifest("onnx", "s.onnx", info))({"X": np.array([[-1.0, 2.0]], np.float32)})
    assert list(out) == ["Y"] and out["Y"].tolist() == [[0.0, 2.0]]


def test_garbage_and_escaping_entrypoints_are_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage that is not protobuf" * 10)
    with pytest.raises(InvalidArtifact) as info:
        onnx_format.inspect(tmp_path, "bad.onnx", ManifestInput())
    assert str(tmp_path) not in str(info.value)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.onnx"
    onnx.save_model(_matmul_model(np.ones((4, 3), dtype=np.float32)), str(outside))
    (tmp_path / "link.onnx").symlink_to(outside)
    with pytest.raises(InvalidArtifact, match="outside the bundle"):
        onnx_format.inspect(tmp_path, "link.onnx", ManifestInput())
    with pytest.raises(InvalidManifest):
        onnx_format.inspect(tmp_path, "../x.onnx", ManifestInput())


def test_save_writes_model_onnx(tmp_path: Path) -> None:
    files = onnx_format.save(_matmul_model(np.ones((4, 3), dtype=np.float32)), tmp_path / "out")
    assert list(files) == ["model.onnx"] and len(files["model.onnx"]) == 64
    assert onnx_format.inspect(tmp_path / "out", "model.onnx", ManifestInput()).signature is not None
