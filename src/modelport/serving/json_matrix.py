"""The common predict body, ``{"inputs": [[numbers], ...]}``, read straight into an array.

orjson turns a JSON body into Python objects: one float object per number, which the pipeline then
copies into an array and the collector frees (RSW-1's batch of 32 images is 25,088 of them). simdjson
parses the same text into a tape and exports a numeric array as one buffer of doubles, with no object
per number: 9 µs against 22 µs for one 784-value image, 290 µs against ~650 µs for 32 of them.

It is used only where its answer is the general path's answer: a body that is exactly one object with
one ``inputs`` key whose value is a rectangular array of numbers, one example (1-D) or a batch (2-D).
Anything else (another key, a duplicate key, a string, null or boolean, a ragged or deeper array, a
number past float64, text that is not JSON) gives None here and goes through orjson as before, so
its errors and its meaning are unchanged. The numbers become float64 exactly as orjson reads them
(correctly rounded); a model whose input is not a float reads the body again with orjson, so an
integer stays an integer (``JsonMatrix.parsed``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import orjson
import simdjson

KEY = "inputs"


class JsonMatrix(NamedTuple):
    """A predict body whose inputs are a rectangular array of numbers: as float64, and the body."""

    values: np.ndarray
    """(N, width) for a batch, (width,) for one example."""
    body: bytes

    def parsed(self) -> Any:
        """The inputs as orjson reads them (for a model whose input is not a float, where 1 and 1.0 differ)."""
        return orjson.loads(self.body)[KEY]


POOLED_BODY = 256 * 1024
"""Parsers that read bodies up to this size go back to the pool (a parser keeps buffers of ~13 bytes
per byte of the largest body it read: 3.3 MB at most); larger bodies get a parser of their own."""
_pool: list[simdjson.Parser] = []
"""Idle parsers. Reusing one keeps its buffers allocated and warm in the cache: a fresh parser per body
cost ~26 µs of a request in the server against ~9 µs in a loop. ``read_matrix`` never waits, so the
event loop needs one; ``list.pop`` and ``append`` are atomic, so threads may share the pool."""


def read_matrix(body: bytes) -> JsonMatrix | None:
    """The body's inputs as a JsonMatrix, or None to read it the general way (orjson)."""
    if body.startswith(b"\xef\xbb\xbf"):
        return None  # simdjson skips a byte-order mark, which orjson (and JSON) refuses
    try:
        parser = _pool.pop()
    except IndexError:
        parser = simdjson.Parser()
    matrix = _read(parser, body)  # its document is gone when it returns: the parser is free again
    if len(body) <= POOLED_BODY:
        _pool.append(parser)
    return matrix


def _read(parser: simdjson.Parser, body: bytes) -> JsonMatrix | None:
    try:
        doc = parser.parse(body)
        if type(doc) is not simdjson.Object or len(doc) != 1:
            return None
        inputs = doc.get(KEY)
        if type(inputs) is not simdjson.Array:
            return None
        n = len(inputs)
        if n == 0:
            return None
        values = np.frombuffer(inputs.as_buffer(of_type="d"), dtype=np.float64)  # flattens every level
    except (ValueError, TypeError, RuntimeError):  # not JSON, or not only numbers (simdjson says which)
        return None
    arrays = body.count(b"[")  # no string can hold one: the only key is "inputs", the values are numbers
    if arrays == 1:  # one example: a flat list of numbers
        return JsonMatrix(values, body)
    width = _width(inputs, n) if arrays == n + 1 else None
    if width is None or values.size != n * width:
        return None
    return JsonMatrix(values.reshape(n, width), body)


def _width(inputs: simdjson.Array, n: int) -> int | None:
    """The common length of the ``n`` rows of ``inputs`` when every one is a non-empty array (with the
    n + 1 arrays of the body, none nests further), else None."""
    first = inputs[0]
    if type(first) is not simdjson.Array:
        return None
    width = len(first)
    for i in range(1, n):
        row = inputs[i]
        if type(row) is not simdjson.Array or len(row) != width:
            return None
    return width or None
