"""The simdjson read of a V2 infer request (``json_matrix.read_v2``): when it answers, it is exactly what
the orjson path of ``protocols/v2.py`` reads; anything else goes that way, errors and all."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelport.errors import InvalidInput
from modelport.serving.json_matrix import read_v2
from modelport.serving.protocols import v2
from tests.unit.serving.test_json_matrix import mutate

numbers = st.integers(min_value=-(2**64), max_value=2**64) | st.floats(allow_nan=False, allow_infinity=False)
leaves = numbers | st.none() | st.booleans() | st.text(max_size=3)
nested = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
names = st.text(alphabet='ab[]\\"é\u2028', max_size=4)


@st.composite
def v2_inputs(draw: st.DrawFn) -> dict[str, Any]:
    plain = draw(st.integers(0, 3)) > 0  # mostly the form the fast read takes; the rest anything
    data = draw(st.lists(numbers, max_size=6) if plain else nested)
    size = len(data) if isinstance(data, list) else 1
    shape = draw(
        st.sampled_from([[size], [1, size], [size, 1]])
        if plain
        else st.sampled_from([[size + 1], [[size]], [-1], ["2"]]) | st.lists(st.integers(0, 3), max_size=3)
    )
    item: dict[str, Any] = {
        "name": draw(names),
        "shape": shape,
        "datatype": draw(st.sampled_from(["FP32", "FP64", "FP16"] if plain else ["INT64", "BOOL", "fp32", "FP32"])),
        "data": data,
    }
    if draw(st.booleans()) and draw(st.booleans()):
        item[draw(st.sampled_from(["parameters", "extra"]))] = {}
    if draw(st.booleans()) and draw(st.booleans()):
        del item[draw(st.sampled_from(sorted(item)))]
    return item


@st.composite
def v2_bodies(draw: st.DrawFn) -> bytes:
    body: dict[str, Any] = {"inputs": draw(st.lists(v2_inputs(), max_size=3))}
    if draw(st.booleans()):
        body["id"] = draw(names | st.integers() | st.none())
    if draw(st.booleans()):
        body["outputs"] = draw(
            st.lists(st.fixed_dictionaries({"name": names}), max_size=2) | st.just([{"x": 1}]) | st.just("y")
        )
    if draw(st.booleans()) and draw(st.booleans()):
        body["parameters"] = {"a": [1]}
    return json.dumps(body, ensure_ascii=draw(st.booleans())).encode()  # orjson stops at 64-bit integers


def general(body: bytes) -> tuple[Any, ...] | str:
    try:
        return v2._parse_general(body)
    except InvalidInput as exc:
        return exc.message


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    v2_bodies()
    | st.tuples(v2_bodies(), st.lists(st.tuples(st.integers(0, 300), st.sampled_from(b'[]{},:.-+0e9 "\\\x00')))).map(
        lambda t: mutate(*t)
    )
)
def test_an_answer_is_what_the_orjson_path_reads(body: bytes) -> None:
    fast = read_v2(body)
    if fast is None:
        return
    want = general(body)
    assert not isinstance(want, str), f"the general path refuses it ({want}); the fast read took it"
    arrays, request_id, wanted = fast
    assert (request_id, wanted, False) == want[1:]  # (a body the fast read takes never asks for binary data)
    assert list(arrays) == list(want[0])
    for name, arr in arrays.items():
        expected = want[0][name]
        assert arr.dtype == expected.dtype and arr.shape == expected.shape
        np.testing.assert_array_equal(arr, expected)


def test_the_common_request_takes_the_fast_read() -> None:
    pixels = np.random.default_rng(0).random(784).tolist()
    body = orjson.dumps(
        {"id": "r[1]", "inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": pixels}]}
    )
    fast = read_v2(body)
    assert fast is not None
    arrays, request_id, wanted = fast
    assert request_id == "r[1]" and wanted is None
    np.testing.assert_array_equal(arrays["input"], np.asarray(pixels, dtype=np.float32).reshape(1, 784))
    assert arrays["input"].flags.writeable


def test_integers_past_float64s_precision_round_as_the_general_path_rounds_them() -> None:
    # 2**53 + 1; 2**60 + 2**36 + 1 (rounds twice on the way to float32); the largest uint64; int64's -max
    data = b"[9007199254740993, 1152921573326323713, 18446744073709551615, -9223372036854775807]"
    body = b'{"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": ' + data + b"}]}"
    fast = read_v2(body)
    assert fast is not None
    want = general(body)
    assert not isinstance(want, str)
    np.testing.assert_array_equal(fast[0]["x"], want[0]["x"])


@pytest.mark.parametrize(
    "body",
    [
        # nested data whose extra brackets a name's brackets would hide, were escapes allowed
        b'{"inputs": [{"name": "\\u005b", "shape": [2], "datatype": "FP32", "data": [[1], [2]]}]}',
        # ragged nesting with the right number of values: the general path refuses it
        b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, [2, 3], []]}]}',
        b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}], "inputs": []}',
        b'{"inputs": [{"name": "x", "name": "y", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}',
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [9007199254740993]}]}',
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [true]}]}',
        b'\xef\xbb\xbf{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}',
    ],
)
def test_anything_else_goes_the_general_way(body: bytes) -> None:
    assert read_v2(body) is None
