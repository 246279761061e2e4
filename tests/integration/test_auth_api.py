"""Keys, roles and per-model permissions, and the audit log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from tests.conftest import TrainedMnist, error_of, member_key, upload


async def test_every_endpoint_but_health_needs_a_key(app) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as anon:
        assert (await anon.get("/healthz")).status_code == 200
        assert (await anon.get("/readyz")).status_code == 200
        for method, path in [
            ("GET", "/v1/models"),
            ("POST", "/v1/models/x/predict"),
            ("GET", "/metrics"),
            ("GET", "/v1/keys"),
            ("GET", "/v1/audit"),
            ("GET", "/v2/models/x"),
            ("POST", "/v2/models/x/infer"),
        ]:
            r = await anon.request(method, path)
            assert r.status_code == 401, path
            assert error_of(r)["code"] == "unauthenticated"
        r = await anon.get("/v1/models", headers={"Authorization": "Bearer mp_wrong-key-000000000000000000000000"})
        assert r.status_code == 401


async def test_keys_are_shown_once_listed_by_prefix_and_revocable(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/keys", json={"name": "carol", "role": "member"})
    assert r.status_code == 201
    created = r.json()
    key = created["key"]
    assert key.startswith("mp_") and len(key) >= 43
    listed = (await client.get("/v1/keys")).json()["items"]
    mine = next(k for k in listed if k["id"] == created["id"])
    assert "key" not in mine and mine["prefix"] == key[:11]
    assert key not in str(listed)
    headers = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/v1/whoami", headers=headers)).json()["principal"] == "carol"
    assert (await client.delete(f"/v1/keys/{created['id']}")).status_code == 200
    r = await client.get("/v1/whoami", headers=headers)
    assert r.status_code == 401
    assert (await client.delete("/v1/keys/key_nope")).status_code == 404


async def test_expired_key_is_refused(client: httpx.AsyncClient) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1)
    r = await client.post("/v1/keys", json={"name": "temp", "expires_at": soon.isoformat()})
    assert r.status_code == 201
    past = datetime.now(UTC) - timedelta(days=1)
    r = await client.post("/v1/keys", json={"name": "temp", "expires_at": past.isoformat()})
    assert r.status_code == 400


async def test_members_cannot_manage_keys_or_read_audit(client: httpx.AsyncClient) -> None:
    headers = {"Authorization": f"Bearer {await member_key(client, 'dave')}"}
    assert (await client.post("/v1/keys", json={"name": "x"}, headers=headers)).status_code == 403
    assert (await client.get("/v1/keys", headers=headers)).status_code == 403
    assert (await client.get("/v1/audit", headers=headers)).status_code == 403
    assert (await client.get("/metrics", headers=headers)).status_code == 403


async def test_reader_can_predict_but_not_write(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    await upload(client, "shared", mnist_model.onnx_path, mnist_model.manifest)
    headers = {"Authorization": f"Bearer {await member_key(client, 'erin')}"}
    image = mnist_model.test_images[0].tolist()
    r = await client.post("/v1/models/shared/predict", json={"inputs": image}, headers=headers)
    assert r.status_code == 404  # not yet a reader: the model does not exist for erin
    r = await client.put("/v1/models/shared/permissions/erin", json={"role": "reader"})
    assert r.status_code == 200 and r.json()["permissions"]["erin"] == "reader"
    r = await client.post("/v1/models/shared/predict", json={"inputs": image}, headers=headers)
    assert r.status_code == 200
    r = await client.put("/v1/models/shared/aliases/production", json={"version": 1}, headers=headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    r = await client.patch("/v1/models/shared", json={"description": "x"}, headers=headers)
    assert r.status_code == 403
    files = [("file", ("m.onnx", mnist_model.onnx_path.read_bytes(), "application/octet-stream"))]
    r = await client.post("/v1/models/shared/versions", files=files, headers=headers)
    assert r.status_code == 403
    await client.put("/v1/models/shared/permissions/erin", json={"role": "writer"})
    r = await client.put("/v1/models/shared/aliases/production", json={"version": 1}, headers=headers)
    assert r.status_code == 200
    r = await client.delete("/v1/models/shared", params={"force": "true"}, headers=headers)
    assert r.status_code == 403  # deleting needs owner


async def test_owner_manages_permissions_and_last_owner_stays(client: httpx.AsyncClient) -> None:
    headers = {"Authorization": f"Bearer {await member_key(client, 'frank')}"}
    await client.post("/v1/models", json={"name": "franks"}, headers=headers)
    r = await client.put("/v1/models/franks/permissions/gina", json={"role": "writer"}, headers=headers)
    assert r.json()["permissions"] == {"frank": "owner", "gina": "writer"}
    r = await client.delete("/v1/models/franks/permissions/frank", headers=headers)
    assert r.status_code == 400 and "last owner" in r.json()["error"]["message"]
    r = await client.put("/v1/models/franks/permissions/gina", json={"role": "admin"}, headers=headers)
    assert r.status_code == 422


async def test_every_write_is_audited(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    await upload(client, "aud", mnist_model.onnx_path, mnist_model.manifest)
    await client.put("/v1/models/aud/aliases/staging", json={"version": 1})
    await client.put("/v1/models/aud/permissions/hank", json={"role": "reader"})
    await client.post("/v1/keys", json={"name": "hank"})
    actions = [e["action"] for e in (await client.get("/v1/audit")).json()["items"]]
    for expected in ["model.create", "version.create", "alias.set", "permission.set", "key.create"]:
        assert expected in actions
