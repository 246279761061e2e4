"""Uploaded datasets over the real app: upload/list/get/delete, names and tenants, pickle refused, and a
real training job that reads one by name and records its hash in the version's lineage."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sklearn.datasets import load_digits
from sqlalchemy import func, select

from modelport.jobs.worker import Worker
from modelport.registry.tables import Dataset
from tests.conftest import member_key


def npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def digits_npz() -> bytes:
    bunch = load_digits()
    return npz_bytes(x=np.asarray(bunch.data, dtype=np.float32), y=np.asarray(bunch.target, dtype=np.int64))


def digits_csv() -> bytes:
    bunch = load_digits()
    header = ",".join([f"p{i}" for i in range(64)] + ["label"])
    rows = [",".join(str(int(v)) for v in [*x, y]) for x, y in zip(bunch.data[:200], bunch.target[:200], strict=True)]
    return ("\n".join([header, *rows]) + "\n").encode()


async def put(
    client: httpx.AsyncClient,
    name: str,
    filename: str,
    data: bytes,
    headers: dict[str, str] | None = None,
    **form: str,
) -> httpx.Response:
    files = {"file": (filename, data, "application/octet-stream")}
    return await client.post("/v1/datasets", files=files, data={"name": name, **form}, headers=headers)


def blob_count(app: FastAPI) -> int:
    root: Path = app.state.ctx.store.root
    return sum(1 for p in root.rglob("*") if p.is_file())


def row_count(app: FastAPI) -> int:
    with app.state.ctx.db.read() as s:
        return int(s.scalar(select(func.count(Dataset.id))) or 0)


async def test_upload_list_get_and_delete(client: httpx.AsyncClient, app: FastAPI) -> None:
    data = digits_npz()
    r = await put(client, "digits-npz", "digits.npz", data, description="sklearn digits")
    assert r.status_code == 201, r.text
    view = r.json()
    assert (view["name"], view["format"], view["filename"]) == ("digits-npz", "npz", "digits.npz")
    assert view["size_bytes"] == len(data) and len(view["sha256"]) == 64
    assert view["owner"] == "admin" and view["description"] == "sklearn digits" and view["created_at"]
    assert app.state.ctx.store.exists(view["sha256"])

    r = await put(client, "digits-csv", "digits.csv", digits_csv())
    assert r.status_code == 201 and r.json()["format"] == "csv"

    page = (await client.get("/v1/datasets")).json()
    assert [d["name"] for d in page["items"]] == ["digits-csv", "digits-npz"] and page["total"] == 2
    assert (await client.get("/v1/datasets/digits-npz")).json() == view
    audit = (await client.get("/v1/audit", params={"action": "dataset."})).json()["items"]
    assert [a["target"] for a in audit] == ["dataset:digits-csv", "dataset:digits-npz"]

    assert (await client.delete("/v1/datasets/digits-csv")).status_code == 204
    r = await client.get("/v1/datasets/digits-csv")
    assert r.status_code == 404 and r.json()["error"]["code"] == "dataset_not_found"


@pytest.mark.parametrize(
    ("name", "filename", "form", "status", "code"),
    [
        ("Bad Name", "d.npz", {}, 400, "invalid_name"),
        ("ok", "../d.npz", {}, 400, "invalid_manifest"),
        ("ok", "d.txt", {}, 400, "bad_request"),
        ("ok", "d.bin", {"format": "pickle"}, 400, "bad_request"),
        ("ok", "d.parquet", {}, 400, "invalid_artifact"),
    ],
)
async def test_bad_uploads_are_400(
    client: httpx.AsyncClient, app: FastAPI, name: str, filename: str, form: dict[str, str], status: int, code: str
) -> None:
    r = await put(client, name, filename, npz_bytes(x=np.zeros(3)), **form)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert row_count(app) == 0 and blob_count(app) == 0


async def test_a_duplicate_name_is_409(client: httpx.AsyncClient) -> None:
    assert (await put(client, "twice", "a.npz", npz_bytes(x=np.zeros(3)))).status_code == 201
    r = await put(client, "twice", "b.npz", npz_bytes(x=np.ones(3)))
    assert r.status_code == 409 and r.json()["error"]["code"] == "dataset_exists"


async def test_an_npz_that_needs_pickle_is_refused_and_leaves_nothing(client: httpx.AsyncClient, app: FastAPI) -> None:
    evil = npz_bytes(x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    r = await put(client, "evil", "evil.npz", evil)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "unsafe_format" and "pickle" in r.json()["error"]["message"]
    assert row_count(app) == 0 and blob_count(app) == 0
    assert (await client.get("/v1/datasets/evil")).status_code == 404


async def test_members_see_only_their_own_datasets(client: httpx.AsyncClient) -> None:
    alice = {"Authorization": f"Bearer {await member_key(client, 'alice')}"}
    bob = {"Authorization": f"Bearer {await member_key(client, 'bob')}"}
    assert (await put(client, "alices", "a.npz", npz_bytes(x=np.zeros(3)), headers=alice)).status_code == 201
    for method in ("GET", "DELETE"):
        r = await client.request(method, "/v1/datasets/alices", headers=bob)
        assert r.status_code == 404 and r.json()["error"]["code"] == "dataset_not_found"
    assert (await client.get("/v1/datasets", headers=bob)).json()["items"] == []
    assert [d["name"] for d in (await client.get("/v1/datasets", headers=alice)).json()["items"]] == ["alices"]
    assert (await client.get("/v1/datasets/alices")).json()["owner"] == "alice"  # admins see all
    spec = train_spec("bobs-model", "alices")
    r = await client.post("/v1/jobs", json={"kind": "train", "spec": spec}, headers=bob)
    assert r.status_code == 404 and r.json()["error"]["code"] == "dataset_not_found"
    assert (await client.get("/v1/jobs", headers=bob)).json()["total"] == 0


def train_spec(model: str, dataset: str) -> dict[str, Any]:
    """A real, tiny run on an uploaded NPZ of sklearn's digits (64-16-10 MLP, one epoch)."""
    data = {
        "source": "dataset",
        "name": dataset,
        "format": "npz",
        "validation_split": 0.1,
        "test_split": 0.2,
        "preprocess": [{"scale": 0.0625}],
    }
    return {
        "name": model,
        "data": data,
        "model": {"layers": [{"dense": 16, "activation": "relu"}, {"dense": 10, "activation": "softmax"}]},
        "train": {"epochs": 1, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.01}},
    }


async def test_a_training_job_reads_an_uploaded_dataset(client: httpx.AsyncClient, app: FastAPI) -> None:
    alice = {"Authorization": f"Bearer {await member_key(client, 'alice')}"}
    uploaded = (await put(client, "digits-npz", "digits.npz", digits_npz(), headers=alice)).json()
    job = await client.post(
        "/v1/jobs", json={"kind": "train", "spec": train_spec("digits-ds", "digits-npz")}, headers=alice
    )
    assert job.status_code == 201, job.text
    worker = Worker(app.state.ctx.settings)
    try:
        assert worker.step()
    finally:
        worker.close()
    done = (await client.get(f"/v1/jobs/{job.json()['id']}", headers=alice)).json()
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["metrics"]["val_accuracy"] > 0.5
    version = (await client.get("/v1/models/digits-ds/versions/1", headers=alice)).json()
    assert version["manifest"]["lineage"]["dataset_sha256"] == uploaded["sha256"]
    assert version["manifest"]["lineage"]["job"] == job.json()["id"]
    logs = (await client.get(f"/v1/jobs/{job.json()['id']}/logs", headers=alice)).text
    assert "dataset digits-npz" in logs


async def test_a_tampered_dataset_blob_fails_the_job(client: httpx.AsyncClient, app: FastAPI) -> None:
    uploaded = (await put(client, "digits-npz", "digits.npz", digits_npz())).json()
    job = (await client.post("/v1/jobs", json={"kind": "train", "spec": train_spec("digits-t", "digits-npz")})).json()
    blob = app.state.ctx.store.path_of(uploaded["sha256"])
    data = blob.read_bytes()
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one bit pattern changed, same size
    worker = Worker(app.state.ctx.settings)
    try:
        assert worker.step()
    finally:
        worker.close()
    done = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert done["status"] == "failed" and "sha256" in done["error"]
