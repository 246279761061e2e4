"""The manifest and bundle path rules, including a fuzz test of the manifest parser."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelport.errors import InvalidManifest
from modelport.store.bundle import check_bundle_path, parse_manifest_input


@pytest.mark.parametrize("good", ["model.onnx", "weights/part-1.bin", "a_b.c-d"])
def test_good_paths(good: str) -> None:
    assert check_bundle_path(good) == good


@pytest.mark.parametrize(
    "bad", ["", "../x", "a/../../x", "/abs", "a\\b", "./a", "a//b", ".hidden", "a/./b", "x\x00", "a" * 300, "é/../x"]
)
def test_bad_paths(bad: str) -> None:
    with pytest.raises(InvalidManifest):
        check_bundle_path(bad)


def test_manifest_input_validation_messages() -> None:
    with pytest.raises(InvalidManifest, match=r"preprocess\.0"):
        parse_manifest_input(b'{"preprocess": [{"scale": 1, "shift": 1}]}')
    with pytest.raises(InvalidManifest, match="not valid JSON"):
        parse_manifest_input(b"{")
    with pytest.raises(InvalidManifest, match="larger than"):
        parse_manifest_input(b" " * (1024 * 1024 + 1))
    with pytest.raises(InvalidManifest, match="JSON object"):
        parse_manifest_input(b"[1]")
    given_ = parse_manifest_input(b'{"labels": ["a"], "postprocess": [{"argmax": true}]}')
    assert given_.labels == ["a"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200)
@given(st.binary(max_size=200) | json_values.map(lambda v: __import__("orjson").dumps(v)))
def test_manifest_parser_fuzz(data: bytes) -> None:
    with contextlib.suppress(InvalidManifest):
        parse_manifest_input(data)
