"""Models: create, list with filters and pages, get, update, delete rules."""

from __future__ import annotations

import httpx

from tests.conftest import member_key


async def test_create_get_update_model(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models", json={"name": "mnist", "description": "digits", "tags": ["vision"]})
    assert r.status_code == 201
    assert r.json()["owner"] == "admin" and r.json()["tags"] == ["vision"]
    r = await client.patch("/v1/models/mnist", json={"description": "MNIST digits", "tags": ["b", "a"]})
    assert r.status_code == 200
    got = (await client.get("/v1/models/mnist")).json()
    assert got["description"] == "MNIST digits" and got["tags"] == ["a", "b"]
    assert got["latest_version"] is None and got["aliases"] == {}


async def test_duplicate_model_is_409(client: httpx.AsyncClient) -> None:
    await client.post("/v1/models", json={"name": "m1"})
    r = await client.post("/v1/models", json={"name": "m1"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_exists"


async def test_list_filters_by_prefix_and_tag_and_paginates(client: httpx.AsyncClient) -> None:
    for i in range(7):
        tags = ["even"] if i % 2 == 0 else ["odd"]
        await client.post("/v1/models", json={"name": f"team-a-{i}", "tags": tags})
    await client.post("/v1/models", json={"name": "other"})
    r = (await client.get("/v1/models", params={"prefix": "team-a-", "limit": 3})).json()
    assert r["total"] == 7 and [m["name"] for m in r["items"]] == ["team-a-0", "team-a-1", "team-a-2"]
    r = (await client.get("/v1/models", params={"prefix": "team-a-", "limit": 3, "offset": 6})).json()
    assert [m["name"] for m in r["items"]] == ["team-a-6"]
    r = (await client.get("/v1/models", params={"tag": "odd"})).json()
    assert [m["name"] for m in r["items"]] == ["team-a-1", "team-a-3", "team-a-5"]


async def test_invalid_names_are_400(client: httpx.AsyncClient) -> None:
    for bad in ["../x", "Upper", "a" * 200, "-lead", "a/b", "..", "x y"]:
        r = await client.post("/v1/models", json={"name": bad})
        assert r.status_code == 400, bad
        assert r.json()["error"]["code"] == "invalid_name"
    r = await client.get("/v1/models/UPPER")
    assert r.status_code == 400


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


async def test_delete_refused_with_aliases_unless_forced(client: httpx.AsyncClient, mnist_model) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import upload

    await upload(client, "del-me", mnist_model.onnx_path, mnist_model.manifest)
    await client.put("/v1/models/del-me/aliases/production", json={"version": 1})
    r = await client.delete("/v1/models/del-me")
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_has_aliases"
    r = await client.delete("/v1/models/del-me", params={"force": "true"})
    assert r.status_code == 204
    assert (await client.get("/v1/models/del-me")).status_code == 404


async def test_member_sees_only_models_they_may_read(client: httpx.AsyncClient) -> None:
    await client.post("/v1/models", json={"name": "secret"})
    key = await member_key(client, "bob")
    bob = {"Authorization": f"Bearer {key}"}
    r = await client.post("/v1/models", json={"name": "bobs"}, headers=bob)
    assert r.status_code == 201 and r.json()["owner"] == "bob"
    names = [m["name"] for m in (await client.get("/v1/models", headers=bob)).json()["items"]]
    assert names == ["bobs"]
    assert (await client.get("/v1/models/secret", headers=bob)).status_code == 404
    all_names = [m["name"] for m in (await client.get("/v1/models")).json()["items"]]
    assert all_names == ["bobs", "secret"]
