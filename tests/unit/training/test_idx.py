"""The IDX parser: real MNIST reads back; anything malformed is refused, never misread (fuzzed)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelport.errors import InvalidArtifact
from modelport.training.data.idx import load_mnist, parse_idx, read_idx
from tests.conftest import MNIST


def test_real_mnist_loads() -> None:
    x, y = load_mnist(MNIST, "test")
    assert x.shape == (10_000, 28, 28) and y.shape == (10_000,)
    assert x.dtype == np.uint8 and set(np.unique(y)) == set(range(10))


def test_round_trip_plain_and_gzip(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 3, 4) + arr.tobytes()
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00\x08",
        b"\x01\x00\x08\x01" + b"\0" * 8,
        b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00",
        b"\x00\x00\x08\x01\x00\x00\x00\x05abc",
        b"\x00\x00\x08\x00",
        b"\x00\x00\x08\x09" + b"\0" * 40,
        b"\x00\x00\x08\x02\xff\xff\xff\xff\xff\xff\xff\xff",
    ],
)
def test_malformed_files_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidArtifact):
        parse_idx(data)


@given(st.binary(max_size=64))
def test_parse_idx_fuzz(data: bytes) -> None:
    try:
        arr = parse_idx(data)
    except InvalidArtifact:
        return
    assert arr.size == len(data) - 4 - 4 * data[3]
