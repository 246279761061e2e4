"""kill -9 of the real server in the middle of uploads, then a restart: nothing partial is visible."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelport.config import Settings
from modelport.registry.db import Database
from modelport.registry.tables import Version
from modelport.store.local import LocalBlobStore
from tests.conftest import ADMIN_KEY, TrainedMnist
from tests.security.live import free_port

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _start(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MODELPORT_HOME": str(home), "MODELPORT_ADMIN_KEY": ADMIN_KEY}
    env.pop("MODELPORT_DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelport", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


def _check_consistent(home: Path) -> int:
    """Every committed version's blobs exist and hash right; no temp file survived the restart."""
    settings = Settings(home=home)
    db = Database(settings)
    store = LocalBlobStore(settings.blobs_dir, settings.tmp_dir)
    try:
        with db.read() as s:
            rows = list(s.query(Version))
            for v in rows:
                store.verify(v.manifest_sha256)
                for f in v.files:
                    assert store.verify(f.sha256) == f.size_bytes
        return len(rows)
    finally:
        db.dispose()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_kill_during_streamed_upload_leaves_no_version(home: Path) -> None:
    port = free_port()
    proc = _start(home, port)
    url = f"http://127.0.0.1:{port}"
    httpx.post(f"{url}/v1/models", json={"name": "big"}, headers=HEADERS)
    boundary = "crashboundary"
    sent = threading.Event()

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.onnx"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for i in range(200):
            yield b"\0" * (256 * 1024)
            if i == 20:
                sent.set()
                time.sleep(5)

    def send() -> None:
        with contextlib.suppress(httpx.TransportError):
            httpx.post(
                f"{url}/v1/models/big/versions",
                content=body(),
                timeout=30,
                headers={**HEADERS, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            )

    t = threading.Thread(target=send)
    t.start()
    assert sent.wait(30)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t.join()
    proc = _start(home, port)
    try:
        versions = httpx.get(f"{url}/v1/models/big/versions", headers=HEADERS).json()
        assert versions["total"] == 0
        assert not list((home / "tmp").iterdir()), "temp files survived the restart"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert _check_consistent(home) == 0


def test_kill_during_many_uploads_keeps_registry_and_store_consistent(home: Path, mnist_model: TrainedMnist) -> None:
    port = free_port()
    proc = _start(home, port)
    url = f"http://127.0.0.1:{port}"
    httpx.post(f"{url}/v1/models", json={"name": "many"}, headers=HEADERS)
    payload = mnist_model.onnx_path.read_bytes()
    stop = threading.Event()
    done: list[int] = []

    def uploader(tag: int) -> None:
        while not stop.is_set():
            try:
                # a distinct file each time, so each upload writes new blobs
                files = [("file", (f"m{tag}.onnx", payload, "application/octet-stream"))]
                r = httpx.post(f"{url}/v1/models/many/versions", files=files, headers=HEADERS, timeout=30)
                if r.status_code == 201:
                    done.append(r.json()["version"])
            except httpx.TransportError:
                return

    moves: list[int] = []

    def alias_mover() -> None:  # alias moves in flight too: the kill may land in the middle of one
        while not stop.is_set():
            if not done:
                time.sleep(0.01)
                continue
            try:
                target = done[len(moves) % len(done)]
                r = httpx.put(
                    f"{url}/v1/models/many/aliases/production", json={"version": target}, headers=HEADERS, timeout=30
                )
                if r.status_code == 200:
                    moves.append(target)
            except httpx.TransportError:
                return

    threads = [threading.Thread(target=uploader, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=alias_mover))
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while (len(done) < 4 or len(moves) < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert done, "no upload finished before the kill"
    count = _check_consistent(home)
    assert count >= len(done)
    proc = _start(home, port)
    try:
        listed = httpx.get(f"{url}/v1/models/many/versions", headers=HEADERS, params={"limit": 500}).json()
        assert listed["total"] == count
        r = httpx.post(f"{url}/v1/models/many/predict", json={"inputs": [0] * 784}, headers=HEADERS)
        assert r.status_code == 200
        assert moves, "no alias move finished before the kill"
        model = httpx.get(f"{url}/v1/models/many", headers=HEADERS).json()
        assert 1 <= model["aliases"]["production"] <= count  # the alias names a version that exists
        r = httpx.post(f"{url}/v1/models/many@production/predict", json={"inputs": [0] * 784}, headers=HEADERS)
        assert r.status_code == 200
        assert not list((home / "tmp").iterdir())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
