"""Artifacts at rest, through the real app: encrypted on a new home, refused when damaged, and
``modelport doctor`` finding damage and orphans offline."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelport.api.app import create_app
from modelport.config import Settings
from modelport.errors import IntegrityError
from modelport.jobs.worker import worker_env
from modelport.store.crypto import MasterKey, home_key_path
from modelport.store.local import LocalBlobStore
from tests.conftest import ADMIN_KEY, TrainedMnist, upload

WINDOW = 64


def leaks(original: bytes, stored: bytes) -> bool:
    """Whether any WINDOW-byte run of ``original``, at any offset, appears anywhere in ``stored``."""
    runs = {stored[i : i + WINDOW] for i in range(len(stored) - WINDOW + 1)}
    return any(original[j : j + WINDOW] in runs for j in range(len(original) - WINDOW + 1))


def blob_files(settings: Settings) -> list[Path]:
    return [p for p in settings.blobs_dir.rglob("*") if p.is_file()]


def doctor(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return modelport(settings, "doctor", *args)


def modelport(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m modelport ARGS`` on the home of ``settings``, offline, with no other MODELPORT_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env["MODELPORT_HOME"] = str(settings.home)
    if settings.database_url:
        env["MODELPORT_DATABASE_URL"] = settings.database_url
    result = subprocess.run(
        [sys.executable, "-m", "modelport", *args],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


async def uploaded_file(client: httpx.AsyncClient, name: str, mnist_model: TrainedMnist) -> str:
    r = await upload(client, name, mnist_model.onnx_path, mnist_model.manifest)
    assert r.status_code == 201, r.text
    return str(r.json()["manifest"]["files"]["mnist-mlp.onnx"])


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


async def test_a_new_home_gets_a_private_master_key(app: object, settings: Settings) -> None:
    path = home_key_path(settings.home)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert len(path.read_bytes()) == 32
    assert app.state.ctx.store.encrypt  # type: ignore[attr-defined]  # the real ModelportApp


async def test_blobs_on_disk_hold_no_plaintext(
    client: httpx.AsyncClient, settings: Settings, mnist_model: TrainedMnist
) -> None:
    original = mnist_model.onnx_path.read_bytes()
    assert leaks(original, b"header" + original[100:5000])  # the check itself finds plaintext
    await uploaded_file(client, "at-rest", mnist_model)
    files = blob_files(settings)
    assert files
    for path in files:
        assert not leaks(original, path.read_bytes()), path
    manifests = [p for p in files if b"mnist-mlp.onnx" in p.read_bytes()]
    assert not manifests  # the manifest blob (JSON) is encrypted too


async def test_predict_and_download_give_the_original(
    client: httpx.AsyncClient, settings: Settings, mnist_model: TrainedMnist
) -> None:
    sha = await uploaded_file(client, "enc", mnist_model)
    r = await client.post("/v1/models/enc/predict", json={"inputs": mnist_model.test_images[:5].tolist()})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.asarray(r.json()["outputs"]), mnist_model.torch_probs[:5], atol=1e-5)
    r = await client.get("/v1/models/enc/versions/1/files/mnist-mlp.onnx")
    assert r.status_code == 200
    assert r.content == mnist_model.onnx_path.read_bytes()
    assert r.headers["x-content-sha256"] == sha == hashlib.sha256(r.content).hexdigest()
    assert r.headers["content-length"] == str(len(r.content))
    assert r.headers["content-disposition"] == 'attachment; filename="mnist-mlp.onnx"'
    assert not list(settings.tmp_dir.iterdir())  # the decrypted copy is gone once sent


async def test_a_tampered_blob_is_refused_at_load_and_download(
    client: httpx.AsyncClient, app: object, settings: Settings, mnist_model: TrainedMnist
) -> None:
    sha = await uploaded_file(client, "tampered", mnist_model)
    flip_middle_byte(app.state.ctx.store.path_of(sha))  # type: ignore[attr-defined]  # the real ModelportApp
    r = await client.post("/v1/models/tampered/predict", json={"inputs": mnist_model.test_images[0].tolist()})
    assert r.status_code == 500 and r.json()["error"]["code"] == "integrity_error"
    assert "predictions" not in r.text and "outputs" not in r.text
    r = await client.get("/v1/models/tampered/versions/1/files/mnist-mlp.onnx")
    assert r.status_code == 500 and r.json()["error"]["code"] == "integrity_error"
    assert r.headers["content-type"].startswith("application/json")  # an error, not a partial file
    assert str(settings.home) not in r.text
    key = home_key_path(settings.home).read_bytes()
    assert key.hex() not in r.text


async def test_a_lost_key_sidecar_is_refused(client: httpx.AsyncClient, app: object, mnist_model: TrainedMnist) -> None:
    sha = await uploaded_file(client, "no-sidecar", mnist_model)
    app.state.ctx.store.key_path_of(sha).unlink()  # type: ignore[attr-defined]  # the real ModelportApp
    r = await client.get("/v1/models/no-sidecar/versions/1/files/mnist-mlp.onnx")
    assert r.status_code == 500 and r.json()["error"]["code"] == "integrity_error"


async def test_doctor_finds_damage_and_orphans(
    client: httpx.AsyncClient, app: object, settings: Settings, mnist_model: TrainedMnist
) -> None:
    sha = await uploaded_file(client, "checked", mnist_model)
    clean = doctor(settings)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "2 ok, 0 missing, 0 damaged" in clean.stdout and "OK" in clean.stdout

    store: LocalBlobStore = app.state.ctx.store  # type: ignore[attr-defined]  # the real ModelportApp
    orphan, _ = store.put_stream(io.BytesIO(b"nothing uses this"))
    noted = doctor(settings)
    assert noted.returncode == 0 and f"orphan   {orphan}" in noted.stdout

    flip_middle_byte(store.path_of(sha))
    damaged = doctor(settings)
    assert damaged.returncode == 1, damaged.stdout
    assert f"DAMAGED  {sha}" in damaged.stdout and "checked:1 file mnist-mlp.onnx" in damaged.stdout
    assert f"orphan   {orphan}" in damaged.stdout and "FAILED" in damaged.stdout

    report = json.loads(doctor(settings, "--json").stdout)
    assert report["healthy"] is False and report["ok"] == 1
    assert [d["sha256"] for d in report["damaged"]] == [sha]
    assert "authentication" in report["damaged"][0]["problem"]
    assert [o["sha256"] for o in report["orphans"]] == [orphan]
    assert report["key_id"] == store.master.kid  # type: ignore[union-attr]  # this home has a key

    store.path_of(sha).unlink()
    missing = json.loads(doctor(settings, "--json").stdout)
    assert [m["sha256"] for m in missing["missing"]] == [sha] and not missing["damaged"]


async def test_doctor_without_the_key_reports_every_encrypted_blob(
    client: httpx.AsyncClient, settings: Settings, mnist_model: TrainedMnist
) -> None:
    await uploaded_file(client, "keyless", mnist_model)
    home_key_path(settings.home).rename(settings.home / "elsewhere.key")
    result = doctor(settings)
    assert result.returncode == 1
    assert "no master key" in result.stdout
    assert not home_key_path(settings.home).exists()  # doctor never makes a key


async def test_rotate_key_rewraps_every_key_and_installs_the_new_one(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path, mnist_model: TrainedMnist
) -> None:
    await uploaded_file(client, "rotated", mnist_model)
    data_files = {p: p.read_bytes() for p in (settings.blobs_dir / "sha256").rglob("*") if p.is_file()}
    old = MasterKey(home_key_path(settings.home).read_bytes())
    new = MasterKey.generate()
    new_file = tmp_path / "new.key"
    new_file.write_text(new.raw().hex())
    new_file.chmod(0o600)
    result = modelport(settings, "--json", "store", "rotate-key", "--new-key-file", str(new_file))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["old_key_id"], summary["new_key_id"], summary["rewrapped"]) == (old.kid, new.kid, 2)
    assert summary["installed"] == str(home_key_path(settings.home))
    assert MasterKey(home_key_path(settings.home).read_bytes()) == new
    assert {p: p.read_bytes() for p in data_files} == data_files  # the data files were not rewritten
    checked = json.loads(doctor(settings, "--json").stdout)
    assert checked["healthy"] and checked["key_id"] == new.kid and checked["ok"] == 2
    old_store = LocalBlobStore(settings.blobs_dir, settings.tmp_dir, master=old)
    assert old.raw().hex() not in result.stdout + result.stderr
    for sha in {p.name for p in data_files}:
        with pytest.raises(IntegrityError, match="another master key"):
            old_store.verify(sha)


async def test_a_plaintext_home_keeps_working_without_a_key(
    settings: Settings, tmp_path: Path, mnist_model: TrainedMnist
) -> None:
    home = tmp_path / "old-home"
    legacy = LocalBlobStore(home / "blobs", home / "tmp", master=None)
    legacy.put_stream(io.BytesIO(b"a blob stored before encryption existed"))
    application = create_app(settings.model_copy(update={"home": home}))
    try:
        assert not home_key_path(home).exists()
        transport = httpx.ASGITransport(app=application)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://modelport.test", headers=headers) as client:
            sha = await uploaded_file(client, "plain", mnist_model)
            assert application.state.ctx.store.path_of(sha).read_bytes() == mnist_model.onnx_path.read_bytes()
            r = await client.post("/v1/models/plain/predict", json={"inputs": mnist_model.test_images[0].tolist()})
            assert r.status_code == 200
    finally:
        application.state.ctx.runtime.close()
        application.state.ctx.db.dispose()


def test_a_configured_key_wins_and_reaches_workers_but_no_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = MasterKey.generate()
    settings = Settings(home=tmp_path / "home", master_key=key.raw().hex())
    assert key.raw().hex() not in repr(settings) and key.raw().hex() not in str(settings)
    env = worker_env(settings)
    assert env["MODELPORT_MASTER_KEY"] == key.raw().hex() and env["MODELPORT_ENCRYPTION"] == "auto"
    assert Settings.model_validate_json(settings.model_dump_json()).master_key == settings.master_key  # --workers N

    monkeypatch.setenv("MODELPORT_MASTER_KEY", "a key the server does not use")
    assert "MODELPORT_MASTER_KEY" not in worker_env(Settings(home=tmp_path / "other", master_key=None))

    from modelport.store.local import open_store

    store = open_store(settings)
    assert store.master == key and not home_key_path(settings.home).exists()
    sha, _ = store.put_stream(io.BytesIO(b"with the configured key"))
    assert json.loads(store.key_path_of(sha).read_text())["kid"] == key.kid
