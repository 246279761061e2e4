"""Predicts per second on the in-process fast path (httpx over ASGI), for the key checks' cost.

Serves a 784-64-10 MLP and sends ``N`` one-example predicts one after another with an admin key and with
a member key that reads the model through a permission, then the same member key with a rate limit high
enough never to refuse. In-process: no sockets, so the figure is the server's own per-request cost.

    .venv/bin/python bench/fastpath_keys.py [N]
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

from modelport.api.app import create_app
from modelport.config import Settings

ADMIN = "mp_bench-admin-key-0123456789abcdefghijklmnopqrstu"


def _model(folder: Path) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10), nn.Softmax(dim=-1)).eval()
    path = folder / "mlp.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 784),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["probabilities"],
        dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
    )
    return path


async def serve_mlp(c: httpx.AsyncClient, folder: Path) -> str:
    """Through an admin client: model ``mlp`` version 1 (the RSW-1 network, written to ``folder``) and a
    member key ``bench`` that reads it through a permission; returns that key."""
    await c.post("/v1/models", json={"name": "mlp"})
    files = [("file", ("mlp.onnx", _model(folder).read_bytes(), "application/octet-stream"))]
    r = await c.post("/v1/models/mlp/versions", files=files)
    assert r.status_code == 201, r.text
    member: str = (await c.post("/v1/keys", json={"name": "bench"})).json()["key"]
    await c.put("/v1/models/mlp/permissions/bench", json={"role": "reader"})
    return member


async def _rate(c: httpx.AsyncClient, key: str, n: int) -> float:
    body = json.dumps({"inputs": [0.5] * 784}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    for _ in range(200):  # warm up: load the model, fill the caches
        assert (await c.post("/v1/models/mlp/predict", content=body, headers=headers)).status_code == 200
    started = time.perf_counter()
    for _ in range(n):
        r = await c.post("/v1/models/mlp/predict", content=body, headers=headers)
    assert r.status_code == 200, r.text
    return n / (time.perf_counter() - started)


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        app = create_app(Settings(home=home / "home", admin_key=ADMIN))
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        auth = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=auth) as c:
            member = await serve_mlp(c, home)
            rows = [("admin key", await _rate(c, ADMIN, n)), ("member key", await _rate(c, member, n))]
            limited = await c.post("/v1/keys", json={"name": "bench", "rate_limit_rps": 1e9})
            if limited.status_code == 201:
                rows.append(("member key, rate limit on", await _rate(c, limited.json()["key"], n)))
        app.state.ctx.runtime.close()
        app.state.ctx.db.dispose()
    print(f"| {n} sequential predicts | req/s |\n| --- | ---: |")
    for label, rate in rows:
        print(f"| {label} | {rate:,.0f} |")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000))
