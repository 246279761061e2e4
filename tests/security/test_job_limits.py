"""Jobs run in a process of their own: a memory limit, a time limit, none of the server's secrets.

A job over either limit is stopped and failed with a clear message while the worker (and the API beside
it) stays up and runs the next job; a job's code finds no key in its environment.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelport.config import Settings
from modelport.jobs import process
from modelport.jobs.worker import Worker

MEMORY_LIMIT = 1536 * 1024 * 1024
"""Enough for a job process (about 0.5 GB of libraries, counted as it is forked) and a small run."""


def digits(name: str, *, units: int = 16, epochs: int = 1, batch: int = 64, **model: Any) -> dict[str, Any]:
    layers = [{"dense": units, "activation": "relu"}, {"dense": 10, "activation": "softmax"}]
    return {
        "name": name,
        "data": {"source": "builtin", "name": "digits", "preprocess": [{"scale": 0.0625}]},
        "model": model or {"layers": layers},
        "train": {"epochs": epochs, "batch_size": batch, "optimizer": {"name": "adam", "lr": 0.01}},
    }


async def run_one(client: httpx.AsyncClient, worker: Worker, spec: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/v1/jobs", json={"kind": "train", "spec": spec})
    assert r.status_code == 201, r.text
    assert worker.step()
    done: dict[str, Any] = (await client.get(f"/v1/jobs/{r.json()['id']}")).json()
    return done


@pytest.fixture
def limited(settings: Settings) -> Settings:
    return settings.model_copy(update={"job_max_memory_bytes": MEMORY_LIMIT, "job_timeout_s": 60.0})


async def test_a_job_over_its_memory_limit_fails_and_the_worker_runs_the_next(
    client: httpx.AsyncClient, app: FastAPI, limited: Settings
) -> None:
    worker = Worker(limited)
    try:
        # 64 inputs x 8M units: 2 GB of weights, past the 1.5 GB limit at the first allocation
        hog = await run_one(client, worker, digits("hog", units=8_000_000))
        assert hog["status"] == "failed"
        assert hog["error"] == f"job exceeded its memory limit of {MEMORY_LIMIT} bytes"
        small = await run_one(client, worker, digits("small"))
        assert small["status"] == "succeeded", small["error"]
    finally:
        worker.close()
    assert (await client.get("/readyz")).status_code == 200


async def test_a_job_over_its_time_limit_is_killed_and_failed(
    client: httpx.AsyncClient, app: FastAPI, limited: Settings
) -> None:
    worker = Worker(limited.model_copy(update={"job_timeout_s": 2.0}))
    try:
        started = time.monotonic()
        slow = await run_one(client, worker, digits("slow", units=128, epochs=1000, batch=4))
        assert time.monotonic() - started < 30
        assert slow["status"] == "failed" and slow["error"] == "job exceeded its time limit of 2 s"
        assert slow["progress"].get("epoch", 0) < 1000
    finally:
        worker.close()
    assert not (limited.jobs_dir / slow["id"]).exists()  # its folder is cleaned like any failed job's


async def test_a_job_never_sees_the_servers_keys(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [n for n in process.JOB_SECRET_ENV if not n.endswith("_FILE")]  # a key file's path is no secret
    secrets = [f"mp_secret-{i}-0123456789abcdefghijklmnop" for i in range(len(names))]
    for name, value in zip(names, secrets, strict=True):
        monkeypatch.setenv(name, value)
    canary = "mp_canary-0123456789abcdefghijklmnop"
    monkeypatch.setenv("MODELPORT_PROBE_CANARY", canary)  # not a secret: the probe must find it
    forkserver_stop()  # so that it starts again in the worker, from this environment
    worker = Worker(settings)
    try:
        seen = await run_one(client, worker, digits("canary", **probe([canary])))
        assert seen["status"] == "failed" and "can read 1 secret(s)" in seen["error"]
        done = await run_one(client, worker, digits("probe", **probe(secrets)))
        assert done["status"] == "succeeded", done["error"]
    finally:
        worker.close()


def probe(secrets: list[str]) -> dict[str, Any]:
    return {"python": "tests.security._job_probe:SecretProbe", "kwargs": {"secrets": secrets}}


def forkserver_stop() -> None:
    from multiprocessing import forkserver

    forkserver._forkserver._stop()  # type: ignore[attr-defined]  # as CPython's own tests stop it
