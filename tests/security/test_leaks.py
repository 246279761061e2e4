"""No response carries a stack trace, a server path or a key; wrong keys and wrong tenants learn nothing."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.conftest import ADMIN_KEY, TrainedMnist, member_key, upload


async def test_errors_never_echo_paths_traces_or_keys(
    client: httpx.AsyncClient,
    app,
    mnist_model: TrainedMnist,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    caplog.set_level(logging.INFO)
    home = str(app.state.ctx.settings.home.resolve())
    await upload(client, "leak", mnist_model.onnx_path, mnist_model.manifest)
    probes = [
        client.post("/v1/models/leak/predict", content=b"{bad"),
        client.post("/v1/models/leak/predict", json={"inputs": [[1] * 5]}),
        client.get("/v1/models/leak/versions/1/files/../../x"),
        client.post("/v1/models/leak/versions", files=[("file", ("x.onnx", b"junk", "a/b"))]),
        client.get("/v1/models/leak", headers={"Authorization": "Bearer mp_not-a-real-key-000000000000000000"}),
        client.post("/v1/keys", json={"name": "x", "role": "root"}),
    ]
    for probe in probes:
        r = await probe
        assert r.status_code < 500, r.text
        for needle in (home, "Traceback", 'File "', ADMIN_KEY, "site-packages", "/tmp/"):
            assert needle not in r.text, (needle, r.text)
    for record in caplog.records:
        line = record.getMessage()
        assert ADMIN_KEY not in line and "Traceback" not in line and home not in line


async def test_other_tenants_models_look_absent(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    await upload(client, "private", mnist_model.onnx_path, mnist_model.manifest)
    headers = {"Authorization": f"Bearer {await member_key(client, 'mallory')}"}
    absent = (await client.get("/v1/models/does-not-exist", headers=headers)).json()
    hidden = (await client.get("/v1/models/private", headers=headers)).json()
    assert absent["error"]["code"] == hidden["error"]["code"] == "model_not_found"
    for path in [
        "/v1/models/private/versions",
        "/v1/models/private/versions/1",
        "/v1/models/private/versions/1/files/modelport.json",
        "/v1/models/private/aliases",
        "/v1/models/private/versions/1/lineage",
        "/v2/models/private",
    ]:
        assert (await client.get(path, headers=headers)).status_code == 404, path
    r = await client.post("/v1/models/private:1/predict", json={"inputs": [0] * 784}, headers=headers)
    assert r.status_code == 404
    r = await client.post("/v1/models/private:99/predict", json={"inputs": [0] * 784}, headers=headers)
    assert r.json()["error"]["code"] == "model_not_found"  # no hint that version 99 is missing
