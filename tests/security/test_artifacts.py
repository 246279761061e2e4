"""Hostile artifacts: pickles, tampered blobs, path tricks in names and bundle paths."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import TrainedMnist, upload


class Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


@pytest.mark.parametrize("filename", ["model.pkl", "model.pickle", "model.joblib", "weights.bin", "model.pt"])
async def test_pickles_are_refused_and_leave_nothing(client: httpx.AsyncClient, app, filename: str) -> None:  # type: ignore[no-untyped-def]
    await client.post("/v1/models", json={"name": "evil"})
    payload = pickle.dumps(Boom(), protocol=4)
    files = [("file", (filename, payload, "application/octet-stream"))]
    r = await client.post("/v1/models/evil/versions", files=files)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] in ("unsafe_format", "unsupported_format")
    store = app.state.ctx.store
    assert not [p for p in store.root.rglob("*") if p.is_file()], "a refused upload stored a blob"
    assert not list(store.tmp.iterdir()), "a refused upload left a temp file"
    assert (await client.get("/v1/models/evil/versions")).json()["total"] == 0


async def test_torch_save_zip_is_refused(client: httpx.AsyncClient, tmp_path: Path) -> None:
    import torch

    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, path)
    r = await upload(client, "tsave", path)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsafe_format"
    assert "pickle" in r.json()["error"]["message"]


async def test_pickle_hidden_beside_a_valid_model_is_refused(
    client: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    await client.post("/v1/models", json={"name": "hidden"})
    files = [
        ("file", ("mnist-mlp.onnx", mnist_model.onnx_path.read_bytes(), "application/octet-stream")),
        ("file", ("extra.pkl", pickle.dumps(Boom()), "application/octet-stream")),
    ]
    r = await client.post("/v1/models/hidden/versions", files=files)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsafe_format"


async def test_tampered_blob_is_never_served(client: httpx.AsyncClient, app, mnist_model: TrainedMnist) -> None:  # type: ignore[no-untyped-def]
    r = await upload(client, "tamper", mnist_model.onnx_path, mnist_model.manifest)
    sha = r.json()["manifest"]["files"]["mnist-mlp.onnx"]
    blob = app.state.ctx.store.path_of(sha)
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.write_bytes(bytes(data))
    r = await client.post("/v1/models/tamper/predict", json={"inputs": mnist_model.test_images[0].tolist()})
    assert r.status_code == 500 and r.json()["error"]["code"] == "integrity_error"
    assert str(app.state.ctx.settings.home) not in r.text
    r = await client.get("/v1/models/tamper/versions/1/files/mnist-mlp.onnx")
    assert r.status_code == 500 and r.json()["error"]["code"] == "integrity_error"


@pytest.mark.parametrize(
    "path",
    [
        "../modelport.db",
        "..%2fmodelport.db",
        "%2e%2e/%2e%2e/etc/passwd",
        "sub/../../x",
        "/etc/passwd",
        "..\\..\\x",
        "a%00b",
        "mnist-mlp.onnx%23",
    ],
)
async def test_download_paths_cannot_escape(client: httpx.AsyncClient, mnist_model: TrainedMnist, path: str) -> None:
    await upload(client, "paths", mnist_model.onnx_path, mnist_model.manifest)
    r = await client.get(f"/v1/models/paths/versions/1/files/{path}")
    assert r.status_code in (400, 404), (path, r.status_code)
    assert b"root:" not in r.content and b"SQLite" not in r.content


@pytest.mark.parametrize("filename", ["../escape.onnx", "/abs.onnx", "a\\b.onnx", ".hidden.onnx", "x" * 300])
async def test_upload_file_names_are_validated(
    client: httpx.AsyncClient, mnist_model: TrainedMnist, filename: str
) -> None:
    await client.post("/v1/models", json={"name": "names"})
    files = [("file", (filename, mnist_model.onnx_path.read_bytes(), "application/octet-stream"))]
    r = await client.post("/v1/models/names/versions", files=files)
    assert r.status_code == 400, r.text


async def test_manifest_cannot_smuggle_files_or_paths(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    manifest = {**mnist_model.manifest, "files": {"../../etc/passwd": "0" * 64}}
    r = await upload(client, "smuggle", mnist_model.onnx_path, manifest)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_manifest"
    manifest = {**mnist_model.manifest, "entrypoint": "../x.onnx"}
    r = await upload(client, "smuggle", mnist_model.onnx_path, manifest, create=False)
    assert r.status_code == 400
    r = await client.post(
        "/v1/models/smuggle/versions",
        files=[("file", ("m.onnx", mnist_model.onnx_path.read_bytes(), "application/octet-stream"))],
        data={"manifest": "x" * (2 * 1024 * 1024)},
    )
    assert r.status_code in (400, 413)


async def test_zip_with_pickle_named_pt_is_refused(client: httpx.AsyncClient) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(Boom()))
        z.writestr("archive/version", "3")
    await client.post("/v1/models", json={"name": "zippk"})
    r = await client.post("/v1/models/zippk/versions", files=[("file", ("m.pt", buf.getvalue(), "application/zip"))])
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsafe_format"
    assert json.loads(r.text)["error"]["details"]["instead"]
