"""Slowloris and slow bodies against the real server (as ``modelport serve`` configures uvicorn): the
slow connections are cut off after their deadline, and meanwhile everyone else is answered promptly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import selectors
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from modelport.api.app import create_app
from modelport.config import Settings
from tests.conftest import ADMIN_KEY, TrainedMnist
from tests.security.live import HEADERS, served

TIMEOUT_S = 1.0


@dataclass
class Slow:
    """One hostile connection: what it sends first, whether it keeps trickling, what came back."""

    kind: str
    sock: socket.socket
    trickle: bool
    opened: float = field(default_factory=time.monotonic)
    received: bytes = b""
    closed_after: float | None = None


def _open(port: int, kind: str, first: bytes, *, trickle: bool) -> Slow:
    sock = socket.create_connection(("127.0.0.1", port))
    if first:
        sock.sendall(first)
    sock.setblocking(False)
    return Slow(kind, sock, trickle)


def _watch(slow: list[Slow], until: float) -> None:
    """Read every slow connection until it closes (or ``until``), sending one more byte every 0.3 s
    on the trickling ones."""
    selector = selectors.DefaultSelector()
    for s in slow:
        selector.register(s.sock, selectors.EVENT_READ, s)
    next_byte = time.monotonic() + 0.3
    while selector.get_map() and time.monotonic() < until:
        for key, _ in selector.select(timeout=0.1):
            s = key.data
            try:
                chunk = s.sock.recv(65536)
            except ConnectionError:
                chunk = b""
            s.received += chunk
            if not chunk:
                s.closed_after = time.monotonic() - s.opened
                selector.unregister(s.sock)
                s.sock.close()
        if time.monotonic() >= next_byte:
            next_byte += 0.3
            for key in list(selector.get_map().values()):
                if key.data.trickle:
                    with contextlib.suppress(OSError):
                        key.data.sock.send(b"a")
    for key in list(selector.get_map().values()):
        key.data.sock.close()


def _timed(call: httpx.Response) -> httpx.Response:
    assert call.elapsed.total_seconds() < 1.0, call.elapsed
    return call


@pytest.fixture
def slow_settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        admin_key=ADMIN_KEY,
        request_header_timeout_s=TIMEOUT_S,
        request_body_timeout_s=TIMEOUT_S,
        request_body_min_rate=10**9,  # a trickle earns no extra time
        max_header_bytes=4096,
    )


def test_slowloris_and_slow_bodies_are_cut_off_while_others_are_served(
    slow_settings: Settings, mnist_model: TrainedMnist
) -> None:
    with served(slow_settings) as url, httpx.Client(base_url=url, headers=HEADERS, timeout=10) as c:
        port = int(url.rsplit(":", 1)[1])
        assert c.post("/v1/models", json={"name": "m"}).status_code == 201
        files = [("file", ("m.onnx", mnist_model.onnx_path.read_bytes(), "application/octet-stream"))]
        data = {"manifest": json.dumps(mnist_model.manifest)}
        assert c.post("/v1/models/m/versions", files=files, data=data).status_code == 201
        one = {"inputs": mnist_model.test_images[0].tolist()}
        assert c.post("/v1/models/m/predict", json=one).status_code == 200  # loaded before the attack

        partial_headers = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        partial_body = (
            b"POST /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        predict_body = (
            b"POST /v1/models/m/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            + ADMIN_KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        slow = [_open(port, "headers", partial_headers, trickle=i % 2 == 0) for i in range(8)]
        slow += [_open(port, "body", partial_body, trickle=i % 2 == 0) for i in range(6)]
        slow += [_open(port, "predict-body", predict_body, trickle=True) for _ in range(2)]
        slow += [_open(port, "silent", b"", trickle=False) for _ in range(4)]

        for _ in range(3):  # kept-alive and fresh connections alike
            assert _timed(c.get("/healthz")).status_code == 200
            assert _timed(c.post("/v1/models/m/predict", json=one)).status_code == 200
            assert _timed(httpx.get(f"{url}/healthz")).status_code == 200
        _watch(slow, until=time.monotonic() + 8)
        assert _timed(c.get("/healthz")).status_code == 200

    for s in slow:
        assert s.closed_after is not None, (s.kind, s.received)
        assert TIMEOUT_S * 0.9 <= s.closed_after < TIMEOUT_S + 2.5, (s.kind, s.closed_after)
        if s.kind == "silent":
            assert s.received == b""
        elif s.kind == "headers":
            assert s.received.startswith(b"HTTP/1.1 408"), s.received
        else:
            head, _, body = s.received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower(), head
            assert json.loads(body)["error"]["code"] == "request_timeout"


def test_oversized_headers_get_431_and_a_closed_connection(slow_settings: Settings) -> None:
    with served(slow_settings) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Big: " + b"a" * 8000)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 431")
        assert httpx.get(f"{url}/healthz", headers={"X-Fine": "a" * 2000}).status_code == 200


async def test_a_trickled_body_is_408_on_every_path(settings: Settings, mnist_model: TrainedMnist) -> None:
    """In process: whatever the route makes of the error (FastAPI turns it into a 400, the fast path
    renders it), the answer is the edge's 408 with the connection closed."""
    app = create_app(settings.model_copy(update={"request_body_timeout_s": 0.3, "request_body_min_rate": 10**9}))

    async def trickle() -> object:
        yield b'{"inputs": ['
        await asyncio.sleep(2)
        yield b"0]}"

    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=HEADERS) as c:
        for path in ("/v1/models", "/v1/models/m/predict", "/v2/models/m/infer"):
            started = time.monotonic()
            r = await c.post(path, content=trickle(), headers={"Content-Type": "application/json"})  # type: ignore[arg-type]
            assert r.status_code == 408, (path, r.text)
            assert r.json()["error"]["code"] == "request_timeout" and r.headers["connection"] == "close"
            assert time.monotonic() - started < 1.5
    app.state.ctx.db.dispose()
