"""The real server as ``modelport serve`` configures it (``cli/server.py``), in a thread on a free port,
and the same server as a ``modelport serve`` subprocess, for the tests of slow clients, TLS and drain."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from modelport.api.app import create_app
from modelport.cli.server import Server, uvicorn_config
from modelport.config import Settings
from tests.conftest import ADMIN_KEY

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[Any] | None = None, timeout: float = 60.0, **client: Any) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0, **client).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the server never became ready")


@contextmanager
def served(settings: Settings) -> Iterator[str]:
    """``settings``' app under uvicorn exactly as ``modelport serve`` runs it, on 127.0.0.1:<free port>."""
    with served_server(settings) as (url, _):
        yield url


@contextmanager
def served_server(settings: Settings) -> Iterator[tuple[str, Server]]:
    """As ``served``, with the server itself (its config holds the protocol class, and so the state the
    protocol keeps per server: deadlines, the idle poll)."""
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": free_port(), "log_level": "warning"})
    server = Server(uvicorn_config(settings, create_app(settings)))
    thread = threading.Thread(target=server.run, name="security-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    try:
        wait_ready(url)
        yield url, server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serve_process(
    home: Path, *args: str, scheme: str = "http", **client: Any
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``modelport serve --port <free> ARGS`` as a subprocess; yields its URL and the process (stopped
    with SIGTERM at the end if still running)."""
    port = free_port()
    env = {**os.environ, "MODELPORT_HOME": str(home), "MODELPORT_ADMIN_KEY": ADMIN_KEY}
    for name in ("MODELPORT_DATABASE_URL", "MODELPORT_ALLOWED_HOSTS", "MODELPORT_CORS_ORIGINS"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "modelport", "serve", "--port", str(port), "--job-workers", "0", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, **client)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
