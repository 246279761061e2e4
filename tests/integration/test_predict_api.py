"""Inference: raw pixels in, labels and probabilities out, for one example or a batch; errors are 4xx."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.conftest import TrainedMnist, error_of, upload


@pytest.fixture
async def served(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> TrainedMnist:
    r = await upload(client, "mnist", mnist_model.onnx_path, mnist_model.manifest)
    assert r.status_code == 201, r.text
    return mnist_model


async def test_predict_one_example_returns_label_and_probabilities(
    client: httpx.AsyncClient, served: TrainedMnist
) -> None:
    image = served.test_images[0].astype(int).tolist()  # raw pixels 0..255
    r = await client.post("/v1/models/mnist/predict", json={"inputs": image})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "mnist" and body["version"] == 1
    probs = np.asarray(body["outputs"])
    assert probs.shape == (10,)
    np.testing.assert_allclose(probs, served.torch_probs[0], atol=1e-5)
    assert body["predictions"]["label"] == str(int(np.argmax(served.torch_probs[0])))
    assert body["predictions"]["score"] == pytest.approx(float(probs.max()), abs=1e-6)


async def test_predict_batch_matches_torch_and_is_accurate(client: httpx.AsyncClient, served: TrainedMnist) -> None:
    batch = served.test_images[:200].astype(int).tolist()
    r = await client.post("/v1/models/mnist/predict", json={"inputs": batch})
    body = r.json()
    probs = np.asarray(body["outputs"])
    assert probs.shape == (200, 10)
    np.testing.assert_allclose(probs, served.torch_probs[:200], atol=1e-5)
    labels = np.array([int(p["label"]) for p in body["predictions"]])
    assert (labels == served.test_labels[:200]).mean() > 0.85


async def test_refs_by_version_alias_and_default(client: httpx.AsyncClient, served: TrainedMnist) -> None:
    await upload(client, "mnist", served.onnx_path, served.manifest, create=False)
    image = served.test_images[0].tolist()
    assert (await client.post("/v1/models/mnist/predict", json={"inputs": image})).json()["version"] == 2
    await client.put("/v1/models/mnist/aliases/production", json={"version": 1})
    assert (await client.post("/v1/models/mnist/predict", json={"inputs": image})).json()["version"] == 1
    assert (await client.post("/v1/models/mnist:2/predict", json={"inputs": image})).json()["version"] == 2
    await client.put("/v1/models/mnist/aliases/staging", json={"version": 2})
    assert (await client.post("/v1/models/mnist@staging/predict", json={"inputs": image})).json()["version"] == 2
    r = await client.post("/v1/models/mnist@nope/predict", json={"inputs": image})
    assert r.status_code == 404 and r.json()["error"]["code"] == "alias_not_found"
    r = await client.post("/v1/models/mnist:9/predict", json={"inputs": image})
    assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_found"


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ([1.0] * 783, "shape [N, 784]"),
        ([[1.0] * 784, [1.0] * 10], "rectangular"),
        (["a"] * 784, "numbers"),
        ([float("nan")] * 784, None),
        ({"wrong": [1.0] * 784}, "named input"),
        ("pixels", "array"),
        ([], "shape [N, 784]"),
    ],
)
async def test_bad_inputs_are_400_with_a_message(
    client: httpx.AsyncClient, served: TrainedMnist, inputs: object, fragment: str | None
) -> None:
    import orjson

    body = (
        orjson.dumps({"inputs": inputs})
        if fragment is not None
        else b'{"inputs": [' + b",".join([b"NaN"] * 784) + b"]}"
    )
    r = await client.post("/v1/models/mnist/predict", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] in ("invalid_input", "bad_request")
    if fragment:
        assert fragment in err["message"] or fragment in str(err["details"]), err


async def test_nan_is_refused(client: httpx.AsyncClient, served: TrainedMnist) -> None:
    image = [0.0] * 784
    payload = str({"inputs": image}).replace("'", '"').replace("0.0]", "NaN]", 1)
    r = await client.post("/v1/models/mnist/predict", content=payload, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    big = "[" + ",".join(["1e300"] * 784) + "]"
    r = await client.post(
        "/v1/models/mnist/predict", content='{"inputs": ' + big + "}", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "Infinity" in r.json()["error"]["message"]


async def test_malformed_and_oversized_bodies(client: httpx.AsyncClient, served: TrainedMnist, settings) -> None:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/models/mnist/predict", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    r = await client.post("/v1/models/mnist/predict", content=b'{"x": 1}', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "inputs" in r.json()["error"]["message"]
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = await client.post("/v1/models/mnist/predict", content=deep, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = await client.post(
        "/v1/models/mnist/predict",
        content=b"x" * (settings.max_predict_bytes + 1),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = await client.post("/v1/models/mnist/predict", content=b"inputs=1", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


async def test_unknown_model_and_bad_ref(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/ghost/predict", json={"inputs": [1.0]})
    assert r.status_code == 404
    r = await client.post("/v1/models/Ghost:0/predict", json={"inputs": [1.0]})
    assert r.status_code == 400


async def test_loaded_once_per_process(client: httpx.AsyncClient, served: TrainedMnist, app) -> None:  # type: ignore[no-untyped-def]
    for _ in range(3):
        await client.post("/v1/models/mnist/predict", json={"inputs": served.test_images[0].tolist()})
    loaded = app.state.ctx.runtime.loaded()
    assert [(i.model, i.version) for i in loaded] == [("mnist", 1)]


async def test_v2_metadata_and_infer(client: httpx.AsyncClient, served: TrainedMnist) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    meta = (await client.get("/v2/models/mnist")).json()
    assert meta["name"] == "mnist" and meta["versions"] == ["1"] and meta["platform"] == "onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}]
    assert (await client.get("/v2/models/mnist/versions/1/ready")).json()["ready"] is True
    images = served.test_images[:3]
    req = {
        "id": "r1",
        "inputs": [{"name": "input", "shape": [3, 784], "datatype": "FP32", "data": images.reshape(-1).tolist()}],
    }
    r = await client.post("/v2/models/mnist/versions/1/infer", json=req)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "mnist" and body["model_version"] == "1" and body["id"] == "r1"
    out = body["outputs"][0]
    assert out["name"] == "probabilities" and out["shape"] == [3, 10] and out["datatype"] == "FP32"
    np.testing.assert_allclose(np.asarray(out["data"]).reshape(3, 10), served.torch_probs[:3], atol=1e-5)
    bad = {"inputs": [{"name": "input", "shape": [2, 784], "datatype": "FP32", "data": [1.0] * 10}]}
    r = await client.post("/v2/models/mnist/infer", json=bad)
    assert r.status_code == 400 and "do not fill shape" in error_of(r)["message"]


async def test_v2_outputs_requested_by_name_and_an_unknown_one_is_a_400(
    client: httpx.AsyncClient, served: TrainedMnist
) -> None:
    tensor = {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": served.test_images[0].tolist()}
    r = await client.post("/v2/models/mnist/infer", json={"inputs": [tensor], "outputs": [{"name": "probabilities"}]})
    assert r.status_code == 200 and [o["name"] for o in r.json()["outputs"]] == ["probabilities"]
    r = await client.post("/v2/models/mnist/infer", json={"inputs": [tensor], "outputs": [{"name": "output"}]})
    assert r.status_code == 400, r.text
    error = error_of(r)
    assert error["message"] == "unknown output 'output': this model's outputs are probabilities"
    assert error["details"] == {"outputs": ["probabilities"]}
