"""The inference lane (``api/lane.py``) on the wire, against the real server as ``modelport serve`` runs it.

Predict and infer requests are answered at the HTTP protocol level once the edge has seen their Host and
Content-Type pass; they must get exactly what the ASGI edge answers (status, body, headers), keep every
check (key, permission, schema, the audit of a denial), and keep HTTP/1.1 whole: pipelining,
``Connection: close``, a body that never arrives.
"""

from __future__ import annotations

import re
import time

import httpx
import numpy as np
import orjson
import pytest

from modelport.config import Settings
from tests.conftest import ADMIN_KEY, TrainedMnist, member_key, upload
from tests.e2e.test_http_wire import _connect, _responses
from tests.security.live import served, served_server

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PREDICT = "/v1/models/digits/predict"


async def _setup(url: str, mnist: TrainedMnist) -> str:
    """The model ``digits`` (v1), a member key ``reader`` that may read it; returns that key."""
    async with httpx.AsyncClient(base_url=url, headers=ADMIN) as client:
        assert (await upload(client, "digits", mnist.onnx_path, mnist.manifest)).status_code == 201
        key = await member_key(client, "reader")
        r = await client.put("/v1/models/digits/permissions/reader", json={"role": "reader"})
        assert r.status_code in (200, 201), r.text
        return key


def _request(path: str, body: bytes, key: str | None, *extra: bytes, media: bytes = b"application/json") -> bytes:
    lines = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: 127.0.0.1", b"Content-Type: " + media]
    if key is not None:
        lines.append(b"Authorization: Bearer " + key.encode())
    lines += [*extra, b"Content-Length: %d" % len(body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _headers(head: bytes) -> dict[bytes, bytes]:
    pairs = (line.split(b":", 1) for line in head.split(b"\r\n")[1:])
    return {name.strip().lower(): value.strip() for name, value in pairs}


def _lane_count(url: str) -> float:
    text = httpx.get(f"{url}/metrics", headers=ADMIN).text
    found = re.search(r"^modelport_http_lane_requests_total (\S+)$", text, re.M)
    assert found is not None, "the lane's counter is missing from /metrics"
    return float(found.group(1))


def _images(mnist: TrainedMnist, n: int) -> list[list[float]]:
    return [[float(v) for v in row] for row in mnist.test_images[:n]]


async def test_the_lane_answers_what_the_asgi_edge_answers(settings: Settings, mnist_model: TrainedMnist) -> None:
    with served(settings) as url:
        key = await _setup(url, mnist_model)
        body = orjson.dumps({"inputs": _images(mnist_model, 3)})
        before = _lane_count(url)
        with _connect(url) as sock:
            # the first request of this Host and Content-Type goes through the edge's checks (ASGI);
            # the ones after it take the lane
            sock.sendall(_request(PREDICT, body, key))
            ((head1, body1),) = _responses(sock, 1)
            sock.sendall(_request(PREDICT, body, key))
            ((head2, body2),) = _responses(sock, 1)
        assert _lane_count(url) - before == 1
    assert head1.startswith(b"HTTP/1.1 200") and head2.startswith(b"HTTP/1.1 200")
    assert body1 == body2
    answer = orjson.loads(body2)
    assert [p["index"] for p in answer["predictions"]] == np.argmax(mnist_model.torch_probs[:3], axis=1).tolist()
    h1, h2 = _headers(head1), _headers(head2)
    assert sorted(h1) == sorted(h2)  # the same headers: server, date, type, length, request id
    assert h1[b"x-request-id"] != h2[b"x-request-id"]
    assert h2[b"content-type"] == b"application/json" and int(h2[b"content-length"]) == len(body2)


async def test_raw_tensors_and_errors_through_the_lane(settings: Settings, mnist_model: TrainedMnist) -> None:
    with served(settings) as url:
        key = await _setup(url, mnist_model)
        raw = mnist_model.test_images[:2].astype(np.float32).tobytes()
        tensor = (b"X-Tensor-Shape: 2,784", b"Accept: application/octet-stream")
        good = orjson.dumps({"inputs": _images(mnist_model, 1)})
        with _connect(url) as sock:
            for _ in range(2):  # the second of each kind takes the lane
                sock.sendall(_request(PREDICT, raw, key, *tensor, media=b"application/octet-stream"))
                ((head, answer),) = _responses(sock, 1)
                assert head.startswith(b"HTTP/1.1 200"), answer
                assert _headers(head)[b"x-tensor-shape"] == b"2,10"
                probs = np.frombuffer(answer, dtype=np.float32).reshape(2, 10)
                np.testing.assert_allclose(probs, mnist_model.torch_probs[:2], atol=1e-5)
            sock.sendall(_request(PREDICT, good, key))
            ((head, _),) = _responses(sock, 1)
            assert head.startswith(b"HTTP/1.1 200")
            before = _lane_count(url)
            cases = [
                (_request(PREDICT, good, None), b"401", "unauthenticated"),
                (_request(PREDICT, good, "mp_not_a_key"), b"401", "unauthenticated"),
                (_request("/v1/models/nope/predict", good, key), b"404", "model_not_found"),
                (_request(PREDICT, b'{"inputs": [[1, 2', key), b"400", "invalid_input"),
                (_request(PREDICT, b'{"inputs": [[0.5, 0.5]]}', key), b"400", "invalid_input"),
            ]
            for request, status, code in cases:
                sock.sendall(request)
                ((head, answer),) = _responses(sock, 1)
                assert head.startswith(b"HTTP/1.1 " + status), answer
                error = orjson.loads(answer)["error"]
                assert error["code"] == code and "Traceback" not in error["message"]
                if status == b"401":
                    assert _headers(head)[b"www-authenticate"] == b"Bearer"
            assert _lane_count(url) - before == len(cases)


async def test_a_denial_in_the_lane_is_audited(settings: Settings, mnist_model: TrainedMnist) -> None:
    with served(settings) as url:
        await _setup(url, mnist_model)
        async with httpx.AsyncClient(base_url=url, headers=ADMIN) as client:
            r = await client.post("/v1/keys", json={"name": "admin", "role": "admin", "scopes": {"actions": ["read"]}})
            outsider = r.json()["key"]  # may read, may not infer
            body = orjson.dumps({"inputs": _images(mnist_model, 1)})
            with _connect(url) as sock:
                for _ in range(2):
                    sock.sendall(_request(PREDICT, body, outsider))
                    ((head, answer),) = _responses(sock, 1)
                    assert head.startswith(b"HTTP/1.1 403"), answer
            for _ in range(50):  # the audit row is written after the answer went out
                denied = (await client.get("/v1/audit", params={"action": "denied"})).json()["items"]
                if len(denied) == 2:
                    break
                time.sleep(0.05)
        assert [(d["actor"], d["target"]) for d in denied] == [("admin", "POST /v1/models/{ref}/predict")] * 2
        assert all(d["details"]["params"] == {"ref": "digits"} for d in denied)


async def test_pipelined_lane_requests_are_answered_in_order(settings: Settings, mnist_model: TrainedMnist) -> None:
    with served(settings) as url:
        key = await _setup(url, mnist_model)
        one = orjson.dumps({"inputs": _images(mnist_model, 1)})
        two = orjson.dumps({"inputs": _images(mnist_model, 2)})
        health = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        with _connect(url) as sock:
            sock.sendall(_request(PREDICT, one, key))
            _responses(sock, 1)
            before = _lane_count(url)
            sock.sendall(
                _request(PREDICT, one, key) + health + _request(PREDICT, two, key) + _request(PREDICT, one, key)
            )
            answers = _responses(sock, 4)
        assert [head[:12] for head, _ in answers] == [b"HTTP/1.1 200"] * 4
        assert len(orjson.loads(answers[0][1])["predictions"]) == 1
        assert orjson.loads(answers[1][1])["status"] == "ok"
        assert len(orjson.loads(answers[2][1])["predictions"]) == 2
        assert answers[3][1] == answers[0][1]
        assert _lane_count(url) - before >= 1  # the first takes the lane; those queued behind an answer wait in line


async def test_connection_close_and_a_body_that_never_arrives(settings: Settings, mnist_model: TrainedMnist) -> None:
    settings = settings.model_copy(update={"request_body_timeout_s": 0.5, "request_header_timeout_s": 2.0})
    with served(settings) as url:
        key = await _setup(url, mnist_model)
        body = orjson.dumps({"inputs": _images(mnist_model, 1)})
        with _connect(url) as sock:
            sock.sendall(_request(PREDICT, body, key))
            _responses(sock, 1)
            sock.sendall(_request(PREDICT, body, key, b"Connection: close"))
            ((head, _),) = _responses(sock, 1)
            assert head.startswith(b"HTTP/1.1 200") and _headers(head)[b"connection"] == b"close"
            assert sock.recv(1) == b""  # and the server closed it
        with _connect(url) as sock:
            sock.sendall(_request(PREDICT, body, key))
            _responses(sock, 1)
            before = _lane_count(url)
            sock.sendall(_request(PREDICT, body, key)[:-10])  # all but the last 10 bytes, then silence
            started = time.monotonic()
            ((head, answer),) = _responses(sock, 1)
            assert head.startswith(b"HTTP/1.1 408") and orjson.loads(answer)["error"]["code"] == "request_timeout"
            assert _headers(head)[b"connection"] == b"close" and sock.recv(1) == b""
            assert time.monotonic() - started < 5
        assert _lane_count(url) == before  # a refusal is not an answer of the lane's


async def test_the_idle_poll_counts_every_lane_request_out_again(settings: Settings, mnist_model: TrainedMnist) -> None:
    """The idle poll starts only when no lane request is in flight, by a count the protocol keeps: every
    way a lane request ends (answered, pipelined, refused for a late body, its client gone before the
    answer or in the middle of the body) must take it back to zero, or the poll would stay off for good
    (or, below zero, count a busy server as idle)."""
    settings = settings.model_copy(
        update={"idle_poll_us": 200, "request_body_timeout_s": 0.5, "request_header_timeout_s": 2.0}
    )
    with served_server(settings) as (url, server):
        poll = server.config.http_protocol_class.idle_poll  # type: ignore[attr-defined]  # GuardedHttp's
        key = await _setup(url, mnist_model)
        body = orjson.dumps({"inputs": _images(mnist_model, 1)})
        before = _lane_count(url)
        with _connect(url) as sock:
            sock.sendall(_request(PREDICT, body, key))
            _responses(sock, 1)
            sock.sendall(_request(PREDICT, body, key) * 3)
            assert [head[:12] for head, _ in _responses(sock, 3)] == [b"HTTP/1.1 200"] * 3
            sock.sendall(_request(PREDICT, body, key)[:-10])  # a body that never ends: 408
            ((head, _),) = _responses(sock, 1)
            assert head.startswith(b"HTTP/1.1 408")
        with _connect(url) as sock:
            sock.sendall(_request(PREDICT, body, key)[:-10])  # the client leaves in the middle of the body
        with _connect(url) as sock:
            sock.sendall(_request(PREDICT, body, key) * 2)  # and before reading the answers
        assert _lane_count(url) - before >= 2  # pipelined ones behind an answer take the ASGI path
        deadline = time.monotonic() + 5
        while poll.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert poll.busy == 0
        assert poll.last > 0  # answers went through it


@pytest.mark.parametrize("extra", [b"Origin: http://127.0.0.1", b"X-Pad: " + b"a" * 10])
async def test_the_lane_can_be_turned_off_and_leaves_browsers_to_the_edge(
    settings: Settings, mnist_model: TrainedMnist, extra: bytes
) -> None:
    off = b"X-Pad" in extra
    if off:
        settings = settings.model_copy(update={"inference_lane": False})
    with served(settings) as url:
        key = await _setup(url, mnist_model)
        body = orjson.dumps({"inputs": _images(mnist_model, 1)})
        before = _lane_count(url)
        with _connect(url) as sock:
            for _ in range(3):
                sock.sendall(_request(PREDICT, body, key, extra))
                ((head, _),) = _responses(sock, 1)
                assert head.startswith(b"HTTP/1.1 200")  # a same-origin browser request passes
        assert _lane_count(url) == before
