"""JSON depth: control-plane bodies (and an upload's manifest) past ``max_json_depth`` are a 400 naming
the setting, checked on the bytes before any parser runs; inference bodies nest only as deep as the
model's signature, and saying so is their 400."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelport.api.app import create_app
from modelport.api.guards import json_depth_over
from modelport.config import Settings
from tests.conftest import ADMIN_KEY, TrainedMnist, error_of, upload

JSON = {"Content-Type": "application/json"}


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def nested_object(levels: int) -> bytes:
    """An object ``levels`` deep: ``{"a": {"a": ... 1}}``."""
    return b'{"a":' * (levels - 1) + b'{"a":1' + b"}" * levels


def job_body(name: str = "deep-mlp") -> dict[str, Any]:
    spec = {
        "name": name,
        "data": {"source": "builtin", "name": "digits", "preprocess": [{"scale": 0.0625}]},
        "model": {"layers": [{"dense": 4, "activation": "relu"}, {"dense": 10, "activation": "softmax"}]},
        "train": {"epochs": 1},
    }
    return {"kind": "train", "spec": spec}


def assert_too_deep(r: httpx.Response, limit: int) -> None:
    assert r.status_code == 400, r.text[:300]
    error = r.json()["error"]
    assert error["code"] == "json_too_deep", error
    assert "max_json_depth" in error["message"] and str(limit) in error["message"], error
    assert error["details"] == {"max_json_depth": limit}


@pytest.mark.parametrize(
    "text",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b"[" * 100_000,  # unbalanced: still refused before a parser sees it
        b'{"kind": "train", "spec": ' + nested_object(100_000) + b"}",
    ],
)
async def test_a_100000_deep_body_is_a_fast_400_on_control_plane_routes(client: httpx.AsyncClient, text: bytes) -> None:
    await client.post("/v1/models", json={"name": "deep"})
    for method, path in [
        ("POST", "/v1/jobs"),
        ("PUT", "/v1/models/deep/deployment"),
        ("POST", "/v1/models"),
        ("PATCH", "/v1/models/deep"),
        ("POST", "/v1/keys"),
    ]:
        started = time.perf_counter()
        r = await client.request(method, path, content=text, headers=JSON)
        assert time.perf_counter() - started < 1.0, path
        assert_too_deep(r, 64)


async def test_the_limit_is_the_deepest_nesting_accepted(client: httpx.AsyncClient) -> None:
    assert_too_deep(await client.post("/v1/models", content=nested_object(65), headers=JSON), 64)
    r = await client.post("/v1/models", content=nested_object(64), headers=JSON)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed"  # past the edge: the schema
    strings = b'{"name": "in-strings", "description": "' + b"[{" * 5000 + b'"}'  # brackets in strings count nothing
    assert (await client.post("/v1/models", content=strings, headers=JSON)).status_code == 201


async def test_a_setting_override_moves_the_limit(settings: Settings) -> None:
    body = job_body()
    exact = depth(body)
    for limit, accepted in [(exact, True), (exact - 1, False)]:
        app = create_app(settings.model_copy(update={"max_json_depth": limit}))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(
                transport=transport, base_url="http://t", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            ) as c:
                r = await c.post("/v1/jobs", json=body)
        finally:
            app.state.ctx.runtime.close()
            app.state.ctx.db.dispose()
        if accepted:
            assert r.status_code == 201, r.text
        else:
            assert_too_deep(r, limit)


def test_the_setting_reads_its_environment_variable_and_keeps_its_bounds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELPORT_MAX_JSON_DEPTH", "7")
    assert Settings(home=tmp_path).max_json_depth == 7
    for wrong in ("0", "1001"):
        monkeypatch.setenv("MODELPORT_MAX_JSON_DEPTH", wrong)
        with pytest.raises(ValueError, match="max_json_depth"):
            Settings(home=tmp_path)


async def test_an_upload_manifest_is_held_to_the_same_limit(
    client: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    for levels, ok in [(62, True), (63, False)]:  # the manifest itself and "metrics" are two levels
        metrics = json.loads(nested_object(levels))
        manifest = {**mnist_model.manifest, "metrics": {"nested": metrics}}
        assert depth(manifest) == levels + 2
        r = await upload(client, f"manifest-{levels}", mnist_model.onnx_path, manifest)
        if ok:
            assert r.status_code == 201, r.text
        else:
            assert_too_deep(r, 64)
            assert "the manifest" in r.json()["error"]["message"]


async def test_inference_inputs_deeper_than_the_signature_say_so(
    client: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    await upload(client, "digits", mnist_model.onnx_path, mnist_model.manifest)
    for levels in (5, 900):  # numpy builds the first, refuses the second (past its 64 dimensions)
        inputs = b"[" * levels + b"1" + b"]" * levels
        r = await client.post("/v1/models/digits/predict", content=b'{"inputs": ' + inputs + b"}", headers=JSON)
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert f"nests {levels} levels deep; shape [N, 784] allows 2 (a batch) or 1 (one example)" in message
    v2 = json.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": 0}]})
    for levels, words in [(900, "data nests 900 levels deep; its shape [1, 784] has 2"), (2000, "deeper than 1024")]:
        text = v2.replace('"data": 0', '"data": ' + "[" * levels + "1" + "]" * levels).encode()
        r = await client.post("/v2/models/digits/infer", content=text, headers=JSON)
        assert r.status_code == 400 and words in error_of(r)["message"], r.text
    past = b'{"inputs": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    r = await client.post("/v1/models/digits/predict", content=past, headers=JSON)
    assert r.status_code == 400 and "deeper than 1024 levels" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize(
    ("text", "limit", "over"),
    [
        (b"[]", 1, False),
        (b"[[]]", 1, True),
        (b'{"a": [1]}', 2, False),
        (b'{"a": [[1]]}', 2, True),
        (b'["[[[[["]', 1, False),
        (b'["\\"[[[["]', 1, False),  # an escaped quote does not end the string
        (b'["\\\\", [[1]]]', 2, True),  # an escaped backslash does not escape the quote after it
        (b'["\\\\\\"[[", [1]]', 2, False),
        (b'{"a": "]]]", "b": [[[1]]]}', 3, True),
        (b'{"a": "]]]", "b": [[[1]]]}', 4, False),
        (b"[[], [], [], []]", 2, False),
        (b"[" * 64 + b"]" * 64, 64, False),
        (b"[" * 65 + b"]" * 65, 64, True),
    ],
)
def test_the_scan_counts_brackets_outside_strings(text: bytes, limit: int, over: bool) -> None:
    assert json_depth_over(text, limit) is over
    if not over:
        assert depth(json.loads(text)) <= limit
