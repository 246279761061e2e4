"""Hostile input over the real app: every limit answers with the right 4xx, fast, without keeping memory.

Already covered elsewhere, and not repeated here: a 100,000-deep body on predict is a 400, a streamed
body past the limit a 413, a non-JSON media type a 415 (``tests/integration/test_predict_api.py::
test_malformed_and_oversized_bodies``); ``NaN`` literals and 1e300 past float32 are refused
(``test_nan_is_refused``); a raw body one example short of its shape is a 400 (``tests/integration/
test_serving_api.py::test_raw_tensor_errors``). Here: depth and width on every kind of route, timed;
a 10 GB Content-Length refused before one byte is read; declared tensor shapes that would allocate
terabytes; NaN/Infinity refused unless the signature allows them; a model that answers NaN (valid JSON:
NaN and Infinity are written as null); the batch, output and upload limits; RSS across a barrage.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import math
import os
import time
import tracemalloc
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save_model

from modelport.api.app import create_app
from modelport.config import Settings
from tests.conftest import ADMIN_KEY, error_of, upload

JSON = {"Content-Type": "application/json"}
RAW = {"Content-Type": "application/octet-stream"}
DEEP = 100_000
BIG_COLUMNS = 16 * 1024 * 1024 + 1
"""One example of the ``big`` model answers this many float32s: 4 bytes past the 64 MiB default limit."""


@dataclass(frozen=True)
class Models:
    ident: Path  # y = x * 1, x of [N, 4]
    log: Path  # y = log(x): NaN for x < 0, -Infinity for 0
    big: Path  # [N, 1] -> [N, BIG_COLUMNS]
    heavy: Path  # y = x @ W with W of 64 x 512 (128 KiB of weights)


def _save(folder: Path, name: str, nodes: list[Any], x: Any, y: Any, inits: list[Any]) -> Path:
    model = helper.make_model(
        helper.make_graph(nodes, name, [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    path = folder / f"{name}.onnx"
    save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    folder = tmp_path_factory.mktemp("hostile-models")

    def io(name: str, *dims: int | str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))

    one = numpy_helper.from_array(np.ones((1, 4), dtype=np.float32), name="one")
    shape = numpy_helper.from_array(np.array([1, BIG_COLUMNS], dtype=np.int64), name="shape")
    weights = numpy_helper.from_array(np.ones((64, 512), dtype=np.float32), name="W")
    return Models(
        ident=_save(
            folder, "ident", [helper.make_node("Mul", ["x", "one"], ["y"])], io("x", "N", 4), io("y", "N", 4), [one]
        ),
        log=_save(folder, "log", [helper.make_node("Log", ["x"], ["y"])], io("x", "N", 4), io("y", "N", 4), []),
        big=_save(
            folder,
            "big",
            [helper.make_node("Expand", ["x", "shape"], ["y"])],
            io("x", "N", 1),
            io("y", "N", BIG_COLUMNS),
            [shape],
        ),
        heavy=_save(
            folder,
            "heavy",
            [helper.make_node("MatMul", ["x", "W"], ["y"])],
            io("x", "N", 64),
            io("y", "N", 512),
            [weights],
        ),
    )


NAN_OK: dict[str, object] = {
    "signature": {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4], "allow_nan": True}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 4]}],
    }
}


@pytest.fixture
async def served(client: httpx.AsyncClient, models: Models) -> Models:
    for name, path, manifest in [
        ("ident", models.ident, None),
        ("nanok", models.ident, NAN_OK),
        ("log", models.log, None),
    ]:
        r = await upload(client, name, path, manifest)
        assert r.status_code == 201, r.text
    return models


@asynccontextmanager
async def app_with(settings: Settings, **changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A second real app over the same home, with some limits changed."""
    app = create_app(settings.model_copy(update=changes))
    try:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://modelport.test", headers=headers) as c:
            yield c
    finally:
        app.state.ctx.runtime.close()
        app.state.ctx.db.dispose()


def strict_json(text: str) -> Any:
    """Parse as a strict JSON reader would: NaN, Infinity and -Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"answer is not valid JSON: it holds {constant}")

    return json.loads(text, parse_constant=refuse)


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text[:300]
    strict_json(r.text)  # no NaN or Infinity constants anywhere in it
    error = error_of(r)
    assert code is None or error["code"] == code, error
    return error


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- depth and width ---------------------------------------------------------------------------------------
def deep_array(depth: int = DEEP) -> bytes:
    return b"[" * depth + b"]" * depth


def deep_object(depth: int = DEEP) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def wide_object(keys: int) -> bytes:
    return b"{" + b",".join(b'"k%d":0' % i for i in range(keys)) + b"}"


def deep_bodies() -> list[tuple[str, str, bytes]]:
    v2 = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": %s}]}'
    return [
        ("POST", "/v1/models/ident/predict", b'{"inputs": ' + deep_object() + b"}"),
        ("POST", "/v1/models/ident/predict", b'{"inputs": ' + deep_array(900) + b"}"),  # under orjson's 1024
        ("POST", "/v2/models/ident/infer", v2 % deep_array()),
        ("POST", "/v2/models/ident/infer", v2 % deep_array(900)),
        ("POST", "/v1/models", deep_array()),
        ("POST", "/v1/models", b'{"name": "deep", "description": ' + deep_object() + b"}"),
        ("POST", "/v1/jobs", b'{"kind": "train", "spec": ' + deep_object() + b"}"),
        ("PUT", "/v1/models/ident/aliases/staging", deep_array()),
        ("POST", "/v1/keys", deep_object(990)),  # past the stdlib parser's recursion limit
    ]


async def test_deep_json_is_a_fast_400_on_every_kind_of_route(client: httpx.AsyncClient, served: Models) -> None:
    for method, path, body in deep_bodies():
        started = time.perf_counter()
        r = await client.request(method, path, content=body, headers=JSON)
        elapsed = time.perf_counter() - started
        assert r.status_code in (400, 422), (path, r.text[:200])  # 422: FastAPI's schema, depth allowed
        assert_error(r, r.status_code)
        assert elapsed < 1.0, (path, elapsed)


async def test_wide_json_is_refused_fast(client: httpx.AsyncClient, served: Models, settings: Settings) -> None:
    wide = wide_object(1_000_000)  # 12 MB: past every JSON route's limit, under predict's
    assert settings.max_json_bytes < len(wide) < settings.max_predict_bytes
    started = time.perf_counter()
    assert_error(await client.post("/v1/models", content=wide, headers=JSON), 413, "payload_too_large")
    assert time.perf_counter() - started < 1.0
    started = time.perf_counter()
    error = assert_error(await client.post("/v1/models/ident/predict", content=b'{"inputs": ' + wide + b"}"), 400)
    assert error["code"] == "invalid_input" and len(error["details"]["unexpected"]) <= 10
    assert time.perf_counter() - started < 5.0  # parsing 12 MB of keys, on a shared CI core
    flat = b'{"inputs": [' + b",".join([b"0"] * 1_000_000) + b"]}"  # one example of 1M values, not 4
    assert_error(await client.post("/v1/models/ident/predict", content=flat, headers=JSON), 400, "invalid_input")


# -- declared sizes ----------------------------------------------------------------------------------------
async def call_asgi(app: object, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bool]:
    """One request straight through ASGI; returns (status, whether the app ever asked for the body)."""
    read = False
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        read = True
        return {"type": "http.request", "body": b"{}", "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"modelport.test"), (b"authorization", f"Bearer {ADMIN_KEY}".encode()), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("modelport.test", 80),
    }
    await app(scope, receive, send)  # type: ignore[operator]
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), read


@pytest.mark.parametrize(
    ("method", "path", "media"),
    [
        ("POST", "/v1/models/ident/predict", b"application/json"),
        ("POST", "/v1/models/ident/predict", b"application/octet-stream"),
        ("POST", "/v2/models/ident/infer", b"application/json"),
        ("POST", "/v1/models", b"application/json"),
        ("POST", "/v1/models/ident/versions", b"multipart/form-data; boundary=x"),
        ("POST", "/v1/datasets", b"multipart/form-data; boundary=x"),
    ],
)
async def test_a_10_gb_content_length_is_a_413_before_the_body_is_read(
    app: object, method: str, path: str, media: bytes
) -> None:
    headers = [(b"content-length", b"10000000000"), (b"content-type", media)]
    status, read = await call_asgi(app, method, path, headers)
    assert status == 413 and not read


async def test_declared_tensor_shapes_never_allocate(client: httpx.AsyncClient, served: Models) -> None:
    tracemalloc.start()
    try:
        for shape in ["100000,100000,100000", "4294967296,4294967296", "-1,4", "1,1,1,1,1,1,1,1,1", "1e9,4", ""]:
            r = await client.post(
                "/v1/models/ident/predict", content=b"\0" * 16, headers={**RAW, "X-Tensor-Shape": shape}
            )
            assert_error(r, 400, "invalid_input")
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()


# -- NaN and Infinity --------------------------------------------------------------------------------------
def raw_nan() -> bytes:
    return np.array([[np.nan, np.inf, -np.inf, 1.0]], dtype="<f4").tobytes()


def v2_body(values: str) -> bytes:
    return b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [%s]}]}' % values.encode()


async def test_nan_and_infinity_are_refused_unless_the_signature_allows_them(
    client: httpx.AsyncClient, served: Models
) -> None:
    past_float32 = b'{"inputs": [[1e39, -1e39, 0, 1]]}'  # finite as JSON, Infinity as float32
    for name, ok in [("ident", False), ("nanok", True)]:
        answers = [
            await client.post(f"/v1/models/{name}/predict", content=past_float32, headers=JSON),
            await client.post(
                f"/v1/models/{name}/predict", content=raw_nan(), headers={**RAW, "X-Tensor-Shape": "1,4"}
            ),
            await client.post(f"/v2/models/{name}/infer", content=v2_body("1e39, 2, 3, 4"), headers=JSON),
        ]
        for r in answers:
            if not ok:
                assert "NaN or Infinity" in assert_error(r, 400, "invalid_input")["message"]
                continue
            assert r.status_code == 200, r.text
            answer = strict_json(r.text)
            values = answer["outputs"][0]["data"] if "model_name" in answer else answer["outputs"]
            assert None in np.asarray(values, dtype=object).ravel().tolist()  # NaN/Infinity written as null


async def test_a_model_that_answers_nan_still_answers_valid_json(client: httpx.AsyncClient, served: Models) -> None:
    r = await client.post("/v1/models/log/predict", json={"inputs": [[-1.0, 0.0, 1.0, math.e]]})
    assert r.status_code == 200, r.text
    assert strict_json(r.text)["outputs"] == [[None, None, 0.0, pytest.approx(1.0)]]
    r = await client.post("/v2/models/log/infer", content=v2_body("-1, 0, 1, 2.718281828"), headers=JSON)
    assert r.status_code == 200, r.text
    assert strict_json(r.text)["outputs"][0]["data"][:3] == [None, None, 0.0]
    x = np.array([[-1, 0, 1, 1]], dtype="<f4").tobytes()
    r = await client.post(
        "/v1/models/log/predict",
        content=x,
        headers={**RAW, "X-Tensor-Shape": "1,4", "Accept": "application/octet-stream"},
    )
    assert r.status_code == 200
    y = np.frombuffer(r.content, dtype="<f4")  # raw answers keep IEEE values as they are
    assert np.isnan(y[0]) and y[1] == -np.inf and y[2] == 0.0


# -- batch, output and upload limits -----------------------------------------------------------------------
async def test_a_batch_over_max_batch_is_refused_in_every_encoding(settings: Settings, models: Models) -> None:
    async with app_with(settings, max_batch=8) as c:
        assert (await upload(c, "ident", models.ident)).status_code == 201
        nine = np.ones((9, 4), dtype="<f4")
        answers = [
            await c.post("/v1/models/ident/predict", json={"inputs": nine.tolist()}),
            await c.post("/v1/models/ident/predict", content=nine.tobytes(), headers={**RAW, "X-Tensor-Shape": "9,4"}),
            await c.post("/v2/models/ident/infer", content=v2_body(",".join(["1"] * 36)).replace(b"[1, 4]", b"[9, 4]")),
        ]
        for r in answers:
            assert "over the limit of 8" in assert_error(r, 400, "invalid_input")["message"]
        assert (await c.post("/v1/models/ident/predict", json={"inputs": nine[:8].tolist()})).status_code == 200


async def test_an_output_past_the_limit_is_a_413_before_it_is_encoded(
    client: httpx.AsyncClient, models: Models
) -> None:
    """The default ``max_output_bytes`` (64 MiB); the routes pass the configured value to the codecs."""
    assert (await upload(client, "big", models.big)).status_code == 201
    answers = [
        await client.post("/v1/models/big/predict", json={"inputs": [[1.0]]}),
        await client.post(
            "/v1/models/big/predict",
            content=np.ones((1, 1), "<f4").tobytes(),
            headers={**RAW, "X-Tensor-Shape": "1,1", "Accept": "application/octet-stream"},
        ),
        await client.post(
            "/v2/models/big/infer",
            content=b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}',
        ),
    ]
    for r in answers:
        message = assert_error(r, 413, "payload_too_large")["message"]
        assert message == f"the model's output is larger than the limit of {64 * 1024 * 1024} bytes"


async def test_an_upload_past_the_limit_is_a_413_and_leaves_nothing(settings: Settings, models: Models) -> None:
    size = models.heavy.stat().st_size
    assert size > 128 * 1024
    async with app_with(settings, max_upload_bytes=64 * 1024) as c:
        assert (await c.post("/v1/models", json={"name": "heavy"})).status_code == 201
        r = await upload(c, "heavy", models.heavy, create=False)  # Content-Length says it at once
        assert_error(r, 413, "payload_too_large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
            data = models.heavy.read_bytes()
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="heavy.onnx"\r\n\r\n'
            for i in range(0, len(data), 16 * 1024):
                yield data[i : i + 16 * 1024]
            yield b"\r\n--b--\r\n"

        r = await c.post(
            "/v1/models/heavy/versions", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"}
        )
        assert r.status_code == 413, r.text
        assert (await c.get("/v1/models/heavy/versions")).json()["total"] == 0
    assert not [p for p in settings.tmp_dir.rglob("*") if p.is_file()]
    assert not [p for p in settings.blobs_dir.rglob("*") if p.is_file()]


def npz_declaring(shape: tuple[int, ...]) -> bytes:
    """An NPZ of ~300 bytes whose ``x`` array header declares ``shape`` (float64) but holds 64 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + bytes(64))
        archive.writestr("y.npy", _npy(np.zeros(2)))
    return out.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


async def test_a_dataset_whose_arrays_declare_more_than_they_hold_is_a_400(client: httpx.AsyncClient) -> None:
    files = [("file", ("bomb.npz", npz_declaring((10**12,)), "application/octet-stream"))]
    r = await client.post("/v1/datasets", data={"name": "bomb"}, files=files)
    assert r.status_code == 400, r.text[:200]


# -- memory ------------------------------------------------------------------------------------------------
async def barrage(client: httpx.AsyncClient) -> None:
    for method, path, body in deep_bodies():
        await client.request(method, path, content=body, headers=JSON)
    await client.post("/v1/models/ident/predict", content=b'{"inputs": ' + wide_object(200_000) + b"}", headers=JSON)
    await client.post("/v1/models/ident/predict", content=b"\0" * 16, headers={**RAW, "X-Tensor-Shape": "99999,99999"})
    await client.post("/v1/models/ident/predict", content=raw_nan(), headers={**RAW, "X-Tensor-Shape": "1,4"})
    await client.post("/v1/models/log/predict", json={"inputs": [[-1.0] * 4] * 1000})


async def test_memory_stays_flat_across_a_hostile_barrage(client: httpx.AsyncClient, served: Models) -> None:
    await barrage(client)  # warm-up: caches, loaded models, allocator pools
    gc.collect()
    before = rss_bytes()
    for _ in range(3):
        await barrage(client)
    gc.collect()
    assert rss_bytes() - before < 64 << 20


async def test_a_refused_request_is_freed_at_once(client: httpx.AsyncClient, served: Models) -> None:
    body = b'{"inputs": ' + wide_object(100_000) + b"}"  # 1.2 MB, parsed to 100k keys
    await client.post("/v1/models/ghost/predict", content=body, headers=JSON)  # warm the route's code
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        r = await client.post("/v1/models/ghost/predict", content=body, headers=JSON)
        assert r.status_code == 404
        for _ in range(3):  # let the event loop drop the callbacks it has already run
            await asyncio.sleep(0)
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        gc.enable()
    assert kept < len(body) // 2, kept
