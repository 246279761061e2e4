"""Concurrent uploads to one model get distinct version numbers on the database in use (SQLite, and
PostgreSQL in CI: the version counter is bumped under a row lock there). The real-server variant with
50 uploads is ``tests/security/test_concurrency.py``."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import TrainedMnist, upload


async def test_concurrent_uploads_get_distinct_versions(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    assert (await client.post("/v1/models", json={"name": "race"})).status_code == 201
    answers = await asyncio.gather(
        *(upload(client, "race", mnist_model.onnx_path, mnist_model.manifest, create=False) for _ in range(20))
    )
    assert [r.status_code for r in answers] == [201] * 20, [r.text for r in answers if r.status_code != 201]
    assert sorted(r.json()["version"] for r in answers) == list(range(1, 21))
