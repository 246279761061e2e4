"""`modelport serve --workers 2`: two API processes on one port; a revoked key is refused by every
process within a second; SIGTERM drains both and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.security.live import free_port

KEY = "mp_workers-e2e-key-0123456789abcdefghijklmnopqrs"


def test_two_api_processes_share_the_port_and_the_registry(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MODELPORT_HOME": str(tmp_path / "home"), "MODELPORT_ADMIN_KEY": KEY}
    env.pop("MODELPORT_DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelport", "serve", "--port", str(port), "--workers", "2", "--job-workers", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {KEY}"}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        created = httpx.post(f"{url}/v1/keys", json={"name": "zed"}, headers=admin).json()
        zed = {"Authorization": f"Bearer {created['key']}"}
        # fresh connections land on both processes; all of them accept the new key
        assert {httpx.get(f"{url}/v1/whoami", headers=zed).status_code for _ in range(8)} == {200}
        assert httpx.delete(f"{url}/v1/keys/{created['id']}", headers=admin).status_code == 200
        time.sleep(1.1)  # the documented bound: every process's key cache lives one second
        assert {httpx.get(f"{url}/v1/whoami", headers=zed).status_code for _ in range(8)} == {401}
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "(2 worker processes)" in output
    assert output.count("Started server process") == 2
