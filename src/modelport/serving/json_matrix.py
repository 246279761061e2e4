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

import math
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

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


_T = TypeVar("_T")


def _pooled(body: bytes, read: Callable[[simdjson.Parser, bytes], _T | None]) -> _T | None:
    """``read(parser, body)`` with a parser from the pool, or None to read the body the general way:
    a byte-order mark (simdjson skips it; orjson, and JSON, refuse it), text that is not JSON, or not
    the form ``read`` takes (simdjson's errors, or a missing key)."""
    if body.startswith(b"\xef\xbb\xbf"):
        return None
    try:
        parser = _pool.pop()
    except IndexError:
        parser = simdjson.Parser()
    try:
        result = read(parser, body)
    except (ValueError, TypeError, RuntimeError, KeyError, IndexError):
        result = None  # the error, and with it the document it held, is gone after this block
    # its document is gone too once ``read`` returned: the parser is free again (an error not caught
    # above leaves it out of the pool, in case its traceback still holds the document)
    if len(body) <= POOLED_BODY:
        _pool.append(parser)
    return result


def read_matrix(body: bytes) -> JsonMatrix | None:
    """The body's inputs as a JsonMatrix, or None to read it the general way (orjson)."""
    return _pooled(body, _read)


def _read(parser: simdjson.Parser, body: bytes) -> JsonMatrix | None:
    doc = parser.parse(body)
    if type(doc) is not simdjson.Object or len(doc) != 1:
        return None
    inputs = doc.get(KEY)
    if type(inputs) is not simdjson.Array:
        return None
    n = len(inputs)
    if n == 0:
        return None
    # flattens every level; raises (simdjson says why) for anything but numbers
    values = np.frombuffer(inputs.as_buffer(of_type="d"), dtype=np.float64)
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


V2_FLOATS: dict[str, type[np.floating[Any]]] = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}
"""The datatypes read here. The general path's ``np.asarray(list, dtype)`` turns a Python int into a
double first too (checked against 400,000 integers up to 2**64), so float64 then the datatype is its
answer, integers past 2**53 included."""
V2_TOP = frozenset({"id", "inputs", "outputs"})
V2_INPUT = frozenset({"name", "shape", "datatype", "data"})

V2Request = tuple[dict[str, np.ndarray], str | None, list[str] | None]


def read_v2(body: bytes) -> V2Request | None:
    """A V2 infer request whose inputs are float tensors with flat ``data``, read with simdjson: the
    named arrays, the request id and the wanted outputs, exactly as ``protocols/v2.py`` reads them
    with orjson; None for anything else (which goes that way).

    Narrower than the V2 grammar on purpose, so that no answer can differ: no backslash (so no escape
    can hide a bracket or a lone surrogate), top-level keys among ``id``/``inputs``/``outputs``, each
    input exactly ``name``/``shape``/``datatype``/``data`` with a float datatype, no duplicate key,
    ``data`` one flat array of numbers (checked by counting the body's brackets against the ones its
    strings and shapes account for)."""
    if b"\\" in body:
        return None
    return _pooled(body, _read_v2)


def _read_v2(parser: simdjson.Parser, body: bytes) -> V2Request | None:
    doc = parser.parse(body)
    if type(doc) is not simdjson.Object:
        return None
    # the keys as a list: simdjson's ``get`` and ``in`` cost ~5 us for a missing key (an exception inside)
    keys = list(doc.keys())
    if len(set(keys)) != len(keys) or not V2_TOP.issuperset(keys):
        return None  # another key, or one twice (orjson keeps the last, simdjson finds the first)
    inputs = doc["inputs"]  # (none: KeyError)
    if type(inputs) is not simdjson.Array or len(inputs) == 0:
        return None
    request_id = doc["id"] if "id" in keys else None
    wanted = _outputs(doc["outputs"]) if "outputs" in keys else None
    if ("outputs" in keys and wanted is None) or (request_id is not None and type(request_id) is not str):
        return None
    brackets = 1 + ("outputs" in keys) + _brackets(request_id) + sum(map(_brackets, wanted or ()))
    arrays: dict[str, np.ndarray] = {}
    for item in inputs:
        read = _v2_input(item)
        if read is None:
            return None
        name, arrays[name], strings = read
        brackets += 2 + strings  # its shape, its data, and any in its strings
    if body.count(b"[") != brackets:  # a bracket nobody accounted for: data nests, or a shape does
        return None
    return arrays, request_id, wanted


def _v2_input(item: Any) -> tuple[str, np.ndarray, int] | None:
    """One input: its name, its array, and the brackets its strings hold; None if it is not the plain
    float form."""
    if type(item) is not simdjson.Object or len(item) != len(V2_INPUT) or set(item.keys()) != V2_INPUT:
        return None  # exactly the four keys, each once
    name, dtype, shape, data = item["name"], item["datatype"], item["shape"], item["data"]
    if type(name) is not str or type(dtype) is not str or dtype not in V2_FLOATS:
        return None
    if type(shape) is not simdjson.Array or type(data) is not simdjson.Array:
        return None
    dims = [d for d in shape.as_list() if type(d) is int and d >= 0]
    if len(dims) != len(shape) or len(dims) > 8:
        return None
    values = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64)
    if values.size != math.prod(dims):
        return None
    with np.errstate(over="ignore"):  # as the general path: 1e300 as FP32 is Infinity, refused later
        array = values.astype(V2_FLOATS[dtype]).reshape(dims)
    return name, array, _brackets(name) + _brackets(dtype)


def _outputs(outputs: Any) -> list[str] | None:
    """The wanted output names of ``[{"name": ...}, ...]``, or None when it has any other form."""
    if type(outputs) is not simdjson.Array:
        return None
    names = []
    for o in outputs:
        if type(o) is not simdjson.Object or list(o.keys()) != ["name"] or type(o["name"]) is not str:
            return None
        names.append(o["name"])
    return names


def _brackets(text: str | None) -> int:
    return text.count("[") if text is not None else 0
