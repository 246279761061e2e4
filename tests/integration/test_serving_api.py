"""Serving features over the API: raw tensors, batching under concurrency, memory budget, admin load/unload."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from modelport.api.app import create_app
from modelport.config import Settings
from tests.conftest import ADMIN_KEY, TrainedMnist, member_key, upload

RAW = {"Content-Type": "application/octet-stream"}


@pytest.fixture
async def served(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> TrainedMnist:
    r = await upload(client, "mnist", mnist_model.onnx_path, mnist_model.manifest)
    assert r.status_code == 201, r.text
    return mnist_model


async def test_raw_tensor_in_json_out(client: httpx.AsyncClient, served: TrainedMnist) -> None:
    x = served.test_images[:32].astype(np.float32)
    r = await client.post(
        "/v1/models/mnist/predict",
        content=x.tobytes(),
        headers={**RAW, "X-Tensor-Shape": "32,784", "X-Tensor-Dtype": "float32"},
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.asarray(r.json()["outputs"]), served.torch_probs[:32], atol=1e-5)


async def test_raw_tensor_in_raw_out(client: httpx.AsyncClient, served: TrainedMnist) -> None:
    x = served.test_images[:8].astype(np.uint8)
    r = await client.post(
        "/v1/models/mnist/predict",
        content=x.tobytes(),
        headers={**RAW, "X-Tensor-Shape": "8,784", "X-Tensor-Dtype": "uint8", "Accept": "application/octet-stream"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-tensor-shape"] == "8,10" and r.headers["x-tensor-dtype"] == "float32"
    assert r.headers["x-model"] == "mnist" and r.headers["x-model-version"] == "1"
    probs = np.frombuffer(r.content, dtype="<f4").reshape(8, 10)
    np.testing.assert_allclose(probs, served.torch_probs[:8], atol=1e-5)


@pytest.mark.parametrize(
    ("headers", "length", "fragment"),
    [
        ({"X-Tensor-Shape": "2,784"}, 784 * 4, "needs 6272"),
        ({"X-Tensor-Shape": "2,784", "X-Tensor-Dtype": "complex64"}, 2 * 784 * 4, "X-Tensor-Dtype"),
        ({}, 784 * 4, "X-Tensor-Shape"),
        ({"X-Tensor-Shape": "a,b"}, 784 * 4, "whole numbers"),
        ({"X-Tensor-Shape": "1,783"}, 783 * 4, "shape [N, 784]"),
    ],
)
async def test_raw_tensor_errors(
    client: httpx.AsyncClient, served: TrainedMnist, headers: dict[str, str], length: int, fragment: str
) -> None:
    r = await client.post("/v1/models/mnist/predict", content=b"\0" * length, headers={**RAW, **headers})
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]


async def test_concurrent_requests_are_batched_and_correct(client: httpx.AsyncClient, served: TrainedMnist) -> None:
    images = served.test_images[:64]
    responses = await asyncio.gather(
        *[client.post("/v1/models/mnist/predict", json={"inputs": images[i].tolist()}) for i in range(64)]
    )
    for i, r in enumerate(responses):
        np.testing.assert_allclose(np.asarray(r.json()["outputs"]), served.torch_probs[i], atol=1e-5)
    text = (await client.get("/metrics")).text
    assert 'modelport_batch_size_count{model="mnist",version="1"}' in text


async def test_admin_load_pin_unload_and_runtime(client: httpx.AsyncClient, served: TrainedMnist) -> None:
    r = await client.post("/v1/models/mnist/load", json={"pin": True})
    assert r.status_code == 200 and r.json()["pinned"] is True and r.json()["memory_bytes"] > 0
    info = (await client.get("/v1/runtime")).json()
    assert [(m["model"], m["version"]) for m in info["loaded"]] == [("mnist", 1)]
    assert info["used_bytes"] > 0 and info["budget_bytes"] > info["used_bytes"]
    r = await client.post("/v1/models/mnist/unload")
    assert r.json()["unloaded"] is True
    assert (await client.get("/v1/runtime")).json()["loaded"] == []
    headers = {"Authorization": f"Bearer {await member_key(client, 'ivan')}"}
    assert (await client.post("/v1/models/mnist/load", headers=headers)).status_code == 403


async def test_memory_budget_evicts_least_recently_used_and_never_fails(
    settings: Settings, mnist_model: TrainedMnist
) -> None:
    size = mnist_model.onnx_path.stat().st_size
    budget = Settings(**{**settings.model_dump(), "memory_budget_bytes": 2 * size * 3 + size})
    app = create_app(budget)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as c:
        for i in range(6):
            await upload(c, f"m{i}", mnist_model.onnx_path, mnist_model.manifest)
        image = mnist_model.test_images[0].tolist()
        for _ in range(3):
            rs = await asyncio.gather(*[c.post(f"/v1/models/m{i}/predict", json={"inputs": image}) for i in range(6)])
            assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
        runtime = (await c.get("/v1/runtime")).json()
        assert len(runtime["loaded"]) <= 3 and runtime["used_bytes"] <= runtime["budget_bytes"]
    app.state.ctx.runtime.close()
    app.state.ctx.db.dispose()


async def test_model_that_cannot_fit_is_a_clear_503(settings: Settings, mnist_model: TrainedMnist) -> None:
    app = create_app(Settings(**{**settings.model_dump(), "memory_budget_bytes": 1000}))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as c:
        await upload(c, "big", mnist_model.onnx_path, mnist_model.manifest)
        r = await c.post("/v1/models/big/predict", json={"inputs": mnist_model.test_images[0].tolist()})
        assert r.status_code == 503
        error = r.json()["error"]
        assert "memory budget is 1000 bytes; raise MODELPORT_MEMORY_BUDGET_BYTES" in error["message"]
        assert error["details"]["needed_bytes"] > 1000 and error["details"]["pinned_bytes"] == 0
    app.state.ctx.runtime.close()
    app.state.ctx.db.dispose()


async def test_a_model_crowded_out_by_pinned_ones_is_a_503_that_says_so(
    settings: Settings, mnist_model: TrainedMnist
) -> None:
    async def pinned_bytes_after(budget: int, pins: list[str], then: str) -> tuple[list[int], httpx.Response]:
        app = create_app(Settings(**{**settings.model_dump(), "memory_budget_bytes": budget}))
        auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=auth) as c:
            for name in [*pins, then]:
                await upload(c, name, mnist_model.onnx_path, mnist_model.manifest)
            sizes = []
            for name in pins:
                r = await c.post(f"/v1/models/{name}/load", json={"pin": True})
                assert r.status_code == 200, r.text
                sizes.append(r.json()["memory_bytes"])
            last = await c.post(f"/v1/models/{then}/predict", json={"inputs": mnist_model.test_images[0].tolist()})
        app.state.ctx.runtime.close()
        app.state.ctx.db.dispose()
        return sizes, last

    # one version's measured size, with room to spare; then a budget that fits two of them, not three
    (one,), _ = await pinned_bytes_after(1 << 30, ["p0"], "p1")
    sizes, r = await pinned_bytes_after(one * 5 // 2, ["p0", "p1"], "p2")
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["details"]["pinned_bytes"] == sum(sizes) and error["details"]["budget_bytes"] == one * 5 // 2
    assert "KiB of it is taken by pinned models; unpin or unload one" in error["message"]
