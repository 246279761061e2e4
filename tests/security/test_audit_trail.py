"""The audit trail answers "which version was in production at time X", and records every 403 with
who, what (the route template, not the raw path), when and from where."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from tests.conftest import TrainedMnist, member_key, upload


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def test_alias_history_answers_which_version_was_in_production(
    client: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    before = _now()
    await upload(client, "fraud", mnist_model.onnx_path, mnist_model.manifest)
    await upload(client, "fraud", mnist_model.onnx_path, mnist_model.manifest, create=False)
    moments = []
    for version in (1, 2, 1):
        assert (await client.put("/v1/models/fraud/aliases/production", json={"version": version})).status_code == 200
        moments.append(_now())
    assert (await client.delete("/v1/models/fraud/aliases/production")).status_code == 204
    after = _now()

    history = (await client.get("/v1/models/fraud/aliases/production/history")).json()["items"]
    assert [(m["version"], m["previous"]) for m in history] == [(1, None), (2, 1), (1, 2), (None, 1)]
    assert {m["by"] for m in history} == {"admin"} and {m["client"] for m in history} == {"127.0.0.1"}
    assert [m["at"] for m in history] == sorted(m["at"] for m in history)

    url = "/v1/models/fraud/aliases/production/history"
    for moment, version in zip(moments, (1, 2, 1), strict=True):
        r = await client.get(url, params={"at": moment})
        assert r.status_code == 200 and r.json()["version"] == version, r.text
        assert r.json()["by"] == "admin"
    naive = datetime.fromisoformat(moments[1]).replace(tzinfo=None).isoformat()  # no zone: read as UTC
    assert (await client.get(url, params={"at": naive})).json()["version"] == 2
    for moment in (before, after):  # before the alias existed, after it was deleted
        r = await client.get(url, params={"at": moment})
        assert r.status_code == 404 and r.json()["error"]["code"] == "alias_not_found"
    assert (await client.get(url, params={"at": "yesterday"})).status_code == 422
    r = await client.get("/v1/models/fraud/aliases/Prod/history")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_name"


async def test_alias_history_is_for_readers_and_for_this_model_only(
    client: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    await upload(client, "reused", mnist_model.onnx_path, mnist_model.manifest)
    await client.put("/v1/models/reused/aliases/production", json={"version": 1})
    reader = {"Authorization": f"Bearer {await member_key(client, 'rita')}"}
    stranger = {"Authorization": f"Bearer {await member_key(client, 'sam')}"}
    await client.put("/v1/models/reused/permissions/rita", json={"role": "reader"})
    url = "/v1/models/reused/aliases/production/history"
    assert len((await client.get(url, headers=reader)).json()["items"]) == 1
    r = await client.get(url, headers=stranger)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    ghost = await client.get("/v1/models/ghost/aliases/production/history")
    assert (r.status_code, r.json()["error"]["message"].replace("reused", "ghost")) == (
        ghost.status_code,
        ghost.json()["error"]["message"],
    )

    # Deleted and created again under the same name (by someone else): the old history is not theirs.
    assert (await client.delete("/v1/models/reused", params={"force": "true"})).status_code in (200, 204)
    assert (await client.post("/v1/models", json={"name": "reused"})).status_code == 201
    assert (await client.get(url)).json()["items"] == []
    r = await client.get(url, params={"at": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()})
    assert r.status_code == 404


async def test_every_403_is_audited_with_who_what_and_where(
    client: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    await upload(client, "locked", mnist_model.onnx_path, mnist_model.manifest)
    erin = {"Authorization": f"Bearer {await member_key(client, 'erin')}"}
    await client.put("/v1/models/locked/permissions/erin", json={"role": "reader"})

    r = await client.put("/v1/models/locked/aliases/production", json={"version": 1}, headers=erin)
    assert r.status_code == 403
    assert (await client.get("/v1/keys", headers=erin)).status_code == 403  # admins only
    assert (await client.get("/v1/models/elsewhere", headers=erin)).status_code == 404  # not a denial row
    assert (await client.get("/v1/models", headers={"Authorization": "Bearer mp_nope"})).status_code == 401

    denied = (await client.get("/v1/audit", params={"action": "denied"})).json()["items"]
    assert [(d["actor"], d["target"], d["client"]) for d in denied] == [
        ("erin", "GET /v1/keys", "127.0.0.1"),
        ("erin", "PUT /v1/models/{name}/aliases/{alias}", "127.0.0.1"),
    ]
    assert denied[1]["details"]["params"] == {"name": "locked", "alias": "production"}
    assert datetime.fromisoformat(denied[0]["at"]) > datetime.now(UTC) - timedelta(minutes=1)
    # nothing changed: the denied move is not in the alias history
    assert (await client.get("/v1/models/locked/aliases/production/history")).json()["items"] == []
