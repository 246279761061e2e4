"""Shared fixtures: real settings in tmp_path, the real app over ASGI, real trained models.

Set ``MODELPORT_TEST_DATABASE_URL`` (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/test``) to run
the same tests against PostgreSQL; each test then starts from an empty schema.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from sqlalchemy import create_engine, text

from modelport.api.app import create_app
from modelport.config import Settings

ADMIN_KEY = "mp_test-admin-key-0123456789abcdefghijklmnopqrstu"
REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"
PG_URL = os.environ.get("MODELPORT_TEST_DATABASE_URL")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Markers come from folders: unit, integration, security, e2e."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
        if parts and parts[0] in ("unit", "integration", "security", "e2e"):
            item.add_marker(getattr(pytest.mark, parts[0]))


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    if PG_URL:
        _reset_postgres(PG_URL)
    # The in-process clients use made-up hosts (modelport.test, t); tests/security checks the allowlist.
    return Settings(home=tmp_path / "home", admin_key=ADMIN_KEY, database_url=PG_URL, allowed_hosts=["*"])


@pytest.fixture
def app(settings: Settings) -> Iterator[object]:
    application = create_app(settings)
    yield application
    ctx = application.state.ctx
    ctx.runtime.close()
    ctx.db.dispose()


@pytest.fixture
async def client(app: object) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=transport, base_url="http://modelport.test", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as c:
        yield c


@dataclass(frozen=True)
class TrainedMnist:
    """The mission's 784-64-10 network, trained on a real MNIST slice and exported to ONNX."""

    onnx_path: Path
    manifest: dict[str, object]
    test_images: np.ndarray  # (N, 784) raw pixels 0..255
    test_labels: np.ndarray
    torch_probs: np.ndarray  # the torch model's probabilities on test_images


@pytest.fixture(scope="session")
def mnist_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedMnist:
    import torch
    from torch import nn

    from modelport.training.data.idx import load_mnist

    torch.manual_seed(0)
    torch.set_num_threads(1)
    xtr, ytr = load_mnist(MNIST, "train")
    xte, yte = load_mnist(MNIST, "test")
    xtr = xtr[:6000].reshape(-1, 784).astype(np.float32)
    ytr = ytr[:6000].astype(np.int64)
    xte = xte[:500].reshape(-1, 784).astype(np.float32)
    yte = yte[:500].astype(np.int64)
    model = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10), nn.Softmax(dim=-1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xs, ys = torch.from_numpy(xtr / 255.0), torch.from_numpy(ytr)
    for _ in range(2):
        for idx in torch.randperm(len(xs)).split(32):
            loss = nn.functional.nll_loss(torch.log(model(xs[idx]).clamp_min(1e-12)), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    out = tmp_path_factory.mktemp("mnist") / "mnist-mlp.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 784),),
        str(out),
        dynamo=False,
        input_names=["input"],
        output_names=["probabilities"],
        dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
    )
    with torch.no_grad():
        probs = model(torch.from_numpy(xte / 255.0)).numpy()
    manifest = {
        "preprocess": [{"scale": 1 / 255}],
        "postprocess": [{"argmax": True}],
        "labels": [str(i) for i in range(10)],
        "description": "784-64-10 MLP on an MNIST slice",
    }
    return TrainedMnist(out, manifest, xte, yte, probs)


def error_of(r: httpx.Response) -> dict[str, Any]:
    """An error answer's code, message and details: ``{"error": {...}}``, or on the V2 protocol's routes
    its own ``{"error": "<message>", "code", "details"}`` (checked to be that shape there)."""
    body = orjson.loads(r.content)
    if r.request.url.path.startswith("/v2/"):
        assert isinstance(body["error"], str), body
        return {"code": body["code"], "message": body["error"], "details": body["details"]}
    error: dict[str, Any] = body["error"]
    return error


async def upload(
    client: httpx.AsyncClient,
    name: str,
    path: Path,
    manifest: dict[str, object] | None = None,
    *,
    create: bool = True,
) -> httpx.Response:
    """Create the model (if asked) and upload one file as a new version."""
    if create:
        await client.post("/v1/models", json={"name": name})
    files = [("file", (path.name, path.read_bytes(), "application/octet-stream"))]
    data = {"manifest": json.dumps(manifest)} if manifest is not None else {}
    return await client.post(f"/v1/models/{name}/versions", files=files, data=data)


async def member_key(client: httpx.AsyncClient, name: str, role: str = "member") -> str:
    r = await client.post("/v1/keys", json={"name": name, "role": role})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])
