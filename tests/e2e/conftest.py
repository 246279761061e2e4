"""The real server on an ephemeral port, for the SDK and CLI end-to-end tests.

One uvicorn server runs in a background thread for the whole session (each test uses its own model
names), so the e2e suite pays for one start-up. Readiness is the server's own ``/readyz``, never a
fixed sleep or a log line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from modelport.api.app import create_app
from modelport.client import Client
from modelport.config import Settings

E2E_ADMIN_KEY = "mp_e2e-admin-key-0123456789abcdefghijklmnop"
assert len(E2E_ADMIN_KEY) == 43
READY_TIMEOUT_S = 10.0


def _wait_ready(server: uvicorn.Server, thread: threading.Thread) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the e2e server did not start")
        time.sleep(0.02)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    url = f"http://{host}:{port}"
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise RuntimeError("the e2e server never became ready")


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(base_url, admin_key)`` of a real Modelport server on 127.0.0.1:<free port>."""
    settings = Settings(home=tmp_path_factory.mktemp("e2e-home"), admin_key=E2E_ADMIN_KEY, port=0)
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        access_log=False,
        lifespan="on",
        ws="none",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="e2e-server", daemon=True)
    thread.start()
    try:
        yield _wait_ready(server, thread), E2E_ADMIN_KEY
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def admin(live_server: tuple[str, str]) -> Iterator[Client]:
    """An SDK client with the admin key."""
    with Client(*live_server) as mp:
        yield mp


@dataclass(frozen=True)
class TinyOnnx:
    """A 4 -> 8 -> 3 MLP exported to ONNX, with its torch outputs on ``inputs`` for comparison."""

    path: Path
    inputs: np.ndarray  # (5, 4) float32
    logits: np.ndarray  # (5, 3) torch outputs


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> TinyOnnx:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    path = tmp_path_factory.mktemp("onnx") / "mlp.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 4),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    inputs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs)).numpy()
    return TinyOnnx(path, inputs, logits)
