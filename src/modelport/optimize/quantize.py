"""Post-training quantization of fp32 ONNX models, for serving with onnxruntime on the CPU.

Three methods, none of which retrains:

``int8_dynamic``
    int8 weights; each call quantizes its activations from their observed range. No data needed.
    ONNX Runtime's dynamic quantizer knows MatMul but not Gemm, and torch exports ``nn.Linear`` as
    Gemm, so constant-weight Gemms are first rewritten as MatMul (+ Add for the bias).
``int8_static``
    int8 per-channel weights and uint8 activations whose ranges are fixed beforehand from calibration
    data, so no range is computed per call. Needs a preprocessed calibration set.
``int4_weight``
    4-bit weights, symmetric, one fp32 scale per block of ``block_size`` along the input (K) axis;
    activations stay fp32. Blocks of 64 are the default: on a 20-epoch LeNet-300-100 (1.88% error)
    blocks of 128 lost 0.16 point (2.04%), 64 lost 0.06 at 0.144x the size, 32 no better at 0.160x.
    Written here rather than with ORT's ``MatMulNBitsQuantizer``: that one
    needs the ``onnx_ir`` package, which we do not ship, and its fp32 block scales plus K padding
    left a LeNet-300-100 at ~0.152x of fp32, over our 0.15x size floor. Each weight becomes an
    INT4 initializer plus its scales feeding a standard blocked ``DequantizeLinear`` (opset 21), so
    any ONNX runtime can read it. onnxruntime keeps DequantizeLinear unfolded by default (to fuse
    QDQ pairs), which would dequantize on every call; ``formats/onnx.py`` spots such weight-only
    graphs and lets onnxruntime fold them once at load, so they run at fp32 speed.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import onnx
import onnxruntime.quantization as ortq
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from modelport.errors import BadRequest
from modelport.formats.onnx import ACTIVATION_QUANT_OPS

Method = Literal["int8_dynamic", "int8_static", "int4_weight"]
METHODS: tuple[str, ...] = get_args(Method)

CALIBRATION_BATCH = 64
"""Examples per calibration run; MinMax only keeps running extremes, so this bounds memory, not accuracy."""

INT4_OPSET = 21
"""First opset whose DequantizeLinear takes INT4 inputs and a ``block_size``."""

_CLIP_RATIOS = np.linspace(1.0, 0.5, 11)  # 1.0 first, so an unclipped scale wins ties
_INT4_IR_VERSION = 10  # IR 10 introduced the INT4 element type
_QUANTIZED_TYPES = frozenset({TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4})
_QUANTIZED_OPS = ACTIVATION_QUANT_OPS | {"DequantizeLinear"}
_ORT_QUANTIZATION_DIR = str(Path(ortq.__file__).parent)


def quantize_onnx(
    src: Path,
    dst: Path,
    method: Method,
    *,
    calibration: np.ndarray | None = None,
    input_name: str = "input",
    block_size: int = 64,
) -> dict[str, Any]:
    """Write ``src`` quantized with ``method`` to ``dst`` (one file, weights inline); return report facts.

    ``calibration`` (``int8_static`` only) is already preprocessed float32 input for ``input_name``.
    Raises BadRequest when the method cannot apply: no calibration data, or nothing to quantize.
    """
    if method not in METHODS:
        raise BadRequest(message=f"unknown quantization method {method!r}; use one of {', '.join(METHODS)}")
    model = onnx.load_model(str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    if method == "int8_dynamic":
        facts = _int8_dynamic(model, dst)
    elif method == "int8_static":
        facts = _int8_static(model, dst, _calibration_data(model.graph, calibration, input_name), input_name)
    else:
        facts = _int4_weight(model, dst, block_size)
    found = _quantized_facts(onnx.load_model(str(dst)))
    if not found["weights_quantized"]:
        dst.unlink()
        raise BadRequest(message=f"{method}: the graph has no Gemm, MatMul or Conv weight that could be quantized")
    return {"method": method, **facts, **found, "bytes": dst.stat().st_size}


# --- int8 with ONNX Runtime's quantizers ------------------------------------------------------------


def _int8_dynamic(model: ModelProto, dst: Path) -> dict[str, Any]:
    rewritten = _gemm_as_matmul(model.graph)
    with _quiet_quantizer():
        ortq.quantize_dynamic(
            model,
            dst,
            weight_type=ortq.QuantType.QInt8,
            # per-output-column weight scales: on LeNet-300-100, +2 kB and ~1% latency for closer logits
            # (max diff 0.066 against 0.074 per-tensor)
            per_channel=True,
            # 7-bit weights: without VNNI (AVX2-only CPUs) onnxruntime's u8 x s8 kernels add pairs of
            # products in int16, which saturates with full-range weights (a small conv net's largest error
            # 0.038 -> 0.005 on such a host); 7 bits cannot overflow, so a version serves alike on any CPU
            reduce_range=True,
        )
    return {"per_channel": True, "reduce_range": True, "gemm_rewritten": rewritten}


def _int8_static(model: ModelProto, dst: Path, data: np.ndarray, input_name: str) -> dict[str, Any]:
    fp32_nodes = _output_nodes(model.graph)
    with _quiet_quantizer():
        ortq.quantize_static(
            model,
            dst,
            _Batches(input_name, data),
            # QDQ and QOperator ran alike (0.39 ms at batch 256, one thread: onnxruntime fuses the QDQ
            # Gemm into the same QGemm kernel at load). QDQ is ~2% larger but uses standard ONNX ops only,
            # where QOperator's QGemm is an onnxruntime contrib op other runtimes cannot run.
            quant_format=ortq.QuantFormat.QDQ,
            per_channel=True,
            activation_type=ortq.QuantType.QUInt8,
            weight_type=ortq.QuantType.QInt8,
            # MinMax kept accuracy as well as Percentile and Entropy did (within 0.01 point), and those two
            # fail on a partial last calibration batch in onnxruntime 1.32 and print to stdout.
            calibrate_method=ortq.CalibrationMethod.MinMax,
            nodes_to_exclude=fp32_nodes,
        )
    return {
        "format": "QDQ",
        "per_channel": True,
        "calibration": "MinMax",
        "calibration_examples": len(data),
        "fp32_nodes": fp32_nodes,
    }


def _output_nodes(graph: GraphProto) -> list[str]:
    """Names of the nodes that write a graph output, to be left fp32 by static quantization.

    A quantized graph output is clipped to its calibration range: on LeNet-300-100, test logits beyond
    it were off by up to 4.6; with the last Gemm left fp32, by 0.33 (+1% latency, +2.7 kB). When those
    nodes hold the only weights (a one-layer model), they are quantized all the same.
    """
    _name_nodes(graph)
    outputs = {o.name for o in graph.output}
    last = [n for n in graph.node if outputs & set(n.output)]
    weighted = [n for n in graph.node if n.op_type in ("Gemm", "MatMul", "Conv")]
    if all(n in last for n in weighted):
        return []
    return [n.name for n in last]


class _Batches:
    """Calibration batches of ``CALIBRATION_BATCH`` examples.

    ORT's ``CalibrationDataReader`` is an ABC whose ``__subclasshook__`` accepts any class with a
    ``get_next``, so this need not (and, untyped, should not) subclass it.
    """

    def __init__(self, input_name: str, data: np.ndarray) -> None:
        self._input_name = input_name
        self._data = data
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= len(self._data):
            return None
        batch = self._data[self._start : self._start + CALIBRATION_BATCH]
        self._start += len(batch)
        return {self._input_name: batch}

    def rewind(self) -> None:
        self._start = 0


def _calibration_data(graph: GraphProto, calibration: np.ndarray | None, input_name: str) -> np.ndarray:
    if calibration is None or calibration.ndim == 0 or len(calibration) == 0:
        raise BadRequest(
            message="int8_static needs calibration data: pass a few hundred preprocessed training examples "
            "(float32, shaped like the model input), or use int8_dynamic, which needs none"
        )
    inputs = _graph_inputs(graph)
    if inputs != [input_name]:
        raise BadRequest(
            message=f"int8_static calibrates a graph with the one input {input_name!r}; this graph takes {inputs}"
        )
    return np.ascontiguousarray(calibration, dtype=np.float32)


def _gemm_as_matmul(graph: GraphProto) -> int:
    """Rewrite each plain constant-weight Gemm as MatMul (+ Add), in place; return how many.

    A transposed weight (``transB=1``, torch's Linear) is stored transposed once, so the MatMul
    reads it as (K, N) with no Transpose node at run time.
    """
    weights = _constant_weights(graph)
    transposed: dict[str, str] = {}
    taken = _names(graph)
    nodes: list[NodeProto] = []
    rewritten = 0
    for node in graph.node:
        if node.op_type != "Gemm" or _gemm_weight_axis(node, weights) is None or _attr(node, "transA", 0):
            nodes.append(node)
            continue
        weight = node.input[1]
        if _attr(node, "transB", 0):
            if weight not in transposed:
                transposed[weight] = _fresh(f"{weight}_transposed", taken)
                array = numpy_helper.to_array(weights[weight]).T
                graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), transposed[weight]))
            weight = transposed[weight]
        bias = node.input[2] if len(node.input) > 2 else ""
        out = node.output[0]
        product = _fresh(f"{out}_matmul", taken) if bias else out
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=f"{node.name}_MatMul"))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [out], name=f"{node.name}_Add"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused_initializers(graph)
    return rewritten


# --- int4 weight-only -----------------------------------------------------------------------------


def _int4_weight(model: ModelProto, dst: Path, block_size: int) -> dict[str, Any]:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise BadRequest(message=f"block_size must be a positive integer, not {block_size!r}")
    model = _with_opset(model, INT4_OPSET)
    graph = model.graph
    targets = _int4_targets(graph)
    weights = _constant_weights(graph)
    taken = _names(graph)
    dequantized: dict[str, str] = {}
    dq_nodes: list[NodeProto] = []
    for name, axis in targets.items():
        packed, scale = int4_blocks(numpy_helper.to_array(weights[name]), axis, block_size)
        q_name, scale_name = _fresh(f"{name}_int4", taken), _fresh(f"{name}_scale", taken)
        dequantized[name] = _fresh(f"{name}_dequantized", taken)
        graph.initializer.append(
            helper.make_tensor(q_name, TensorProto.INT4, list(weights[name].dims), packed, raw=True)
        )
        graph.initializer.append(numpy_helper.from_array(scale, scale_name))
        dq_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [q_name, scale_name],
                [dequantized[name]],
                name=f"{name}_DequantizeLinear",
                axis=axis,
                block_size=block_size,
            )
        )
    for node in graph.node:
        for i, value in enumerate(node.input):
            if value in dequantized:
                node.input[i] = dequantized[value]
    nodes = [*dq_nodes, *graph.node]  # DequantizeLinear reads only initializers: first is topological
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused_initializers(graph)
    model.ir_version = max(model.ir_version, _INT4_IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(dst))
    return {"block_size": block_size, "opset": INT4_OPSET}


def int4_blocks(weight: np.ndarray, axis: int, block_size: int) -> tuple[bytes, np.ndarray]:
    """Symmetric 4-bit blocks of a 2-D ``weight`` along ``axis``: (packed bytes, fp32 scales).

    Each block of ``block_size`` values along ``axis`` gets ``q = clip(round(w / scale), -8, 7)`` with
    ``scale = r * max|w| / 7``, ``r`` picked per block from 1.0 down to 0.5 to minimise the block's
    squared error: clipping a few outliers buys finer steps for the rest. On LeNet-300-100 (block 128)
    that cut the full-MNIST accuracy drop from 1.0 to 0.3 points against plain ``max|w| / 7``.
    The last block may be partial. The scales have ``weight``'s shape except ``ceil(K / block_size)``
    along ``axis``, as blocked DequantizeLinear expects. Values are packed two per byte in row-major
    order, low nibble first, as ONNX stores INT4.
    """
    wk = np.moveaxis(weight.astype(np.float32), axis, -1)  # (N, K): blocks run along the last axis
    n, k = wk.shape
    nblocks = -(-k // block_size)
    padded = np.zeros((n, nblocks * block_size), dtype=np.float32)
    padded[:, :k] = wk  # zero padding changes no block's max|w| nor its error
    blocks = padded.reshape(n, nblocks, block_size)
    amax = np.abs(blocks).max(axis=-1)  # (N, nblocks)
    best_q, best_scale, best_err = _int4_grid(blocks, amax, _CLIP_RATIOS[0])
    for ratio in _CLIP_RATIOS[1:]:
        q, scale, err = _int4_grid(blocks, amax, ratio)
        better = err < best_err  # strict: ties keep the larger, unclipped scale
        best_q = np.where(better[..., None], q, best_q)
        best_scale = np.where(better, scale, best_scale)
        best_err = np.minimum(err, best_err)
    q_k = best_q.astype(np.int8).reshape(n, -1)[:, :k]
    return _pack_int4(np.moveaxis(q_k, -1, axis)), np.ascontiguousarray(np.moveaxis(best_scale, -1, axis))


def _int4_grid(blocks: np.ndarray, amax: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q (N, nblocks, block), scale (N, nblocks) and squared error (N, nblocks) at ``ratio * max|w| / 7``."""
    scale = np.where(amax > 0, amax * ratio / 7, 1).astype(np.float32)  # an all-zero block is 0 at any scale
    q = np.clip(np.rint(blocks / scale[..., None]), -8, 7)
    err = np.square(q * scale[..., None] - blocks).sum(axis=-1)
    return q, scale, err


def _pack_int4(q: np.ndarray) -> bytes:
    nibbles = (q.ravel() & 0x0F).astype(np.uint8)
    if len(nibbles) % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


def _int4_targets(graph: GraphProto) -> dict[str, int]:
    """Weights to quantize, with their K axis: 2-D fp32 initializers every one of whose uses is the
    weight input of a Gemm (alpha = beta = 1) or MatMul that agrees on the axis."""
    weights = _constant_weights(graph)
    axes: dict[str, set[int | None]] = {}
    for node in graph.node:
        for i, value in enumerate(node.input):
            if value in weights:
                axes.setdefault(value, set()).add(_weight_axis(node, weights) if i == 1 else None)
    blocked = _subgraph_references(graph) | {o.name for o in graph.output}
    targets: dict[str, int] = {}
    for name, found in axes.items():
        axis = found.pop() if len(found) == 1 and name not in blocked else None
        if axis is not None:
            targets[name] = axis
    return targets


def _weight_axis(node: NodeProto, weights: dict[str, TensorProto]) -> int | None:
    """The K axis of input 1 of ``node`` if it is a quantizable weight, else None."""
    if node.op_type == "MatMul":
        return 0 if _is_matrix(weights.get(node.input[1])) else None
    if node.op_type == "Gemm":
        return _gemm_weight_axis(node, weights)
    return None


def _gemm_weight_axis(node: NodeProto, weights: dict[str, TensorProto]) -> int | None:
    """K axis of a Gemm's constant 2-D fp32 B, or None; alpha/beta other than 1 are left alone."""
    if _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
        return None
    if not _is_matrix(weights.get(node.input[1])):
        return None
    return 1 if _attr(node, "transB", 0) else 0  # B is (N, K) when transposed, else (K, N)


def _with_opset(model: ModelProto, version: int) -> ModelProto:
    """``model`` at default-domain opset ``version`` or later, converted by ONNX's version converter
    (which rewrites ops whose signature changed, e.g. Reduce* ``axes`` becoming an input at 18)."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if current >= version:
        return model
    try:
        return onnx.version_converter.convert_version(model, version)
    except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError/ValueError/its own adapters' errors
        raise BadRequest(
            message=f"int4_weight needs opset {version}, and this opset-{current} graph could not be converted: "
            f"{str(exc)[:200]}"
        ) from None


# --- shared graph helpers -------------------------------------------------------------------------


def _constant_weights(graph: GraphProto) -> dict[str, TensorProto]:
    """Initializers that are constants: an initializer also listed as a graph input can be overridden."""
    inputs = {i.name for i in graph.input}
    return {t.name: t for t in graph.initializer if t.name not in inputs}


def _graph_inputs(graph: GraphProto) -> list[str]:
    initializers = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def _is_matrix(tensor: TensorProto | None) -> bool:
    return tensor is not None and tensor.data_type == TensorProto.FLOAT and len(tensor.dims) == 2


def _attr(node: NodeProto, name: str, default: float) -> float:
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return float(value)
    return default


def _names(graph: GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names


def _name_nodes(graph: GraphProto) -> None:
    """Give unnamed nodes a unique name, so they can be listed in ``nodes_to_exclude``."""
    taken = _names(graph)
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = _fresh(f"{node.op_type}_{i}", taken)


def _fresh(base: str, taken: set[str]) -> str:
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def _subgraph_references(graph: GraphProto) -> set[str]:
    """Names read inside If/Loop/Scan bodies; renaming them would break those outer-scope reads."""
    found: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                for inner in sub.node:
                    found.update(inner.input)
                found |= _subgraph_references(sub)
    return found


def _drop_unused_initializers(graph: GraphProto) -> None:
    used = {v for n in graph.node for v in n.input} | {o.name for o in graph.output} | _subgraph_references(graph)
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _quantized_facts(model: ModelProto) -> dict[str, Any]:
    """Quantized op types (with counts) and the number of quantized weight tensors in ``model``."""
    ops = Counter(n.op_type for n in model.graph.node if n.op_type in _QUANTIZED_OPS or n.op_type.startswith("QLinear"))
    weights = sum(1 for t in model.graph.initializer if t.data_type in _QUANTIZED_TYPES and len(t.dims) >= 2)
    return {"quantized_ops": dict(sorted(ops.items())), "weights_quantized": weights}


class _DropQuantizerChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.pathname.startswith(_ORT_QUANTIZATION_DIR)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop ORT's quantizer chatter below ERROR while it runs.

    The quantizer logs through the *root* logger with module-level ``logging.warning``/``info``
    ("Please consider to run pre-processing before quantization", per-tensor notes), so no logger
    level can target it; a root-logger filter matching records from onnxruntime's quantization
    package can. ``logging.warning`` on a root logger without handlers would also call
    ``basicConfig()`` and leave a stderr handler in a host that configured none, so a NullHandler
    stands in for the duration. (``quant_pre_process`` would silence only the first warning, and
    runs symbolic shape inference and an optimizer pass we do not need for these graphs.)
    """
    root = logging.getLogger()
    chatter = _DropQuantizerChatter()
    stand_in = None if root.handlers else logging.NullHandler()
    root.addFilter(chatter)
    if stand_in is not None:
        root.addHandler(stand_in)
    try:
        yield
    finally:
        root.removeFilter(chatter)
        if stand_in is not None:
            root.removeHandler(stand_in)
