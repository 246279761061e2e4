"""optimize/quantize.py: a LeNet-300-100 trained on real MNIST, quantized three ways, then served."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from modelport.errors import BadRequest
from modelport.formats import onnx as onnx_format
from modelport.optimize.quantize import METHODS, quantize_onnx
from modelport.store.bundle import Manifest, ManifestInput
from modelport.training.data.idx import load_mnist
from modelport.training.nets import build_network
from tests.conftest import MNIST

MAX_RATIO = {"int8_dynamic": 0.27, "int8_static": 0.27, "int4_weight": 0.15}


@dataclass(frozen=True)
class Lenet:
    onnx_path: Path
    calibration: np.ndarray  # (1000, 784) preprocessed training images
    x_test: np.ndarray  # (2000, 784)
    y_test: np.ndarray


def _export(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        net,
        (example,),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Lenet:
    """LeNet-300-100 after one Adam epoch over 10,000 real MNIST images (about 88% test accuracy)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x_train, y_train = load_mnist(MNIST, "train")
    x_test, y_test = load_mnist(MNIST, "test")
    xs = torch.from_numpy((x_train[:10_000].reshape(-1, 784) / 255.0).astype(np.float32))
    ys = torch.from_numpy(y_train[:10_000].astype(np.int64))
    net = build_network(
        [{"dense": 300, "activation": "relu"}, {"dense": 100, "activation": "relu"}, {"dense": 10}], [784]
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for idx in torch.randperm(len(xs)).split(64):
        loss = torch.nn.functional.cross_entropy(net(xs[idx]), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("lenet") / "lenet.onnx"
    _export(net.eval(), torch.zeros(1, 784), path)
    return Lenet(
        onnx_path=path,
        calibration=xs[:1000].numpy(),
        x_test=(x_test[:2000].reshape(-1, 784) / 255.0).astype(np.float32),
        y_test=y_test[:2000].astype(np.int64),
    )


@pytest.fixture(scope="module")
def quantized(lenet: Lenet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Each method's file and facts, built once."""
    folder = tmp_path_factory.mktemp("quantized")
    out = {}
    for method in METHODS:
        dst = folder / f"{method}.onnx"
        out[method] = (dst, quantize_onnx(lenet.onnx_path, dst, method, calibration=lenet.calibration))  # type: ignore[arg-type]
    return out


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean() * 100)


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load_model(str(path)).graph.node}


@pytest.mark.parametrize("method", METHODS)
def test_smaller_and_as_accurate(method: str, lenet: Lenet, quantized: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    path, facts = quantized[method]
    ratio = path.stat().st_size / lenet.onnx_path.stat().st_size
    fp32 = _accuracy(_run(lenet.onnx_path, lenet.x_test), lenet.y_test)
    acc = _accuracy(_run(path, lenet.x_test), lenet.y_test)
    assert ratio <= MAX_RATIO[method], ratio
    assert fp32 > 80  # the model learned something, so the comparison means something
    assert abs(acc - fp32) <= 1.0, (fp32, acc)
    assert facts["method"] == method
    assert facts["bytes"] == path.stat().st_size


def test_int8_dynamic_runs_integer_matmuls(quantized: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    path, facts = quantized["int8_dynamic"]
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= _ops(path)
    assert "Gemm" not in _ops(path)  # torch's Gemms were rewritten as MatMul so the quantizer takes them
    assert facts["weights_quantized"] == 3
    assert facts["quantized_ops"]["MatMulInteger"] == 3


def test_int8_static_fuses_to_qgemm(quantized: dict[str, tuple[Path, dict[str, Any]]], tmp_path: Path) -> None:
    path, facts = quantized["int8_static"]
    model = onnx.load_model(str(path))
    int8 = {t.name for t in model.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 2}
    assert len(int8) == facts["weights_quantized"] == 2  # the output layer stays fp32, unclipped
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(path)
    assert facts["format"] == "QDQ"
    assert facts["calibration_examples"] == 1000
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert "QGemm" in _ops(tmp_path / "optimized.onnx")  # onnxruntime runs integer kernels, not fp32 + DQ


def test_int4_weights_are_blocked_int4(quantized: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    path, facts = quantized["int4_weight"]
    model = onnx.load_model(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == facts["weights_quantized"] == 3
    assert facts["block_size"] == 64
    assert _ops(path) == {"DequantizeLinear", "Gemm", "Relu"}
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {21}
    assert model.ir_version >= 10
    shapes = []
    for node in dqs:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"axis": 1, "block_size": 64}  # transB=1: K is axis 1
        weight, scale = inits[node.input[0]], inits[node.input[1]]
        assert weight.data_type == TensorProto.INT4
        shapes.append((list(weight.dims), list(scale.dims)))
    # K = 784, 300, 100 in blocks of 64: the last block of each is partial
    assert shapes == [([300, 784], [300, 13]), ([100, 300], [100, 5]), ([10, 100], [10, 2])]
    scales = {n.input[1] for n in dqs}
    assert not [
        t.name
        for t in model.graph.initializer
        if len(t.dims) == 2 and t.data_type == TensorProto.FLOAT and t.name not in scales
    ]


def test_int8_static_needs_calibration(lenet: Lenet, tmp_path: Path) -> None:
    for calibration in (None, np.zeros((0, 784), dtype=np.float32)):
        with pytest.raises(BadRequest, match="calibration data"):
            quantize_onnx(lenet.onnx_path, tmp_path / "q.onnx", "int8_static", calibration=calibration)
    with pytest.raises(BadRequest, match="'pixels'"):
        quantize_onnx(
            lenet.onnx_path, tmp_path / "q.onnx", "int8_static", calibration=lenet.calibration, input_name="pixels"
        )
    assert not (tmp_path / "q.onnx").exists()


def test_bad_arguments(lenet: Lenet, tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="int4_weight"):
        quantize_onnx(lenet.onnx_path, tmp_path / "q.onnx", "int2")  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="block_size"):
        quantize_onnx(lenet.onnx_path, tmp_path / "q.onnx", "int4_weight", block_size=0)


def test_quantizer_chatter_is_dropped(lenet: Lenet, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ORT logs "Please consider to run pre-processing" on the root logger; none of it reaches handlers."""
    with caplog.at_level(logging.INFO):
        quantize_onnx(lenet.onnx_path, tmp_path / "d.onnx", "int8_dynamic")
        quantize_onnx(lenet.onnx_path, tmp_path / "s.onnx", "int8_static", calibration=lenet.calibration)
    assert not [r for r in caplog.records if "onnxruntime" in r.pathname]
    assert not logging.getLogger().filters


def _weights_graph(op: str, weight: np.ndarray, **attrs: Any) -> onnx.ModelProto:
    """Y = op(X, W) with W an initializer; X: (batch, K)."""
    k = weight.shape[1] if attrs.get("transB") else weight.shape[0]
    graph = helper.make_graph(
        [helper.make_node(op, ["X", "W"], ["Y"], **attrs)],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, name="W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _dequantize(model: onnx.ModelProto) -> np.ndarray:
    """The weight that the model's one blocked DequantizeLinear produces, computed with numpy."""
    (node,) = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    q, scale = inits[node.input[0]].astype(np.float32), inits[node.input[1]]
    axis, block = attrs["axis"], attrs["block_size"]
    expanded = np.repeat(scale, block, axis=axis).take(range(q.shape[axis]), axis=axis)
    return np.asarray(q * expanded)


@pytest.mark.parametrize(
    ("op", "attrs", "shape", "axis"),
    [
        ("MatMul", {}, (5, 3), 0),  # K=5 in blocks of 2: the last block is partial
        ("Gemm", {"transB": 0}, (5, 3), 0),
        ("Gemm", {"transB": 1}, (3, 5), 1),
    ],
)
def test_int4_blocks_along_k(op: str, attrs: dict[str, int], shape: tuple[int, int], axis: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=shape).astype(np.float32)
    weight[0] = 0  # an all-zero row: no division by a zero scale
    onnx.save_model(_weights_graph(op, weight, **attrs), str(tmp_path / "src.onnx"))
    quantize_onnx(tmp_path / "src.onnx", tmp_path / "q.onnx", "int4_weight", block_size=2)
    model = onnx.load_model(str(tmp_path / "q.onnx"))
    (node,) = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert helper.get_attribute_value(node.attribute[0]) == axis
    dequantized = _dequantize(model)
    assert not dequantized[0].any()
    assert np.linalg.norm(dequantized - weight) / np.linalg.norm(weight) < 0.15
    x = rng.normal(size=(4, 5)).astype(np.float32)
    expected = x @ (dequantized.T if attrs.get("transB") else dequantized)
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"X": x})[0], expected, rtol=1e-5, atol=1e-5)


def test_int4_leaves_scaled_gemm_fp32(tmp_path: Path) -> None:
    weight = np.ones((5, 3), dtype=np.float32)
    onnx.save_model(_weights_graph("Gemm", weight, alpha=2.0), str(tmp_path / "src.onnx"))
    with pytest.raises(BadRequest, match="no Gemm, MatMul or Conv weight"):
        quantize_onnx(tmp_path / "src.onnx", tmp_path / "q.onnx", "int4_weight")
    assert not (tmp_path / "q.onnx").exists()


def test_conv_net_quantizes(tmp_path: Path) -> None:
    """Conv weights: int8 methods quantize them (ConvInteger, QDQ); int4 takes only the Gemm."""
    torch.manual_seed(0)
    net = build_network(
        [{"conv2d": {"filters": 4, "kernel_size": 3}, "activation": "relu"}, {"maxpool": 2}, "flatten", {"dense": 10}],
        [1, 12, 12],
    ).eval()
    _export(net, torch.zeros(1, 1, 12, 12), tmp_path / "conv.onnx")
    x = np.random.default_rng(0).random((8, 1, 12, 12), dtype=np.float32)
    fp32 = _run(tmp_path / "conv.onnx", x)
    # static leaves the output Gemm fp32; int4 quantizes only Gemm and MatMul weights
    expected = {"int8_dynamic": ("ConvInteger", 2), "int8_static": ("QuantizeLinear", 1), "int4_weight": ("Gemm", 1)}
    for method, (op, weights) in expected.items():
        dst = tmp_path / f"{method}.onnx"
        facts = quantize_onnx(tmp_path / "conv.onnx", dst, method, calibration=x)  # type: ignore[arg-type]
        assert op in _ops(dst)
        assert facts["weights_quantized"] == weights, method
        np.testing.assert_allclose(_run(dst, x), fp32, atol=0.1 * np.abs(fp32).max())


def test_serving_loader_folds_int4_weights(
    lenet: Lenet, quantized: dict[str, tuple[Path, dict[str, Any]]], tmp_path: Path
) -> None:
    flags = {m: onnx_format.weight_only_dequantize(onnx.load_model(str(p))) for m, (p, _) in quantized.items()}
    flags["fp32"] = onnx_format.weight_only_dequantize(onnx.load_model(str(lenet.onnx_path)))
    assert flags == {"int8_dynamic": False, "int8_static": False, "int4_weight": True, "fp32": False}

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.onnx").write_bytes(quantized["int4_weight"][0].read_bytes())
    info = onnx_format.inspect(bundle, "model.onnx", ManifestInput())
    assert info.signature is not None
    manifest = Manifest.model_validate(
        {"format": "onnx", "entrypoint": "model.onnx", "signature": info.signature.model_dump()}
    )
    predictor = onnx_format.load(bundle, manifest)
    options = predictor._session.get_session_options()  # type: ignore[union-attr]
    assert options.get_session_config_entry("session.disable_quant_qdq") == "1"
    # the session holds the folded fp32 weights, and the memory estimate says so
    assert predictor.memory_bytes >= 4 * (784 * 300 + 300 * 100 + 100 * 10)
    out = predictor({"input": lenet.x_test[:64]})["output"]
    np.testing.assert_allclose(out, _run(bundle / "model.onnx", lenet.x_test[:64]), rtol=1e-5, atol=1e-5)
