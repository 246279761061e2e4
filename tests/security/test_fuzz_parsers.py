"""Every parser of untrusted bytes, fuzzed with hypothesis: upload manifests and bundle paths, raw-tensor
bodies, native JSON and V2 infer bodies (through to arrays, the model and the JSON answer), IDX files
(plain and gzip), the zip listings that tell an uploaded model's format (and refuse torch.save pickles
inside them), and model references.

The property is the same everywhere: a correct result, or one of our ``BadRequest`` errors; never another
exception, and never an allocation sized by what the input declares rather than what it holds.
(No endpoint unpacks zip or tar uploads: a zip is only listed, to tell TorchScript, torch.export, skops
and Keras files apart and to refuse ``torch.save`` pickles; that listing is fuzzed here.)
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper, save_model

from modelport.errors import (
    BadRequest,
    InvalidArtifact,
    InvalidInput,
    InvalidManifest,
    InvalidName,
    InvalidReference,
    ModelportError,
)
from modelport.formats import detect
from modelport.formats import onnx as onnx_format
from modelport.formats._sniff import torch_zip_kind, zip_names
from modelport.refs import MAX_VERSION, NAME_RE, parse_ref
from modelport.serving.pipeline import Pipeline
from modelport.serving.protocols import native, raw, v2
from modelport.serving.router import Target
from modelport.serving.service import Prediction
from modelport.store.bundle import (
    DTYPES,
    FORMAT_NAMES,
    MAX_FILES,
    MAX_PATH_LEN,
    Manifest,
    ManifestInput,
    check_bundle_path,
    parse_manifest_input,
)
from modelport.training.data.idx import MAX_DIMS, parse_idx, read_idx

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what JSON carries through orjson
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """``data`` with bytes overwritten (op 0), inserted (1) or deleted (2) at positions mod its length."""
    buf = bytearray(data)
    for op, pos, byte in edits:
        at = pos % (len(buf) + 1)
        if op == 0 and at < len(buf):
            buf[at] = byte
        elif op == 1:
            buf.insert(at, byte)
        elif at < len(buf):
            del buf[at]
    return bytes(buf)


def renderable(exc: ModelportError) -> None:
    """What the edge will write for this error: it must encode (a 64-bit overflow here would be a 500)."""
    orjson.dumps({"error": {"code": exc.code, "message": exc.message, "details": exc.details}})


edit_lists = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.integers(0, 255)), max_size=6)


@pytest.fixture
def peak_bytes() -> Iterator[Callable[[], int]]:
    """The most bytes Python allocated since the fixture started (numpy's buffers included)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- manifests and bundle paths --------------------------------------------------------------------------
path_chars = st.sampled_from([*"abz09._-/\\", "..", "\x00", "\u2215", "\uff0f", "e\u0301", "\u00e9", " ", ":"])
bundle_paths = st.lists(path_chars, max_size=20).map("".join) | st.text(max_size=40)
tensor_specs = st.fixed_dictionaries(
    {"name": st.text(max_size=5) | json_leaves},
    optional={
        "dtype": st.sampled_from(DTYPES) | json_leaves,
        "shape": st.lists(st.integers(-3, 2**40) | json_leaves, max_size=10) | json_leaves,
        "allow_nan": json_leaves,
    },
)
steps = st.dictionaries(
    st.sampled_from(["scale", "shift", "normalize", "reshape", "softmax", "sigmoid", "argmax", "top_k", "x"]),
    json_values | st.fixed_dictionaries({"mean": json_values, "std": json_values}),
    max_size=2,
)
manifests = st.fixed_dictionaries(
    {},
    optional={
        "format": st.sampled_from(FORMAT_NAMES) | json_leaves,
        "entrypoint": bundle_paths | json_leaves,
        "signature": st.fixed_dictionaries({}, optional={"inputs": st.lists(tensor_specs, max_size=3)}) | json_values,
        "preprocess": st.lists(steps, max_size=3) | json_values,
        "postprocess": st.lists(steps, max_size=3) | json_values,
        "labels": st.lists(st.text(max_size=4), max_size=5) | json_values,
        "serving": st.dictionaries(st.sampled_from(["max_batch_size", "max_wait_ms", "timeout_s"]), json_leaves),
        "lineage": st.dictionaries(st.sampled_from(["parent", "job", "transform"]), json_values),
        "files": st.dictionaries(bundle_paths, st.text(max_size=64)),
        "report": json_values,
    },
)
VALID_MANIFEST = dumps(
    {
        "format": "onnx",
        "entrypoint": "model.onnx",
        "signature": {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}]},
        "preprocess": [{"scale": 0.5}, {"normalize": {"mean": [0, 1], "std": 2}}],
        "postprocess": [{"top_k": 3}],
        "labels": ["a", "b", "c"],
    }
)


@FUZZ
@given(manifests.map(dumps) | edit_lists.map(lambda e: mutate(VALID_MANIFEST, e)) | st.binary(max_size=300))
def test_upload_manifests_parse_or_are_invalid_manifest(data: bytes) -> None:
    try:
        parsed = parse_manifest_input(data)
    except InvalidManifest as exc:
        renderable(exc)
        return
    assert isinstance(parsed, ManifestInput)
    for spec in parsed.signature.inputs if parsed.signature else []:
        assert spec.shape is None or (len(spec.shape) <= 8 and all(d == -1 or d > 0 for d in spec.shape))


@FUZZ
@given(manifests, bundle_paths)
def test_stored_manifests_validate_or_refuse_with_our_errors(data: dict[str, Any], entry: str) -> None:
    """A full manifest (what load and download read back) with fuzzed paths: files and entrypoint."""
    from pydantic import ValidationError

    try:
        manifest = Manifest.model_validate({"format": "onnx", "entrypoint": entry, **data})
    except ValidationError:
        return
    except InvalidManifest as exc:
        renderable(exc)
        return
    assert len(manifest.files) <= MAX_FILES
    for path in [manifest.entrypoint, *manifest.files]:
        assert check_bundle_path(path) == path


@FUZZ
@given(bundle_paths)
@example("a/../b")
@example("\uff0e\uff0e/x")  # fullwidth dots: NFC keeps them, the segment rule refuses them
def test_bundle_paths_are_normalized_relative_and_plain_or_refused(value: str) -> None:
    try:
        path = check_bundle_path(value)
    except InvalidManifest as exc:
        renderable(exc)
        return
    segments = path.split("/")
    assert path and len(path) <= MAX_PATH_LEN and not path.startswith("/") and len(segments) <= 8
    assert all(s not in ("", ".", "..") and s.isascii() for s in segments)
    assert "\\" not in path and "\x00" not in path
    assert check_bundle_path(path) == path


# -- raw tensors -----------------------------------------------------------------------------------------
shape_headers = (
    st.lists(st.integers(-2, 2**40) | st.integers(0, 2**70), min_size=0, max_size=10).map(
        lambda dims: ",".join(map(str, dims))
    )
    | st.lists(st.integers(0, 6), min_size=1, max_size=4).map(lambda dims: "x".join(map(str, dims)))
    | st.text(max_size=24)
)
dtype_headers = (
    st.none() | st.sampled_from([*raw.DTYPES, "FLOAT32", " int8 ", "complex64", "object"]) | st.text(max_size=8)
)


@FUZZ
@given(st.binary(max_size=512), shape_headers, dtype_headers)
def test_raw_tensor_bodies_decode_exactly_or_are_refused(body: bytes, shape: str, dtype: str | None) -> None:
    try:
        arr = raw.parse(body, shape, dtype)
    except InvalidInput as exc:
        renderable(exc)
        return
    assert arr.nbytes == len(body) and arr.ndim <= raw.MAX_DIMS
    assert arr.dtype == np.dtype(raw.DTYPES[(dtype or "float32").strip().lower()])


@FUZZ
@given(
    st.sampled_from(list(raw.DTYPES)),
    st.lists(st.integers(0, 5), min_size=1, max_size=4),
    st.integers(-3, 3),
)
def test_a_body_is_accepted_exactly_when_its_length_fits_the_shape(dtype: str, shape: list[int], extra: int) -> None:
    size = math.prod(shape) * np.dtype(raw.DTYPES[dtype]).itemsize
    body = bytes(max(0, size + extra))
    if len(body) == size:
        assert raw.parse(body, ",".join(map(str, shape)), dtype).shape == tuple(shape)
    else:
        with pytest.raises(InvalidInput, match="needs"):
            raw.parse(body, ",".join(map(str, shape)), dtype)


def test_a_huge_declared_shape_is_refused_before_any_allocation(peak_bytes: Callable[[], int]) -> None:
    with pytest.raises(InvalidInput, match="needs"):
        raw.parse(b"\0" * 8, "4294967295,4294967295,4294967295", "float64")
    assert peak_bytes() < 64 * 1024


# -- native JSON and V2 bodies, through the pipeline to the model and back to JSON -----------------------
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """A real ONNX model (x @ W, W of 4x3) behind a manifest that scales, normalizes and ranks."""
    folder = tmp_path_factory.mktemp("fuzz-model")
    weights = np.arange(12, dtype=np.float32).reshape(4, 3) - 5
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "fuzz",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weights, name="W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save_model(model, str(folder / "model.onnx"))
    manifest = Manifest.model_validate(
        {
            "format": "onnx",
            "entrypoint": "model.onnx",
            "signature": {"inputs": [{"name": "x", "shape": [-1, 4]}], "outputs": [{"name": "y", "shape": [-1, 3]}]},
            "preprocess": [{"scale": 1e30}, {"normalize": {"mean": [0, 1, 2, 3], "std": 0.5}}],
            "postprocess": [{"softmax": True}, {"top_k": 2}],
            "labels": ["a", "b", "c"],
        }
    )
    return Pipeline(manifest, onnx_format.load(folder, manifest))


def predict_and_render(pipeline: Pipeline, inputs: Any, *, max_batch: int = 8) -> Any:
    """prepare -> model -> native JSON, as the service runs them; returns the decoded answer."""
    arrays, single = pipeline.prepare(inputs, max_batch=max_batch)
    x = arrays["x"]
    assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 4 and 1 <= x.shape[0] <= max_batch
    assert np.isfinite(x).all()
    target = Target(model_id=1, model="m", version_id=1, version=1, manifest=pipeline.manifest)
    body = native.render(Prediction(target=target, pipeline=pipeline, outputs=pipeline.run(arrays), single=single))
    return orjson.loads(body)  # valid JSON, whatever the numbers did


rows = st.lists(st.floats(allow_nan=False, allow_infinity=False) | json_leaves, min_size=0, max_size=5)
native_inputs = (
    st.lists(rows, max_size=4)
    | rows
    | json_values
    | st.dictionaries(st.sampled_from(["x", "y", ""]), st.lists(rows, max_size=3), max_size=2)
)


@FUZZ
@given(
    native_inputs.map(lambda v: orjson.dumps({"inputs": v}, option=orjson.OPT_SERIALIZE_NUMPY))
    | edit_lists.map(lambda e: mutate(b'{"inputs": [[1, 2.5, -3, 4e10], [0, 0, 0, 1]]}', e))
    | st.binary(max_size=64)
)
def test_native_bodies_predict_or_are_refused(pipeline: Pipeline, body: bytes) -> None:
    try:
        answer = predict_and_render(pipeline, native.parse_body(body))
    except BadRequest as exc:
        renderable(exc)
        return
    assert {"outputs", "predictions"} <= set(answer)


def v2_body(inputs: list[Any], extra: dict[str, Any]) -> bytes:
    return orjson.dumps({"inputs": inputs, **extra})


v2_inputs = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["x", "y"]) | json_leaves,
        "shape": st.lists(st.integers(-1, 2**62) | json_leaves, max_size=9) | json_values,
        "datatype": st.sampled_from(list(v2.V2_TO_NUMPY)) | json_values,
        "data": st.lists(rows, max_size=4) | rows | json_values,
        "parameters": json_values,
    },
)
v2_extra = st.fixed_dictionaries(
    {},
    optional={"id": json_leaves, "outputs": st.lists(st.dictionaries(st.just("name"), json_leaves), max_size=3)},
)


@FUZZ
@given(
    st.builds(v2_body, st.lists(v2_inputs, max_size=3), v2_extra)
    | edit_lists.map(
        lambda e: mutate(b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1,2,3,4]}]}', e)
    )
    | st.binary(max_size=64)
)
def test_v2_bodies_decode_to_declared_arrays_or_are_refused(pipeline: Pipeline, body: bytes) -> None:
    try:
        arrays, request_id, *_ = v2.parse_infer(body)
    except InvalidInput as exc:
        renderable(exc)
        return
    assert request_id is None or isinstance(request_id, str)
    for arr in arrays.values():
        assert isinstance(arr, np.ndarray) and arr.ndim <= 8
    if set(arrays) == {"x"}:  # what the service does next with a single-input model
        try:
            predict_and_render(pipeline, arrays)
        except BadRequest as exc:
            renderable(exc)


# -- IDX files ---------------------------------------------------------------------------------------------
def idx_bytes(shape: list[int], payload: bytes, *, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


idx_files = (
    st.builds(
        lambda shape, extra: idx_bytes(shape, bytes(max(0, math.prod(shape) + extra))),
        st.lists(st.integers(0, 6), min_size=1, max_size=MAX_DIMS),
        st.sampled_from([0, 0, 0, -1, 1, 7]),
    )
    | st.builds(
        idx_bytes,
        st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=6),
        st.binary(max_size=64),
        code=st.integers(0, 255),
    )
    | st.builds(mutate, st.just(idx_bytes([2, 3], bytes(range(6)))), edit_lists)
    | st.binary(max_size=80)
)


def check_idx(data: bytes, arr: np.ndarray) -> None:
    ndim = data[3]
    assert arr.dtype == np.uint8 and arr.ndim == ndim
    assert list(arr.shape) == list(struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim]))
    assert arr.tobytes() == data[4 + 4 * ndim :]


@FUZZ
@given(idx_files)
def test_idx_bytes_parse_exactly_or_are_invalid_artifact(data: bytes) -> None:
    try:
        arr = parse_idx(data)
    except InvalidArtifact as exc:
        renderable(exc)
        return
    check_idx(data, arr)


@FUZZ
@given(idx_files, st.sampled_from(["plain", "gzip", "gzip, damaged"]), edit_lists)
def test_idx_files_plain_or_gzip_read_exactly_or_are_invalid_artifact(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, how: str, edits: list[tuple[int, int, int]]
) -> None:
    stored = data if how == "plain" else gzip.compress(data, compresslevel=1)
    if how == "gzip, damaged":
        stored = mutate(stored, edits)
    path = tmp_path_factory.getbasetemp() / "fuzz.idx"
    path.write_bytes(stored)
    try:
        arr = read_idx(path)
    except InvalidArtifact as exc:
        renderable(exc)
        return
    if how != "gzip, damaged" or stored[:2] != b"\x1f\x8b":
        check_idx(data if how != "gzip, damaged" else stored, arr)


def test_a_gzip_bomb_is_refused_after_reading_what_its_header_declares(
    tmp_path: Path, peak_bytes: Callable[[], int]
) -> None:
    path = tmp_path / "bomb-idx1-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:  # declares 4 bytes, holds 64 MiB
        f.write(idx_bytes([2, 2], b""))
        for _ in range(64):
            f.write(bytes(1 << 20))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(InvalidArtifact):
        read_idx(path)
    assert peak_bytes() < 4 << 20


# -- zip listings of uploaded model files ------------------------------------------------------------------
def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


member_names = st.sampled_from(
    ["m/archive_format", "m/models/x.json", "m/data.pkl", "m/code/x.py", "m/constants.pkl", "schema.json"]
) | st.text(min_size=1, max_size=20).filter(lambda n: n.split("\x00")[0].lstrip("/"))  # zipfile cannot write ""
TORCHSCRIPT_ZIP = zip_bytes({"m/code/__torch__.py": b"x", "m/constants.pkl": b"\x80\x02.", "m/data/0": b"\0" * 8})
zip_files = (
    st.builds(zip_bytes, st.dictionaries(member_names, st.binary(max_size=16), max_size=5))
    | st.builds(mutate, st.just(TORCHSCRIPT_ZIP), edit_lists)
    | st.binary(max_size=64).map(lambda b: b"PK\x03\x04" + b)
)


@FUZZ
@given(zip_files, st.sampled_from(["model.pt", "model.pt2", "model.keras", "model.skops", "model.zip", "model"]))
def test_zip_listings_give_a_format_or_refuse_the_file(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, filename: str
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.zip"
    path.write_bytes(data)
    names = zip_names(path)
    assert names is None or all(isinstance(n, str) for n in names)
    if names is not None:
        assert torch_zip_kind(names) in (None, "torch_export", "torchscript", "torch_save")
    try:
        found = detect(filename, path)
    except BadRequest as exc:  # UnsupportedFormat, UnsafeFormat
        renderable(exc)
        return
    assert found in ("torchscript", "torch_export", "sklearn", "keras")
    assert names is not None and torch_zip_kind(names) != "torch_save"


# -- model references --------------------------------------------------------------------------------------
name_parts = st.text(alphabet="abz09._-A/é\x00 ", max_size=70) | st.text(max_size=10)
version_parts = st.text(alphabet="0123456789³٣０-+ x", max_size=12) | st.integers(-5, 2**40).map(str)
references = (
    st.builds(lambda n, v: f"{n}:{v}", name_parts, version_parts)
    | st.builds(lambda n, a: f"{n}@{a}", name_parts, name_parts)
    | name_parts
    | st.text(max_size=210)
)


@FUZZ
@given(references)
@example("m:³")
def test_references_parse_to_valid_parts_or_are_refused(text: str) -> None:
    try:
        ref = parse_ref(text)
    except (InvalidName, InvalidReference) as exc:
        renderable(exc)
        return
    assert NAME_RE.fullmatch(ref.name) and ".." not in ref.name
    assert (ref.version is None) or (1 <= ref.version <= MAX_VERSION)
    assert ref.alias is None or NAME_RE.fullmatch(ref.alias)
    assert ref.version is None or ref.alias is None


def test_a_superscript_version_is_an_invalid_reference() -> None:
    with pytest.raises(InvalidReference):
        parse_ref("m:³")


def test_a_zip_of_an_unsupported_version_is_not_a_known_format(tmp_path: Path) -> None:
    """zipfile raises NotImplementedError (not BadZipFile) for a "version needed" above 6.3: found by the fuzzer."""
    data = bytearray(zip_bytes({"m/code/__torch__.py": b"x"}))
    central = data.rindex(b"PK\x01\x02")
    data[central + 6 : central + 8] = (64).to_bytes(2, "little")  # version needed to extract: 6.4
    path = tmp_path / "model.pt"
    path.write_bytes(bytes(data))
    assert zip_names(path) is None
