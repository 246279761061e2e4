"""Versions: upload, numbering, immutability, manifest, download, archive, delete."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx

from tests.conftest import TrainedMnist, upload


async def test_upload_onnx_infers_signature_and_numbers_versions(
    client: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    r = await upload(client, "mnist", mnist_model.onnx_path, mnist_model.manifest)
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["version"] == 1 and v["format"] == "onnx"
    sig = v["manifest"]["signature"]
    assert sig["inputs"][0]["name"] == "input" and sig["inputs"][0]["shape"] == [-1, 784]
    assert sig["outputs"][0]["name"] == "probabilities"
    assert v["manifest"]["files"] == {"mnist-mlp.onnx": hashlib.sha256(mnist_model.onnx_path.read_bytes()).hexdigest()}
    r2 = await upload(client, "mnist", mnist_model.onnx_path, mnist_model.manifest, create=False)
    assert r2.json()["version"] == 2
    listed = (await client.get("/v1/models/mnist/versions")).json()
    assert [x["version"] for x in listed["items"]] == [2, 1] and listed["total"] == 2
    assert (await client.get("/v1/models/mnist")).json()["latest_version"] == 2


async def test_identical_files_are_stored_once(client: httpx.AsyncClient, mnist_model: TrainedMnist, app) -> None:  # type: ignore[no-untyped-def]
    await upload(client, "a", mnist_model.onnx_path, mnist_model.manifest)
    await upload(client, "b", mnist_model.onnx_path, mnist_model.manifest)
    store = app.state.ctx.store
    blobs = [p for p in store.root.rglob("*") if p.is_file()]
    # one model file + one manifest per version (the manifests differ only if the files differ: same here)
    assert len(blobs) == 2


async def test_versions_are_immutable(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    await upload(client, "imm", mnist_model.onnx_path, mnist_model.manifest)
    r = await client.patch("/v1/models/imm/versions/1", json={"manifest": {"format": "onnx"}})
    assert r.status_code == 422
    r = await client.put("/v1/models/imm/versions/1", json={})
    assert r.status_code == 405
    r = await client.patch("/v1/models/imm/versions/1", json={"description": "better words"})
    assert r.status_code == 200 and r.json()["description"] == "better words"


async def test_download_files_and_manifest(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    await upload(client, "dl", mnist_model.onnx_path, mnist_model.manifest)
    r = await client.get("/v1/models/dl/versions/1/files/mnist-mlp.onnx")
    assert r.status_code == 200 and r.content == mnist_model.onnx_path.read_bytes()
    r = await client.get("/v1/models/dl/versions/1/files/modelport.json")
    manifest = json.loads(r.content)
    assert manifest["format"] == "onnx" and manifest["labels"][3] == "3"
    r = await client.get("/v1/models/dl/versions/1/files/other.bin")
    assert r.status_code == 404 and r.json()["error"]["code"] == "file_not_found"


async def test_archive_and_delete_respect_aliases(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    await upload(client, "arch", mnist_model.onnx_path, mnist_model.manifest)
    await upload(client, "arch", mnist_model.onnx_path, mnist_model.manifest, create=False)
    await client.put("/v1/models/arch/aliases/production", json={"version": 1})
    r = await client.patch("/v1/models/arch/versions/1", json={"status": "archived"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "alias_in_use"
    assert (await client.delete("/v1/models/arch/versions/1")).status_code == 409
    r = await client.patch("/v1/models/arch/versions/2", json={"status": "archived"})
    assert r.status_code == 200 and r.json()["status"] == "archived"
    r = await client.post("/v1/models/arch:2/predict", json={"inputs": [0.0] * 784})
    assert r.status_code == 409
    assert (await client.delete("/v1/models/arch/versions/2")).status_code == 204
    assert (await client.get("/v1/models/arch/versions/2")).status_code == 404


async def test_unknown_version_is_404_and_bad_version_400(client: httpx.AsyncClient) -> None:
    await client.post("/v1/models", json={"name": "empty"})
    r = await client.get("/v1/models/empty/versions/3")
    assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_found"
    r = await client.get("/v1/models/empty/versions/abc")
    assert r.status_code == 400
    r = await client.post("/v1/models/empty/predict", json={"inputs": [1.0]})
    assert r.status_code == 404 and "no versions" in r.json()["error"]["message"]


async def test_concurrent_uploads_get_unique_numbers(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    await client.post("/v1/models", json={"name": "race"})
    results = await asyncio.gather(
        *[upload(client, "race", mnist_model.onnx_path, mnist_model.manifest, create=False) for _ in range(8)]
    )
    assert all(r.status_code == 201 for r in results), [r.text for r in results if r.status_code != 201]
    assert sorted(r.json()["version"] for r in results) == list(range(1, 9))


async def test_lineage_follows_parents(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    await upload(client, "lin", mnist_model.onnx_path, mnist_model.manifest)
    child = {**mnist_model.manifest, "lineage": {"parent": "lin:1", "transform": "copy"}}
    await upload(client, "lin", mnist_model.onnx_path, child, create=False)
    chain = (await client.get("/v1/models/lin/versions/2/lineage")).json()["chain"]
    assert [(c["model"], c["version"]) for c in chain] == [("lin", 2), ("lin", 1)]
    assert chain[0]["transform"] == "copy"


async def test_upload_errors_are_clear(client: httpx.AsyncClient, mnist_model: TrainedMnist, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await client.post("/v1/models", json={"name": "bad"})
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"not an onnx model at all")
    r = await upload(client, "bad", junk, create=False)
    assert r.status_code == 400
    unknown = tmp_path / "model.xyz"
    unknown.write_bytes(b"1234")
    r = await upload(client, "bad", unknown, create=False)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_format"
    r = await client.post("/v1/models/bad/versions", json={"x": 1})  # an upload is multipart, never JSON
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]["message"]
    r = await upload(client, "bad", mnist_model.onnx_path, {"preprocess": [{"scale": 1, "shift": 2}]}, create=False)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_manifest"
    r = await upload(client, "nomodel", mnist_model.onnx_path, create=False)
    assert r.status_code == 404
    versions = (await client.get("/v1/models/bad/versions")).json()
    assert versions["total"] == 0
