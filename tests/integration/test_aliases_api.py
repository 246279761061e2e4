"""Aliases: set, move, delete; invalid names; what they protect."""

from __future__ import annotations

import httpx

from tests.conftest import TrainedMnist, upload


async def test_set_move_delete_alias(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    await upload(client, "al", mnist_model.onnx_path, mnist_model.manifest)
    await upload(client, "al", mnist_model.onnx_path, mnist_model.manifest, create=False)
    r = await client.put("/v1/models/al/aliases/production", json={"version": 1})
    assert r.status_code == 200 and r.json()["version"] == 1
    r = await client.put("/v1/models/al/aliases/production", json={"version": 2})
    assert r.json()["version"] == 2
    assert (await client.get("/v1/models/al")).json()["aliases"] == {"production": 2}
    v2 = (await client.get("/v1/models/al/versions/2")).json()
    assert v2["aliases"] == ["production"]
    assert (await client.delete("/v1/models/al/aliases/production")).status_code == 204
    assert (await client.get("/v1/models/al/aliases")).json()["items"] == []
    r = await client.delete("/v1/models/al/aliases/production")
    assert r.status_code == 404 and r.json()["error"]["code"] == "alias_not_found"


async def test_alias_errors(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    await upload(client, "al2", mnist_model.onnx_path, mnist_model.manifest)
    r = await client.put("/v1/models/al2/aliases/Prod", json={"version": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_name"
    r = await client.put("/v1/models/al2/aliases/prod", json={"version": 7})
    assert r.status_code == 404
    r = await client.put("/v1/models/al2/aliases/prod", json={"version": "one"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed"


async def test_alias_moves_are_audited(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    await upload(client, "al3", mnist_model.onnx_path, mnist_model.manifest)
    await client.put("/v1/models/al3/aliases/production", json={"version": 1})
    items = (await client.get("/v1/audit", params={"action": "alias."})).json()["items"]
    assert items[0]["target"] == "al3@production" and items[0]["details"]["version"] == 1
