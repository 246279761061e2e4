"""Server-side cost of one RSW-1 request, without sockets or HTTP parsing: the ASGI app called directly.

Builds a home with the RSW-1 network (784-64-10 MLP as ONNX, auth on, a member key with read permission),
then calls the app's ASGI entry with request A (one image, JSON), request B (32 images, JSON) and B as raw
float32 tensors, N times each, one after another, and prints microseconds per request beside the same
driver's figure for the orjson floor's Starlette app (what uvicorn adds is the same for both). With
``--profile`` it prints the top of a cProfile of request A.

    .venv/bin/python bench/serving/inproc_asgi.py [--n 20000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastpath_keys import ADMIN, serve_mlp

from modelport.api.app import create_app
from modelport.config import Settings

FLOORS = Path(__file__).resolve().parents[3] / "shared" / "bench" / "serving" / "servers"
"""The shared harness's floor apps (``../shared`` beside the checkout)."""
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _scope(path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-length", str(len(body)).encode()), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _call(app: App, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(_scope(path, headers, body), receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def _per_request_us(app: App, path: str, headers: list[tuple[bytes, bytes]], body: bytes, n: int) -> float:
    for _ in range(500):
        status, answer = await _call(app, path, headers, body)
        assert status == 200, answer
    started = time.perf_counter()
    for _ in range(n):
        await _call(app, path, headers, body)
    return (time.perf_counter() - started) / n * 1e6


async def main(n: int, profile: bool) -> None:
    sys.path.insert(0, str(FLOORS))
    from floor_orjson_app import app as floor  # the shared harness's orjson floor

    rng = np.random.default_rng(0)
    one = rng.random((1, 784), dtype=np.float32)
    batch = rng.random((32, 784), dtype=np.float32)
    body_a = orjson.dumps({"inputs": one.tolist()})
    body_b = orjson.dumps({"inputs": batch.tolist()})
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        app = create_app(Settings(home=home / "home", admin_key=ADMIN))
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        auth = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=auth) as c:
            member = await serve_mlp(c, home)
        key = [(b"authorization", f"Bearer {member}".encode())]
        jh = [*key, (b"content-type", b"application/json")]
        rh = [*key, (b"content-type", b"application/octet-stream"), (b"x-tensor-shape", b"32,784")]
        path = "/v1/models/mlp/predict"
        rows = [
            ("A (1 image, JSON)", await _per_request_us(app, path, jh, body_a, n), 1),
            ("B (32 images, JSON)", await _per_request_us(app, path, jh, body_b, n // 8), 32),
            ("B raw float32", await _per_request_us(app, path, rh, batch.tobytes(), n // 2), 32),
            ("floor A (orjson Starlette)", await _per_request_us(floor, "/predict", jh, body_a, n), 1),
            ("floor B (orjson Starlette)", await _per_request_us(floor, "/predict", jh, body_b, n // 8), 32),
        ]
        print("| request | us/request | images/s of one core |\n| --- | ---: | ---: |")
        for label, us, images in rows:
            print(f"| {label} | {us:.1f} | {images * 1e6 / us:,.0f} |")
        if profile:
            prof = cProfile.Profile()
            prof.enable()
            await _per_request_us(app, path, jh, body_a, n)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(35)
        app.state.ctx.runtime.close()
        app.state.ctx.db.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.profile))
