"""ONNX models, served with onnxruntime on the CPU.

The graph is parsed without its external data first, so that every external-data location can be
checked to stay inside the bundle before onnxruntime opens any file the model names.

Weight-only quantized graphs (4-bit weights feeding DequantizeLinear, fp32 activations, as
``optimize/quantize.py`` writes them) get onnxruntime's ``session.disable_quant_qdq``: by default
onnxruntime leaves DequantizeLinear unfolded so it can fuse QDQ pairs into integer kernels, which here
would dequantize every weight on every call (1.8 ms against 1.3 ms for LeNet-300-100 at batch 256).
With QDQ handling off, constant folding dequantizes once at load and the graph runs at fp32 speed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import GraphProto, ModelProto, TensorProto, ValueInfoProto

from modelport.errors import InvalidArtifact, InvalidInput
from modelport.formats._common import (
    Files,
    describe_error,
    files_of,
    reconcile,
    resolve_entry,
    spec,
    usable_cores,
)
from modelport.formats.base import Inspection, Tensors
from modelport.serving import devices
from modelport.serving.devices import Device
from modelport.store.bundle import Manifest, ManifestInput, Signature, TensorSpec

NAME = "onnx"
EXTENSIONS: tuple[str, ...] = (".onnx",)
ENTRYPOINT = "model.onnx"

ACTIVATION_QUANT_OPS = frozenset(
    {
        "QuantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QGemm",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
    }
)
"""Ops that quantize or compute on quantized activations (plus every ``QLinear*`` op)."""

_ELEM_TYPES: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.DOUBLE: "float64",
    TensorProto.FLOAT16: "float16",
    TensorProto.INT8: "int8",
    TensorProto.INT16: "int16",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int64",
    TensorProto.UINT8: "uint8",
    TensorProto.BOOL: "bool",
    TensorProto.STRING: "string",
}


def save(model: ModelProto, directory: Path) -> Files:
    """Write ``model`` as ``model.onnx`` (weights inline) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(directory / ENTRYPOINT))
    return files_of(directory, [ENTRYPOINT])


def inspect(bundle_dir: Path, entrypoint: str, given: ManifestInput) -> Inspection:
    """Parse the graph, check external data stays in the bundle, and read the signature."""
    path = resolve_entry(bundle_dir, entrypoint)
    model = _parse(path, entrypoint, bundle_dir)
    data_files = check_external_data(model, bundle_dir, entrypoint)
    inferred, skipped = graph_signature(model.graph)
    extra: dict[str, object] = {
        "opset": {o.domain or "ai.onnx": int(o.version) for o in model.opset_import},
        "ir_version": int(model.ir_version),
        "producer": model.producer_name[:100],
    }
    if data_files:
        extra["external_data"] = sorted(data_files)
    if skipped:
        extra["skipped_outputs"] = skipped
    # onnxruntime must accept it now, with the options load() will use, not at first predict
    _open_session(path, bundle_dir, entrypoint, weight_only=weight_only_dequantize(model))
    return Inspection(signature=reconcile(inferred, given.signature), extra=extra)


def load(bundle_dir: Path, manifest: Manifest, device: Device = "cpu") -> OnnxPredictor:
    """Open an onnxruntime session for the manifest's entrypoint (on CUDA: the CUDA provider first)."""
    providers = devices.onnx_providers(device)
    path = resolve_entry(bundle_dir, manifest.entrypoint)
    model = _parse(path, manifest.entrypoint, bundle_dir)
    data_files = check_external_data(model, bundle_dir, manifest.entrypoint)
    weight_only = weight_only_dequantize(model)
    folded = _dequantized_bytes(model) if weight_only else 0  # fp32 weights the session will hold
    del model  # the session re-reads the file; keep only one copy of the weights in memory
    session = _open_session(path, bundle_dir, manifest.entrypoint, weight_only=weight_only, providers=providers)
    devices.confirm_onnx(device, session.get_providers())
    size = path.stat().st_size + sum((bundle_dir / f).stat().st_size for f in data_files)
    return OnnxPredictor(session, manifest.signature, memory_bytes=2 * size + folded)


def weight_only_dequantize(model: ModelProto) -> bool:
    """True for a weight-only quantized graph: every DequantizeLinear reads only constants, and no
    activation is quantized (no QuantizeLinear, DynamicQuantizeLinear, QLinear*, QGemm or *Integer op).

    Such a graph gains nothing from onnxruntime's QDQ fusions, so it is safe to turn them off and let
    constant folding dequantize the weights once at load. Works on a graph parsed without its external
    data: only node inputs and initializer names are read.
    """
    # an initializer that is also a graph input can be fed at run time, so it is no constant
    constants = {t.name for t in model.graph.initializer} - {i.name for i in model.graph.input}
    dequantizers = []
    for node in _all_nodes(model.graph):
        if node.op_type in ACTIVATION_QUANT_OPS or node.op_type.startswith("QLinear"):
            return False
        if node.op_type == "DequantizeLinear":
            dequantizers.append(node)
    return bool(dequantizers) and all(name in constants for node in dequantizers for name in node.input if name)


class OnnxPredictor:
    """Runs an onnxruntime session; onnxruntime's ``run`` is thread-safe."""

    def __init__(self, session: ort.InferenceSession, signature: Signature, memory_bytes: int) -> None:
        self._session: ort.InferenceSession | None = session
        self.signature = signature
        self.memory_bytes = memory_bytes
        self._input_names = [i.name for i in session.get_inputs()]
        tensor_outputs = [o.name for o in session.get_outputs() if o.type.startswith("tensor(")]
        wanted = [o.name for o in signature.outputs]
        self._output_names = [n for n in wanted if n in tensor_outputs] or tensor_outputs
        # onnxruntime's Python ``run`` re-validates the feed on every call (~3 us); the feed built below
        # always holds exactly the graph's inputs, so the checked call goes straight to the C++ session.
        self._run = getattr(session, "_sess", session).run
        """The session's run; ``unload`` swaps in one that raises (and so lets the session go)."""
        self._options = ort.RunOptions()
        """One RunOptions for every call: the C++ run builds a default one per call otherwise (~0.7 µs)."""

    def __call__(self, inputs: Tensors) -> Tensors:
        missing = [n for n in self._input_names if n not in inputs]
        if missing:
            raise InvalidInput(message=f"missing input(s) {missing}", details={"missing": missing})
        feed = {name: inputs[name] for name in self._input_names}
        results = self._run(self._output_names, feed, self._options)
        return {name: np.asarray(value) for name, value in zip(self._output_names, results, strict=True)}

    def unload(self) -> None:
        self._session = None
        self._run = _unloaded


def _unloaded(*_: Any) -> Any:
    """Stands in for an unloaded session's ``run`` (which held the session alive)."""
    raise RuntimeError("predictor was unloaded")


def graph_signature(graph: GraphProto) -> tuple[Signature, list[str]]:
    """Inputs (initializers excluded) and tensor outputs of ``graph``; names of skipped outputs.

    Non-tensor outputs (e.g. skl2onnx's ZipMap sequence of maps) cannot travel as arrays, so they
    are left out of the signature and never requested from onnxruntime.
    """
    initializers = {t.name for t in graph.initializer}
    inputs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        if not value.type.HasField("tensor_type"):
            raise InvalidArtifact(message=f"input {value.name[:64]!r} is not a tensor; Modelport takes tensors")
        inputs.append(_value_spec(value))
    outputs, skipped = [], []
    for value in graph.output:
        if value.type.HasField("tensor_type"):
            outputs.append(_value_spec(value))
        else:
            skipped.append(value.name)
    return Signature(inputs=inputs, outputs=outputs), skipped


def _value_spec(value: ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dtype = _ELEM_TYPES.get(tensor_type.elem_type)
    if dtype is None:
        kind = TensorProto.DataType.Name(tensor_type.elem_type)
        raise InvalidArtifact(message=f"tensor {value.name[:64]!r} has type {kind}, which Modelport cannot serve")
    shape: list[int] | None = None
    if tensor_type.HasField("shape"):
        # symbolic ("batch") and unknown dims are any-size: -1
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor_type.shape.dim]
    return spec(value.name, dtype, shape)


def check_external_data(model: ModelProto, bundle_dir: Path, entrypoint: str) -> set[str]:
    """Refuse external-data locations outside the bundle; return the bundle paths they use.

    ONNX resolves a location relative to the model file's folder, so ``sub/../../x`` or an
    absolute path would make onnxruntime read any file on the server.
    """
    base = posixpath.dirname(entrypoint)
    root = bundle_dir.resolve()
    used: set[str] = set()
    for tensor in _all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        rel = posixpath.normpath(posixpath.join(base, location)) if location else ""
        if (
            not location
            or location.startswith(("/", "\\"))
            or "\\" in location
            or ":" in location
            or rel.startswith("../")
            or rel == ".."
            or not (root / rel).resolve().is_relative_to(root)
        ):
            raise InvalidArtifact(
                message=f"tensor {tensor.name[:64]!r}: external data location {location[:80]!r} "
                "must be a relative path inside the bundle"
            )
        if not (root / rel).is_file():
            raise InvalidArtifact(message=f"external data file {rel!r} is missing from the bundle")
        used.add(rel)
    return used


def _all_tensors(model: ModelProto) -> Iterator[TensorProto]:
    """Every TensorProto of the model: initializers, sparse ones, and node attributes, recursively."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for sub in attr.graphs:
            yield from _graph_tensors(sub)


def _all_nodes(graph: GraphProto) -> Iterator[onnx.NodeProto]:
    """Nodes of ``graph`` and of its subgraphs (If/Loop/Scan bodies), recursively."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _dequantized_bytes(model: ModelProto) -> int:
    """fp32 bytes of the weights DequantizeLinear nodes produce, which the session keeps once folded."""
    shapes = {t.name: t.dims for t in model.graph.initializer}
    elements = 0
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in shapes:
            elements += int(np.prod(shapes[node.input[0]], dtype=np.int64))
    return 4 * elements


def _parse(path: Path, entrypoint: str, bundle_dir: Path) -> ModelProto:
    try:
        return onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, RuntimeError or ValueError
        raise InvalidArtifact(
            message=f"{entrypoint!r} is not a valid ONNX model ({describe_error(exc, bundle_dir)})"
        ) from None


def _open_session(
    path: Path,
    bundle_dir: Path,
    entrypoint: str,
    *,
    weight_only: bool = False,
    providers: list[str] | None = None,
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = usable_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; warnings about unused initializers are noise
    if weight_only:  # lets constant folding dequantize the weights once (see the module docstring)
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph/... classes
        raise InvalidArtifact(
            message=f"onnxruntime cannot load {entrypoint!r} ({describe_error(exc, bundle_dir)})"
        ) from None
