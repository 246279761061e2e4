"""Many writers at once, a stop signal mid-request, and one broken model among good ones.

- 50 concurrent "create the next version" uploads on one model, against the real server: 50 x 201
  with versions 1..50, no 500 (SQLite here; ``tests/integration/test_concurrent_versions.py`` runs a
  variant on PostgreSQL in CI).
- SIGTERM to ``modelport serve`` while an admitted upload is still arriving: it finishes (201), new
  requests are refused (connection refused, or 503), and the process exits 0.
- A version whose stored bytes were damaged is a clear ``integrity_error`` (tampering is covered by
  ``test_artifacts.py``); here: the other models keep serving, before and after.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from pathlib import Path

import httpx

from modelport.config import Settings
from tests.conftest import TrainedMnist, upload
from tests.security.live import HEADERS, serve_process, served


def _multipart(model: TrainedMnist) -> tuple[list[tuple[str, tuple[str, bytes, str]]], dict[str, str]]:
    files = [("file", ("mnist.onnx", model.onnx_path.read_bytes(), "application/octet-stream"))]
    return files, {"manifest": json.dumps(model.manifest)}


def test_fifty_concurrent_uploads_get_fifty_distinct_versions(settings: Settings, mnist_model: TrainedMnist) -> None:
    files, data = _multipart(mnist_model)

    async def race(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=120, limits=limits) as c:
            assert (await c.post("/v1/models", json={"name": "busy"})).status_code == 201
            return await asyncio.gather(
                *(c.post("/v1/models/busy/versions", files=files, data=data) for _ in range(50))
            )

    with served(settings) as url:
        answers = asyncio.run(race(url))
        listed = httpx.get(f"{url}/v1/models/busy/versions", params={"limit": 100}, headers=HEADERS).json()
    assert [r.status_code for r in answers] == [201] * 50, {r.status_code: r.text for r in answers}
    assert sorted(r.json()["version"] for r in answers) == list(range(1, 51))
    assert listed["total"] == 50


def _multipart_body(model: TrainedMnist, boundary: str) -> bytes:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="mnist.onnx"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + model.onnx_path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()


def test_sigterm_lets_the_admitted_request_finish_and_admits_no_new_one(
    tmp_path: Path, mnist_model: TrainedMnist
) -> None:
    with serve_process(tmp_path / "home") as (url, proc):
        assert httpx.post(f"{url}/v1/models", json={"name": "drain"}, headers=HEADERS).status_code == 201
        body = _multipart_body(mnist_model, "slowupload")
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as upload:
            upload.sendall(
                b"POST /v1/models/drain/versions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + f"Authorization: {HEADERS['Authorization']}\r\n".encode()
                + b"Content-Type: multipart/form-data; boundary=slowupload\r\n"
                + f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
            )
            # uvicorn says "100 Continue" when the route first reads the body: the request is admitted.
            assert upload.recv(1024).startswith(b"HTTP/1.1 100")
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while True:  # until the server has seen the signal (it checks every 0.1 s)
                assert time.monotonic() < deadline, "the server kept admitting new requests"
                try:
                    r = httpx.get(f"{url}/v1/models", headers=HEADERS, timeout=5)
                except httpx.TransportError:
                    break  # refused: the listening socket is closed
                if r.status_code == 503:
                    break
                assert r.status_code == 200
            step = len(body) // 8 + 1
            for i in range(0, len(body), step):  # the rest of the upload, slowly
                upload.sendall(body[i : i + step])
                time.sleep(0.1)
            answer = b""
            while chunk := upload.recv(65536):  # draining: the server closes after this answer
                answer += chunk
        assert proc.wait(timeout=60) == 0
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201"), answer
    assert json.loads(payload)["version"] == 1


async def test_a_model_that_fails_to_load_does_not_stop_the_others(
    client: httpx.AsyncClient,
    app,  # type: ignore[no-untyped-def]
    mnist_model: TrainedMnist,
    tmp_path: Path,
) -> None:
    import onnx

    graph = onnx.load(mnist_model.onnx_path)
    graph.doc_string = "the same network in other bytes, so it gets a blob of its own"
    other = tmp_path / "other.onnx"
    onnx.save(graph, other)
    assert (await upload(client, "good", mnist_model.onnx_path, mnist_model.manifest)).status_code == 201
    assert (await upload(client, "broken", other, mnist_model.manifest)).status_code == 201
    files = (await client.get("/v1/models/broken/versions/1")).json()["manifest"]["files"]
    blob = app.state.ctx.store.path_of(files["other.onnx"])
    blob.write_bytes(b"\0" * blob.stat().st_size)  # damaged on disk before its first load

    one = {"inputs": mnist_model.test_images[0].tolist()}
    v2 = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": one["inputs"]}]}
    for _ in range(2):
        good, broken, good_v2 = await asyncio.gather(
            client.post("/v1/models/good/predict", json=one),
            client.post("/v1/models/broken/predict", json=one),
            client.post("/v2/models/good/infer", json=v2),
        )
        assert good.status_code == 200 and good_v2.status_code == 200, (good.text, good_v2.text)
        assert broken.status_code == 500 and broken.json()["error"]["code"] == "integrity_error", broken.text
    assert (await client.get("/readyz")).status_code == 200
