"""Scoped keys: a model outside a key's patterns looks absent everywhere, actions outside its scope are
403 naming the scope, nobody mints a key wider than their own, expiry and rotation, and keys never leak."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest

from modelport.api.app import create_app
from modelport.auth import keys as keys_module
from modelport.config import Settings
from tests.conftest import ADMIN_KEY, TrainedMnist, error_of, upload

Probe = tuple[str, str, dict[str, Any], dict[str, str]]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def new_key(client: httpx.AsyncClient, name: str, *, as_key: str = ADMIN_KEY, **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/keys", json={"name": name, **body}, headers=bearer(as_key))
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def probes(mnist: TrainedMnist) -> list[Probe]:
    """Every route that names a model: metadata, files, lineage, report, aliases, uploads, inference."""
    image = mnist.test_images[0].tolist()
    raw = {"content": mnist.test_images[:1].astype(np.float32).tobytes()}
    raw_headers = {"Content-Type": "application/octet-stream", "X-Tensor-Shape": "1,784"}
    v2 = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": image}]}
    upload_files = {"files": [("file", ("m.onnx", mnist.onnx_path.read_bytes(), "application/octet-stream"))]}
    return [
        ("GET", "/v1/models/{m}", {}, {}),
        ("PATCH", "/v1/models/{m}", {"json": {"description": "x"}}, {}),
        ("GET", "/v1/models/{m}/versions", {}, {}),
        ("GET", "/v1/models/{m}/versions/1", {}, {}),
        ("GET", "/v1/models/{m}/versions/1/files/modelport.json", {}, {}),
        ("GET", "/v1/models/{m}/versions/1/lineage", {}, {}),
        ("GET", "/v1/models/{m}/versions/1/report", {}, {}),
        ("GET", "/v1/models/{m}/aliases", {}, {}),
        ("PUT", "/v1/models/{m}/aliases/production", {"json": {"version": 1}}, {}),
        ("GET", "/v1/models/{m}/deployment", {}, {}),
        ("GET", "/v1/models/{m}/permissions", {}, {}),
        ("POST", "/v1/models/{m}/versions", upload_files, {}),
        ("POST", "/v1/models/{m}/predict", {"json": {"inputs": image}}, {}),
        ("POST", "/v1/models/{m}:1/predict", raw, raw_headers),
        ("POST", "/v1/models/{m}@production/predict", {"json": {"inputs": image}}, {}),
        ("POST", "/v2/models/{m}/infer", {"json": v2}, {}),
        ("POST", "/v2/models/{m}/versions/1/infer", {"json": v2}, {}),
        ("GET", "/v2/models/{m}", {}, {}),
    ]


def _without(error: dict[str, Any], name: str) -> str:
    return repr(error).replace(name, "<name>")


async def test_a_model_outside_the_key_patterns_is_exactly_a_missing_model(
    client: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    for name in ("team-a-digits", "secret"):
        assert (await upload(client, name, mnist_model.onnx_path, mnist_model.manifest)).status_code == 201
        await client.put(f"/v1/models/{name}/permissions/ann", json={"role": "owner"})
    wide = bearer((await new_key(client, "ann"))["key"])
    narrow = bearer((await new_key(client, "ann", scopes={"models": ["team-a-*"]}))["key"])
    assert (await client.get("/v1/models/secret", headers=wide)).status_code == 200  # only the scope differs
    image = mnist_model.test_images[0].tolist()
    r = await client.post("/v1/models/team-a-digits/predict", json={"inputs": image}, headers=narrow)
    assert r.status_code == 200, r.text
    listed = (await client.get("/v1/models", headers=narrow)).json()["items"]
    assert [m["name"] for m in listed] == ["team-a-digits"]
    # the same probe twice: once before the resolution is cached (database path) and once after it
    await client.post("/v1/models/secret/predict", json={"inputs": image})
    for _ in range(2):
        for method, path, kwargs, extra in probes(mnist_model):
            hidden = await client.request(method, path.format(m="secret"), headers={**narrow, **extra}, **kwargs)
            absent = await client.request(method, path.format(m="absent"), headers={**narrow, **extra}, **kwargs)
            assert hidden.status_code == absent.status_code == 404, (path, hidden.text)
            h, a = error_of(hidden), error_of(absent)
            assert h["code"] == a["code"] == "model_not_found", (path, h)
            assert _without(h, "secret") == _without(a, "absent"), path
    lineage_parent = {"lineage": {"parent": "secret:1"}, **mnist_model.manifest}
    await upload(client, "team-a-child", mnist_model.onnx_path, lineage_parent)
    await client.put("/v1/models/team-a-child/permissions/ann", json={"role": "reader"})
    chain = (await client.get("/v1/models/team-a-child/versions/1/lineage", headers=wide)).json()
    assert [link.get("model") for link in chain["chain"]] == ["team-a-child", "secret"]
    chain = (await client.get("/v1/models/team-a-child/versions/1/lineage", headers=narrow)).json()
    assert [link.get("model") for link in chain["chain"]] == ["team-a-child"]  # stops at an unseen parent


async def test_infer_only_key_predicts_but_cannot_read_or_write(
    client: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    await upload(client, "ivy-model", mnist_model.onnx_path, mnist_model.manifest)
    await client.put("/v1/models/ivy-model/permissions/ivy", json={"role": "owner"})
    key = bearer((await new_key(client, "ivy", scopes={"actions": ["infer"]}))["key"])
    image = mnist_model.test_images[0].tolist()
    assert (await client.post("/v1/models/ivy-model/predict", json={"inputs": image}, headers=key)).status_code == 200
    v2 = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": image}]}
    assert (await client.post("/v2/models/ivy-model/infer", json=v2, headers=key)).status_code == 200
    for method, path, kwargs, scope in [
        ("GET", "/v1/models/ivy-model", {}, "read"),
        ("GET", "/v1/models", {}, "read"),
        ("GET", "/v1/models/ivy-model/versions/1/files/modelport.json", {}, "read"),
        ("GET", "/v1/models/ivy-model/versions/1/lineage", {}, "read"),
        ("PUT", "/v1/models/ivy-model/aliases/production", {"json": {"version": 1}}, "write"),
        ("POST", "/v1/models/ivy-model/versions", {"files": [("file", ("m.onnx", b"x", "a/b"))]}, "write"),
    ]:
        r = await client.request(method, path, headers=key, **kwargs)
        assert r.status_code == 403, (path, r.text)
        error = r.json()["error"]
        assert error["code"] == "permission_denied" and error["details"]["scope"] == scope, error
        assert f"lacks the '{scope}' scope" in error["message"]


async def test_read_only_key_cannot_predict(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    await upload(client, "rita-model", mnist_model.onnx_path, mnist_model.manifest)
    key = bearer((await new_key(client, "admin", role="admin", scopes={"actions": ["read"]}))["key"])
    assert (await client.get("/v1/models/rita-model", headers=key)).status_code == 200
    image = mnist_model.test_images[0].tolist()
    await client.post("/v1/models/rita-model/predict", json={"inputs": image})  # cached for the admin name
    for path in ("/v1/models/rita-model/predict", "/v1/models/rita-model:1/predict"):
        r = await client.post(path, json={"inputs": image}, headers=key)
        assert r.status_code == 403 and r.json()["error"]["details"]["scope"] == "infer", r.text
    v2 = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": image}]}
    r = await client.post("/v2/models/rita-model/infer", json=v2, headers=key)
    assert r.status_code == 403 and "'infer' scope" in error_of(r)["message"]


async def test_admin_key_without_the_admin_action_is_no_admin(
    client: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    await upload(client, "ops-model", mnist_model.onnx_path, mnist_model.manifest)
    scoped = {"actions": ["infer", "read", "write"]}
    key = bearer((await new_key(client, "admin", role="admin", scopes=scoped))["key"])
    assert (await client.get("/v1/models/ops-model", headers=key)).status_code == 200  # still owns models
    r = await client.post("/v1/keys", json={"name": "bob"}, headers=key)
    assert r.status_code == 403 and "other principals" in r.json()["error"]["message"]
    for path in ("/v1/keys", "/v1/audit", "/metrics", "/v1/runtime"):
        r = await client.get(path, headers=key)
        assert r.status_code == 403, path
        assert r.json()["error"]["details"]["scope"] == "admin"
    me = (await client.get("/v1/whoami", headers=key)).json()
    assert me["role"] == "admin" and me["scopes"]["actions"] == ["infer", "read", "write"]


async def test_a_member_cannot_mint_a_key_wider_than_their_own(client: httpx.AsyncClient) -> None:
    expires = datetime.now(UTC) + timedelta(days=1)
    parent = await new_key(
        client,
        "mia",
        expires_at=expires.isoformat(),
        scopes={"actions": ["infer", "read"], "models": ["team-a-*"]},
        rate_limit_rps=5,
        max_concurrent_jobs=2,
    )
    mia = parent["key"]
    later = (expires + timedelta(hours=1)).isoformat()
    for body, words in [
        ({"name": "someone-else"}, "other principals"),
        ({"name": "mia", "role": "admin"}, "role admin"),
        ({"name": "mia", "scopes": {"actions": ["infer", "read", "write"]}}, "actions or models"),
        ({"name": "mia", "scopes": {"models": ["*"]}}, "actions or models"),
        ({"name": "mia", "scopes": {"models": ["team-*"]}}, "actions or models"),
        ({"name": "mia", "expires_at": later}, "expires at"),
        ({"name": "mia", "rate_limit_rps": 6}, "rate limit"),
        ({"name": "mia", "max_concurrent_jobs": 3}, "concurrent jobs"),
    ]:
        r = await client.post("/v1/keys", json=body, headers=bearer(mia))
        assert r.status_code == 403, (body, r.text)
        assert words in r.json()["error"]["message"], (body, r.json())
    same = await new_key(client, "mia", as_key=mia)
    assert same["scopes"] == {"actions": ["infer", "read"], "models": ["team-a-*"]}
    assert (same["rate_limit_rps"], same["max_concurrent_jobs"]) == (5, 2)
    assert same["expires_at"] == parent["expires_at"]
    narrower = await new_key(client, "mia", as_key=mia, scopes={"actions": ["infer"], "models": ["team-a-x*"]})
    assert narrower["scopes"] == {"actions": ["infer"], "models": ["team-a-x*"]}
    unscoped_member = (await new_key(client, "max"))["key"]
    r = await client.post("/v1/keys", json={"name": "max", "role": "admin"}, headers=bearer(unscoped_member))
    assert r.status_code == 403
    r = await client.post("/v1/keys", json={"name": "max", "scopes": {"actions": ["admin"]}})
    assert r.status_code == 400 and "needs role admin" in r.text
    r = await client.post("/v1/keys", json={"name": "max", "scopes": {"models": ["../x*"]}})
    assert r.status_code == 400
    assert (await new_key(client, "max", as_key=unscoped_member, scopes={"actions": ["infer"]}))["role"] == "member"


async def test_an_expired_key_is_401(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    created = await new_key(client, "temp", expires_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    assert (await client.get("/v1/whoami", headers=bearer(created["key"]))).status_code == 200
    later = datetime.now(UTC) + timedelta(hours=2)
    monkeypatch.setattr(keys_module, "utcnow", lambda: later)  # the clock, not our code
    r = await client.get("/v1/whoami", headers=bearer(created["key"]))
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    r = await client.post("/v1/models/x/predict", json={"inputs": [1]}, headers=bearer(created["key"]))
    assert r.status_code == 401


async def test_rotation_keeps_both_keys_working_until_the_grace_ends(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    scopes = {"actions": ["infer", "read"], "models": ["ci-*"]}
    old = await new_key(client, "ci-bot", service_account=True, scopes=scopes, rate_limit_rps=50)
    r = await client.post(f"/v1/keys/{old['id']}/rotate", json={"grace_s": 3600})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["key"] != old["key"] and new["replaces"] == old["id"] and new["name"] == "ci-bot"
    assert (new["scopes"], new["service_account"], new["rate_limit_rps"]) == (scopes, True, 50)
    grace_end = datetime.fromisoformat(new["old_expires_at"])
    assert timedelta(minutes=59) < grace_end - datetime.now(UTC) <= timedelta(hours=1)
    for key in (old["key"], new["key"]):
        assert (await client.get("/v1/whoami", headers=bearer(key))).json()["principal"] == "ci-bot"
    listed = {k["id"]: k for k in (await client.get("/v1/keys")).json()["items"]}
    assert listed[new["id"]]["service_account"] is True and new["key"] not in str(listed)
    after = datetime.now(UTC) + timedelta(seconds=3601)
    monkeypatch.setattr(keys_module, "utcnow", lambda: after)
    assert (await client.get("/v1/whoami", headers=bearer(old["key"]))).status_code == 401
    assert (await client.get("/v1/whoami", headers=bearer(new["key"]))).status_code == 200


async def test_a_key_may_rotate_itself_and_no_other(client: httpx.AsyncClient) -> None:
    mine = await new_key(client, "rob")
    other = await new_key(client, "rob")
    r = await client.post(f"/v1/keys/{other['id']}/rotate", headers=bearer(mine["key"]))
    assert r.status_code == 403
    r = await client.post(f"/v1/keys/{mine['id']}/rotate", json={"grace_s": 0}, headers=bearer(mine["key"]))
    assert r.status_code == 201, r.text
    assert (await client.get("/v1/whoami", headers=bearer(mine["key"]))).status_code == 401  # grace 0: at once
    assert (await client.get("/v1/whoami", headers=bearer(r.json()["key"]))).status_code == 200
    assert (await client.post("/v1/keys/key_nope/rotate")).status_code == 404
    assert (await client.post(f"/v1/keys/{mine['id']}/rotate")).status_code == 409  # expired: nothing to rotate


async def test_no_key_in_any_error_log_line_audit_record_or_metric(
    client: httpx.AsyncClient, mnist_model: TrainedMnist, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await upload(client, "leaky", mnist_model.onnx_path, mnist_model.manifest)
    made = [
        await new_key(client, "lee", scopes={"actions": ["read"], "models": ["le*"]}, rate_limit_rps=0.01),
        await new_key(client, "lee"),
    ]
    rotated = (await client.post(f"/v1/keys/{made[1]['id']}/rotate")).json()
    secrets = [ADMIN_KEY, rotated["key"], *(k["key"] for k in made)]
    bodies: list[str] = []
    send: list[Callable[[], Any]] = []
    image = mnist_model.test_images[0].tolist()
    for key in (made[0]["key"], made[0]["key"] + "x", made[0]["key"][:-1]):
        send += [
            lambda k=key: client.post("/v1/models/leaky/predict", json={"inputs": image}, headers=bearer(k)),
            lambda k=key: client.get("/v1/models/leaky", headers=bearer(k)),
            lambda k=key: client.get("/v1/models/nope", headers=bearer(k)),
            lambda k=key: client.post("/v1/keys", json={"name": "lee", "role": "admin"}, headers=bearer(k)),
            lambda k=key: client.post(f"/v1/keys/{made[1]['id']}/rotate", headers=bearer(k)),
            lambda k=key: client.get("/v1/keys", headers=bearer(k)),
        ]
    for call in send:
        r = await call()
        assert r.status_code >= 400 or r.request.url.path == "/v1/models/leaky"
        bodies.append(r.text)
    bodies.append((await client.get("/metrics")).text)
    bodies.append((await client.get("/v1/audit", params={"limit": 500})).text)
    bodies.append((await client.get("/v1/keys", params={"include_revoked": True})).text)
    logged = [record.getMessage() for record in caplog.records]
    for secret in secrets:
        for text in bodies + logged:
            assert secret not in text and secret[SHOWN:] not in text


SHOWN = keys_module.SHOWN_PREFIX_LEN


# -- rate limits and quotas ---------------------------------------------------------------------------
async def test_rate_limit_per_key_answers_429_with_retry_after(
    client: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    await upload(client, "fast", mnist_model.onnx_path, mnist_model.manifest)
    await client.put("/v1/models/fast/permissions/rae", json={"role": "reader"})
    limited = (await new_key(client, "rae", rate_limit_rps=0.01))["key"]  # a burst of 1, then 1 per 100 s
    unlimited = (await new_key(client, "rae"))["key"]
    image = mnist_model.test_images[0].tolist()
    v2 = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": image}]}
    r = await client.post("/v1/models/fast/predict", json={"inputs": image}, headers=bearer(limited))
    assert r.status_code == 200
    for path, body in [("/v1/models/fast/predict", {"inputs": image}), ("/v2/models/fast/infer", v2)]:
        r = await client.post(path, json=body, headers=bearer(limited))
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["Retry-After"]) <= 100
        error = error_of(r)
        assert set(error) == {"code", "message", "details"} and error["code"] == "too_many_requests"
        assert "0.01 inference requests per second" in error["message"]
    minted = (await new_key(client, "rae", as_key=limited))["key"]  # draws from the same bucket
    r = await client.post("/v1/models/fast/predict", json={"inputs": image}, headers=bearer(minted))
    assert r.status_code == 429
    for _ in range(3):  # another key of the same principal has its own (unlimited) bucket
        r = await client.post("/v1/models/fast/predict", json={"inputs": image}, headers=bearer(unlimited))
        assert r.status_code == 200
    assert (await client.get("/v1/models/fast", headers=bearer(limited))).status_code == 200  # inference only


@pytest.fixture
async def limited(settings: Settings, mnist_model: TrainedMnist) -> AsyncIterator[httpx.AsyncClient]:
    """An app with server-wide limits: 3 predicts at once then 1 per 100 s, 1 job, about 1.5 uploads."""
    size = mnist_model.onnx_path.stat().st_size
    limits = {
        "rate_limit_rps": 0.01,
        "rate_limit_burst": 3,
        "max_concurrent_jobs_per_principal": 1,
        "max_storage_bytes_per_principal": size + size // 2,
    }
    app = create_app(settings.model_copy(update=limits))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=bearer(ADMIN_KEY)) as c:
        yield c
    app.state.ctx.runtime.close()
    app.state.ctx.db.dispose()


def train_spec(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "data": {"source": "builtin", "name": "digits", "preprocess": [{"scale": 0.0625}]},
        "model": {"layers": [{"dense": 16, "activation": "relu"}, {"dense": 10, "activation": "softmax"}]},
        "train": {"epochs": 1, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.01}},
    }


async def test_server_rate_limit_applies_to_every_key(limited: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    await upload(limited, "burst", mnist_model.onnx_path, mnist_model.manifest)
    image = mnist_model.test_images[0].tolist()
    codes = [(await limited.post("/v1/models/burst/predict", json={"inputs": image})).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


async def test_job_quota_answers_429_until_a_job_ends(limited: httpx.AsyncClient) -> None:
    headers = bearer((await new_key(limited, "joe"))["key"])
    job = {"kind": "train", "spec": train_spec("joe-digits")}
    first = await limited.post("/v1/jobs", json=job, headers=headers)
    assert first.status_code == 201, first.text
    r = await limited.post("/v1/jobs", json=job, headers=headers)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    message = r.json()["error"]["message"]
    assert "job quota" in message and "has 1 queued or running jobs, the most allowed is 1" in message
    assert (await limited.post("/v1/jobs", json=job)).status_code == 201  # another principal: its own count
    await limited.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=headers)
    assert (await limited.post("/v1/jobs", json=job, headers=headers)).status_code == 201


async def test_job_quota_and_write_scope_per_key(client: httpx.AsyncClient) -> None:
    one = bearer((await new_key(client, "jen", max_concurrent_jobs=1))["key"])
    job = {"kind": "train", "spec": train_spec("jen-digits")}
    assert (await client.post("/v1/jobs", json=job, headers=one)).status_code == 201
    assert (await client.post("/v1/jobs", json=job, headers=one)).status_code == 429
    reader = bearer((await new_key(client, "jen", scopes={"actions": ["read", "infer"]}))["key"])
    r = await client.post("/v1/jobs", json=job, headers=reader)
    assert r.status_code == 403 and r.json()["error"]["details"]["scope"] == "write"
    elsewhere = bearer((await new_key(client, "jen", scopes={"models": ["jen-other-*"]}))["key"])
    r = await client.post("/v1/jobs", json=job, headers=elsewhere)
    assert r.status_code == 403 and "outside this API key's models" in r.json()["error"]["message"]


async def test_storage_quota_refuses_an_upload_before_anything_is_stored(
    limited: httpx.AsyncClient, settings: Settings, mnist_model: TrainedMnist
) -> None:
    size = mnist_model.onnx_path.stat().st_size
    headers = bearer((await new_key(limited, "sam"))["key"])
    assert (await limited.post("/v1/models", json={"name": "sams"}, headers=headers)).status_code == 201
    files = [("file", ("m.onnx", mnist_model.onnx_path.read_bytes(), "application/octet-stream"))]
    r = await limited.post("/v1/models/sams/versions", files=files, headers=headers)
    assert r.status_code == 201, r.text
    before = sorted((settings.home / "blobs").rglob("*"))
    r = await limited.post("/v1/models/sams/versions", files=files, headers=headers)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    message = r.json()["error"]["message"]
    assert "storage quota exceeded" in message and f"{size:,}" in message and f"{size + size // 2:,}" in message
    assert sorted((settings.home / "blobs").rglob("*")) == before
    assert not any((settings.home / "tmp").iterdir())
    assert (await limited.get("/v1/models/sams/versions", headers=headers)).json()["total"] == 1
    other = bearer((await new_key(limited, "tom"))["key"])  # the quota is per principal
    await limited.put("/v1/models/sams/permissions/tom", json={"role": "writer"})
    assert (await limited.post("/v1/models/sams/versions", files=files, headers=other)).status_code == 201


async def test_a_scoped_key_creates_models_and_datasets_only_within_its_scope(client: httpx.AsyncClient) -> None:
    writer = await new_key(client, "team-a", scopes={"actions": ["read", "write"], "models": ["team-a-*"]})
    headers = bearer(writer["key"])
    inside = await client.post("/v1/models", json={"name": "team-a-one"}, headers=headers)
    assert inside.status_code == 201, inside.text
    outside = await client.post("/v1/models", json={"name": "other"}, headers=headers)
    assert outside.status_code == 403 and "outside this API key's models" in outside.json()["error"]["message"]
    infer_only = await new_key(client, "team-b", scopes={"actions": ["infer"]})
    files = {"file": ("d.csv", b"a,b\n1,2\n", "text/csv")}
    refused = await client.post("/v1/datasets", data={"name": "d"}, files=files, headers=bearer(infer_only["key"]))
    assert refused.status_code == 403 and "write" in refused.json()["error"]["message"]
    assert (await client.get("/v1/models/other")).status_code == 404
