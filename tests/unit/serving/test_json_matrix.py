"""The simdjson read of a predict body: when it answers, it is exactly what orjson reads; otherwise the
body goes the general way, so its meaning and its errors do not change."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelport.errors import InvalidInput
from modelport.serving.json_matrix import JsonMatrix, read_matrix
from modelport.serving.pipeline import Pipeline
from modelport.serving.protocols import native
from modelport.store.bundle import Manifest, Signature, TensorSpec
from tests.unit.serving.test_pipeline import Linear, make

numbers = st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
leaves = numbers | st.none() | st.booleans() | st.text(max_size=4)
rows = st.lists(numbers, min_size=1, max_size=5)
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=5), max_leaves=20)


def is_rectangular_numbers(inputs: Any) -> bool:
    """A list of numbers, or a non-empty list of equally long non-empty lists of numbers (no bools)."""

    def number(v: Any) -> bool:
        return type(v) in (int, float)

    if not isinstance(inputs, list) or not inputs:
        return False
    if all(number(v) for v in inputs):
        return True
    if not all(isinstance(r, list) for r in inputs):
        return False
    width = len(inputs[0])
    return width > 0 and all(len(r) == width and all(number(v) for v in r) for r in inputs)


def mutate(body: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(body)
    for at, byte in edits:
        if data:
            data[at % len(data)] = byte
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(rows, min_size=1, max_size=4).map(lambda v: orjson.dumps({"inputs": v}))
    | rows.map(lambda v: orjson.dumps({"inputs": v}))
    | values.map(lambda v: orjson.dumps({"inputs": v}))
    | st.dictionaries(st.sampled_from(["inputs", "x", "inputs "]), values, max_size=3).map(orjson.dumps)
    | st.tuples(
        st.lists(rows, min_size=1, max_size=3).map(lambda v: orjson.dumps({"inputs": v})),
        st.lists(st.tuples(st.integers(0, 200), st.sampled_from(b'[],.-+0e9 "\x00\xef'))),
    ).map(lambda t: mutate(*t))
)
def test_an_answer_is_what_orjson_reads(body: bytes) -> None:
    matrix = read_matrix(body)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        assert matrix is None  # not JSON for orjson: never JSON here either
        return
    if matrix is None:
        return
    assert isinstance(parsed, dict) and list(parsed) == ["inputs"]
    assert is_rectangular_numbers(parsed["inputs"])
    want = np.array(parsed["inputs"], dtype=np.float64)
    assert matrix.values.dtype == np.float64 and matrix.values.shape == want.shape
    np.testing.assert_array_equal(matrix.values, want)
    assert matrix.parsed() == parsed["inputs"]


@pytest.mark.parametrize(
    "body",
    [
        b'\xef\xbb\xbf{"inputs": [[1, 2]]}',  # a byte-order mark: orjson refuses it, so must this path
        b'{"inputs": [[1, 2]], "inputs": [[3, 4]]}',  # orjson keeps the last, simdjson the first
        b'{"inputs": [[1, 2]], "x": 1}',
        b'{"inputs": [[1, 2], [3]]}',
        b'{"inputs": [[1, 2, 3], [4]]}',  # ragged with a total that fits 2 x 2
        b'{"inputs": [[1, [2]], [3, 4]]}',
        b'{"inputs": [[1, 2], 3, [4]]}',
        b'{"inputs": [[[1, 2]], [[3, 4]]]}',
        b'{"inputs": [[1, true]]}',
        b'{"inputs": [[1, null]]}',
        b'{"inputs": [[1, "2"]]}',
        b'{"inputs": [[1e400]]}',
        b'{"inputs": []}',
        b'{"inputs": [[]]}',
        b'{"inputs": 5}',
        b'{"inputs": {"x": [1]}}',
        b"[[1, 2]]",
        b'{"inputs": [[1, 2]]',
        b'{"inputs": [[1, 2]]}\x00',
        b"",
    ],
)
def test_anything_but_a_rectangle_of_numbers_goes_the_general_way(body: bytes) -> None:
    assert read_matrix(body) is None


def test_a_batch_and_one_example() -> None:
    batch = read_matrix(b'{"inputs": [[1, 2.5], [-3, 4e10]]}')
    assert batch is not None and batch.values.shape == (2, 2)
    np.testing.assert_array_equal(batch.values, [[1, 2.5], [-3, 4e10]])
    one = read_matrix(b' {"inputs" : [0.5, 1, 2] }\n')
    assert one is not None and one.values.shape == (3,)


def test_a_pooled_parsers_next_body_leaves_the_last_matrix_intact() -> None:
    first = read_matrix(b'{"inputs": [[1, 2], [3, 4]]}')
    assert read_matrix(b"not json") is None
    second = read_matrix(b'{"inputs": [[5, 6, 7]]}')
    big = read_matrix(orjson.dumps({"inputs": [[0.5] * 1000] * 40}))  # past the pooled size: its own parser
    assert first is not None and second is not None and big is not None
    np.testing.assert_array_equal(first.values, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(second.values, [[5, 6, 7]])
    assert big.values.shape == (40, 1000)


def test_the_pipeline_gives_the_same_arrays_from_a_matrix_and_from_lists() -> None:
    body = b'{"inputs": [[0.1, 18446744073709551615, -3.4e38, 1e-45], [1, 2, 3, 4]]}'
    fast = make([], [])  # (N, 4) float32, no preprocessing: the fast lane
    got, single = fast.prepare(native.parse_body(body), max_batch=10)
    want, _ = make([], [], in_shape=[-1, -1]).prepare(orjson.loads(body)["inputs"], max_batch=10)
    assert not single and got["x"].dtype == np.float32
    np.testing.assert_array_equal(got["x"], want["x"])
    got, single = fast.prepare(native.parse_body(b'{"inputs": [1, 2, 3, 4]}'), max_batch=10)
    assert single and got["x"].shape == (1, 4)


@pytest.mark.parametrize(
    "pre",
    [[{"scale": 0.5}], [{"normalize": {"mean": [0, 1, 2, 3], "std": 2.0}}], [{"reshape": [2, 2]}]],
)
def test_a_model_with_preprocessing_gets_the_same_arrays_from_a_matrix(pre: list[dict[str, object]]) -> None:
    in_shape = [-1, 2, 2] if "reshape" in pre[0] else None
    pipeline = make(pre, [], in_shape=in_shape)
    for body in (b'{"inputs": [[0.1, 2, -3.5, 1e-45], [1, 2, 3, 4]]}', b'{"inputs": [0.1, 2, -3.5, 4]}'):
        matrix = native.parse_body(body)
        assert isinstance(matrix, JsonMatrix)
        got, got_single = pipeline.prepare(matrix, max_batch=10)
        want, want_single = pipeline.prepare(orjson.loads(body)["inputs"], max_batch=10)
        assert got_single == want_single
        np.testing.assert_array_equal(got["x"], want["x"])
        assert got["x"].dtype == want["x"].dtype


def test_values_past_the_inputs_range_get_the_general_paths_message() -> None:
    with pytest.raises(InvalidInput, match="NaN or Infinity"):
        make([], []).prepare(native.parse_body(b'{"inputs": [[1e39, 0, 0, 0]]}'), max_batch=10)
    with pytest.raises(InvalidInput, match="NaN or Infinity"):  # squares past float64: no numpy warning either
        make([], []).prepare(native.parse_body(b'{"inputs": [[1e300, 0, 0, 0]]}'), max_batch=10)


def test_a_model_fed_integers_reads_them_as_integers() -> None:
    """An int64 input gets the body as orjson reads it: 2**60 + 1 survives (as float64 it would not)."""
    w = np.eye(2, dtype=np.int64)
    predictor = Linear(w, in_shape=[-1, 2])
    predictor.signature = Signature(
        inputs=[TensorSpec(name="x", shape=[-1, 2], dtype="int64")], outputs=[TensorSpec(name="y", shape=[-1, 2])]
    )
    manifest = Manifest.model_validate(
        {"format": "onnx", "entrypoint": "m.onnx", "signature": predictor.signature.model_dump()}
    )
    pipeline = Pipeline(manifest, predictor)  # type: ignore[arg-type]
    inputs = native.parse_body(orjson.dumps({"inputs": [[2**60 + 1, 3]]}))
    assert isinstance(inputs, JsonMatrix)
    arrays, _ = pipeline.prepare(inputs, max_batch=10)
    assert arrays["x"].dtype == np.int64 and int(arrays["x"][0, 0]) == 2**60 + 1
