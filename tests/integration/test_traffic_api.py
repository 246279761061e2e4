"""Traffic: weighted split between versions, a shadow that is compared but never returned, alias moves
under load with zero failed requests."""

from __future__ import annotations

import asyncio
import collections
import re

import httpx
import pytest

from tests.conftest import TrainedMnist, upload


@pytest.fixture
async def two_versions(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> TrainedMnist:
    await upload(client, "canary", mnist_model.onnx_path, mnist_model.manifest)
    await upload(client, "canary", mnist_model.onnx_path, mnist_model.manifest, create=False)
    await upload(client, "canary", mnist_model.onnx_path, mnist_model.manifest, create=False)
    return mnist_model


async def test_weighted_split_and_per_version_metrics(client: httpx.AsyncClient, two_versions: TrainedMnist) -> None:
    r = await client.put(
        "/v1/models/canary/deployment", json={"routes": [{"version": 1, "weight": 3}, {"version": 2, "weight": 1}]}
    )
    assert r.status_code == 200, r.text
    image = two_versions.test_images[0].tolist()
    seen = collections.Counter()
    for _ in range(200):
        body = (await client.post("/v1/models/canary/predict", json={"inputs": image})).json()
        seen[body["version"]] += 1
    assert set(seen) == {1, 2}
    assert 0.6 < seen[1] / 200 < 0.9  # 75% expected
    # exact references ignore the split
    assert (await client.post("/v1/models/canary:3/predict", json={"inputs": image})).json()["version"] == 3
    text = (await client.get("/metrics")).text
    counts = {
        v: float(n)
        for v, n in re.findall(r'modelport_predictions_total\{model="canary",outcome="ok",version="(\d)"\} (\S+)', text)
    }
    assert counts["1"] == seen[1] and counts["2"] == seen[2]


async def test_shadow_is_compared_and_never_returned(client: httpx.AsyncClient, two_versions: TrainedMnist) -> None:
    await client.put(
        "/v1/models/canary/deployment",
        json={"routes": [{"version": 1, "weight": 1}], "shadow": {"version": 3, "percent": 100}},
    )
    for i in range(5):
        body = (
            await client.post("/v1/models/canary/predict", json={"inputs": two_versions.test_images[i].tolist()})
        ).json()
        assert body["version"] == 1
    for _ in range(100):
        text = (await client.get("/metrics")).text
        if 'modelport_shadow_total{model="canary",outcome="agree",version="3"} 5.0' in text:
            break
        await asyncio.sleep(0.01)
    assert 'modelport_shadow_total{model="canary",outcome="agree",version="3"} 5.0' in text


async def test_a_request_the_shadow_version_answers_is_not_mirrored_to_it(
    client: httpx.AsyncClient, two_versions: TrainedMnist
) -> None:
    r = await client.put(
        "/v1/models/canary/deployment",
        json={
            "routes": [{"version": 1, "weight": 1}, {"version": 3, "weight": 1}],
            "shadow": {"version": 3, "percent": 100},
        },
    )
    assert r.status_code == 200, r.text
    served = collections.Counter()
    for i in range(40):
        body = (
            await client.post("/v1/models/canary/predict", json={"inputs": two_versions.test_images[i].tolist()})
        ).json()
        served[body["version"]] += 1
    assert served[1] and served[3]
    pattern = r'modelport_shadow_total\{model="canary",outcome="\w+",version="3"\} (\S+)'
    for _ in range(100):
        mirrored = sum(float(n) for n in re.findall(pattern, (await client.get("/metrics")).text))
        if mirrored >= served[1]:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # a wrongly mirrored request would be counted by now too
    text = (await client.get("/metrics")).text
    assert sum(float(n) for n in re.findall(pattern, text)) == served[1]


async def test_deployment_validation_and_protection(client: httpx.AsyncClient, two_versions: TrainedMnist) -> None:
    r = await client.put("/v1/models/canary/deployment", json={"routes": [{"version": 9, "weight": 1}]})
    assert r.status_code == 404
    r = await client.put("/v1/models/canary/deployment", json={"routes": [{"version": 1, "weight": -1}]})
    assert r.status_code == 422
    r = await client.put(
        "/v1/models/canary/deployment", json={"routes": [{"version": 1, "weight": 1}, {"version": 1, "weight": 2}]}
    )
    assert r.status_code == 422
    await client.put("/v1/models/canary/deployment", json={"routes": [{"version": 2, "weight": 1}]})
    assert (await client.delete("/v1/models/canary/versions/2")).status_code == 409
    assert (await client.patch("/v1/models/canary/versions/2", json={"status": "archived"})).status_code == 409
    assert (await client.get("/v1/models/canary/deployment")).json()["routes"] == [{"version": 2, "weight": 1.0}]
    assert (await client.delete("/v1/models/canary/deployment")).status_code == 204
    assert (await client.delete("/v1/models/canary/versions/2")).status_code == 204


async def test_moving_production_under_load_fails_nothing(
    client: httpx.AsyncClient, two_versions: TrainedMnist
) -> None:
    await client.put("/v1/models/canary/aliases/production", json={"version": 1})
    image = two_versions.test_images[0].tolist()
    stop = asyncio.Event()
    statuses: list[int] = []
    versions_seen: set[int] = set()

    async def caller() -> None:
        while not stop.is_set():
            r = await client.post("/v1/models/canary/predict", json={"inputs": image})
            statuses.append(r.status_code)
            if r.status_code == 200:
                versions_seen.add(r.json()["version"])

    tasks = [asyncio.create_task(caller()) for _ in range(8)]
    for version in (2, 1, 3, 2):
        await asyncio.sleep(0.15)
        r = await client.put("/v1/models/canary/aliases/production", json={"version": version})
        assert r.status_code == 200
    await asyncio.sleep(0.15)
    stop.set()
    await asyncio.gather(*tasks)
    assert statuses and set(statuses) == {200}
    assert versions_seen >= {1, 2}
