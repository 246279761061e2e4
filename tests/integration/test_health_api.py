"""Health, readiness, metrics and the error shape of unknown routes."""

from __future__ import annotations

import httpx

from tests.conftest import TrainedMnist, upload


async def test_readyz_reports_checks(client: httpx.AsyncClient) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "store": "ok"}


async def test_metrics_count_routes_models_and_loaded(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    await upload(client, "met", mnist_model.onnx_path, mnist_model.manifest)
    await client.post("/v1/models/met/predict", json={"inputs": mnist_model.test_images[0].tolist()})
    text = (await client.get("/metrics")).text
    assert 'modelport_http_requests_total{method="POST",route="/v1/models/{ref}/predict",status="200"} 1.0' in text
    assert 'modelport_predictions_total{model="met",outcome="ok",version="1"} 1.0' in text
    assert "modelport_loaded_models 1.0" in text
    assert 'modelport_http_request_duration_seconds_bucket{le="0.005",method="POST"' in text


async def test_predictions_are_counted_per_version_from_every_protocol_and_never_per_unknown_name(
    client: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    await upload(client, "met", mnist_model.onnx_path, mnist_model.manifest)
    image = mnist_model.test_images[0]
    assert (await client.post("/v1/models/met/predict", json={"inputs": image.tolist()})).status_code == 200
    tensor = {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": image.tolist()}
    r = await client.post("/v2/models/met/infer", json={"inputs": [tensor]})
    assert r.status_code == 200, r.text
    # reached version 1, then failed: counted as its error
    assert (await client.post("/v1/models/met/predict", json={"inputs": [1, 2, 3]})).status_code == 400
    # refused before a version was chosen: counted by route, never under a name the caller made up
    for name in ("made-up-1", "made-up-2"):
        assert (await client.post(f"/v1/models/{name}/predict", json={"inputs": [1]})).status_code == 404
        assert (await client.post(f"/v2/models/{name}/infer", json={"inputs": [tensor]})).status_code == 404
    text = (await client.get("/metrics")).text
    assert 'modelport_predictions_total{model="met",outcome="ok",version="1"} 2.0' in text
    assert 'modelport_predictions_total{model="met",outcome="error",version="1"} 1.0' in text
    assert 'modelport_prediction_duration_seconds_count{model="met",version="1"} 2.0' in text
    assert "made-up" not in text and 'version="-"' not in text
    assert 'route="/v1/models/{ref}/predict",status="404"} 2.0' in text


async def test_unknown_route_and_method_use_the_error_shape(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "route_not_found"
    r = await client.put("/v1/models")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["x-request-id"]


async def test_openapi_is_served(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/models/{ref}/predict" in spec["paths"]
