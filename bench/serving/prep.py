"""Prepare Modelport for RSW-1: a fresh home with the harness's mlp.onnx as model ``mlp`` version 1, and
the request bodies with their header sidecars (API key; raw-tensor headers)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np

from modelport.api.app import create_app
from modelport.config import Settings

WORK = Path(os.environ.get("WORK", "/tmp/serving-bench"))
KEY = os.environ.get(
    "MODELPORT_ADMIN_KEY", "mp_rsw1-benchmark-key-0123456789abcdefghijklmno"
)  # = modelport_systems.KEY


async def upload(home: Path) -> None:
    app = create_app(Settings(home=home, admin_key=KEY))
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1", headers=headers
    ) as c:
        await c.post("/v1/models", json={"name": "mlp", "description": "RSW-1 reference MLP"})
        onnx = (WORK / "models" / "mlp.onnx").read_bytes()
        r = await c.post("/v1/models/mlp/versions", files=[("file", ("mlp.onnx", onnx, "application/octet-stream"))])
        r.raise_for_status()
        print("uploaded", r.json()["model"], r.json()["version"])
    app.state.ctx.runtime.close()
    app.state.ctx.db.dispose()


def bodies() -> None:
    folder = WORK / "bodies"
    auth = f"Authorization: Bearer {KEY}\n"
    x = np.load(WORK / "models" / "test_images_32.npy").astype(np.float32)
    for w, n in (("A", 1), ("B", 32)):
        shutil.copyfile(folder / f"inputs_{w}.json", folder / f"mp_{w}.json")
        (folder / f"mp_{w}.json.headers").write_text(auth)
        shutil.copyfile(folder / f"v2_{w}.json", folder / f"mpv2_{w}.json")
        (folder / f"mpv2_{w}.json.headers").write_text(auth)
        (folder / f"mpraw_{w}.json").write_bytes(np.ascontiguousarray(x[:n]).tobytes())
        (folder / f"mpraw_{w}.json.headers").write_text(
            auth + f"Content-Type: application/octet-stream\nX-Tensor-Shape: {n},784\n"
        )
    print(json.dumps({"bodies": sorted(p.name for p in folder.glob("mp*"))}))


def main() -> None:
    home = WORK / "modelport" / "home"
    shutil.rmtree(home, ignore_errors=True)
    asyncio.run(upload(home))
    bodies()


if __name__ == "__main__":
    main()
