"""HTTP/1.1 on the wire, against the real server as ``modelport serve`` configures uvicorn.

A response's headers are held until its body (``cli/server.py::CorkedTransport``), so what must still
work byte for byte is everything around that: a small answer arrives whole, HEAD (no body write at all),
pipelined requests on one connection, ``Expect: 100-continue`` (the interim answer is never held), and a
large body that follows its headers instead of being copied onto them.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import orjson
import pytest

from modelport.cli import server
from modelport.config import Settings
from tests.security.live import HEADERS, served

KEY = HEADERS["Authorization"].encode()


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return sock


def _responses(sock: socket.socket, count: int, *, for_head: bool = False) -> list[tuple[bytes, bytes]]:
    """``count`` complete responses (status line + headers, body by Content-Length) read from ``sock``;
    ``for_head``: answers to HEAD, whose Content-Length describes a body that is not sent."""
    data = b""
    out: list[tuple[bytes, bytes]] = []
    while len(out) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} responses"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if head.startswith(b"HTTP/1.1 100 "):
            out.append((head, b""))
            data = rest
            continue
        body_len = 0 if for_head else length
        while len(rest) < body_len:
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-body"
            rest += chunk
        out.append((head, rest[:body_len]))
        data = rest[body_len:]
    return out


def test_pipelined_requests_get_their_answers_in_order(settings: Settings) -> None:
    with served(settings) as url, _connect(url) as sock:
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        missing = b"GET /v1/models/nope HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + KEY + b"\r\n\r\n"
        sock.sendall(request + missing + request)
        (h1, b1), (h2, b2), (h3, b3) = _responses(sock, 3)
        assert h1.startswith(b"HTTP/1.1 200") and orjson.loads(b1)["status"] == "ok"
        assert h2.startswith(b"HTTP/1.1 404") and orjson.loads(b2)["error"]["code"] == "model_not_found"
        assert h3.startswith(b"HTTP/1.1 200") and b1 == b3


def test_head_answers_headers_only_and_the_connection_goes_on(settings: Settings) -> None:
    with served(settings) as url, _connect(url) as sock:
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        ((head, body),) = _responses(sock, 1, for_head=True)
        assert head.startswith(b"HTTP/1.1 ") and body == b""
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        ((head, body),) = _responses(sock, 1)
        assert head.startswith(b"HTTP/1.1 200") and orjson.loads(body)["status"] == "ok"


def test_expect_100_continue_is_answered_before_the_body_is_sent(settings: Settings) -> None:
    payload = orjson.dumps({"name": "wire"})
    with served(settings) as url, _connect(url) as sock:
        sock.sendall(
            b"POST /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + KEY + b"\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n"
        )
        ((interim, _),) = _responses(sock, 1)  # would hang here if the interim answer were held
        assert interim.startswith(b"HTTP/1.1 100 ")
        sock.sendall(payload)
        ((head, body),) = _responses(sock, 1)
        assert head.startswith(b"HTTP/1.1 201") and orjson.loads(body)["name"] == "wire"


def test_an_answer_past_the_join_threshold_arrives_whole(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "COALESCE_BYTES", 1024)  # the OpenAPI document (~40 kB) is then "large"
    with served(settings) as url, _connect(url) as sock:
        for _ in range(2):  # and the next answer on the connection is held and joined again
            sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            ((head, body),) = _responses(sock, 1)
            assert head.startswith(b"HTTP/1.1 200") and len(body) > 1024
            assert orjson.loads(body)["openapi"].startswith("3.")
