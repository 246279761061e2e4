"""RSW-1 on ``device: cuda`` (issue 5): batch B over HTTP and one 4096-image batch, beside the CPU.

Starts ``modelport serve`` (auth on) on a free port, uploads the RSW-1 network (784-64-10, TorchScript:
ONNX Runtime on the GPU machine here has no CUDA provider) and, for each device asked for, sets the
model's deployment ``device`` and measures:

- ``B@64``: request B (32 images as JSON) from 64 connections for ``--seconds`` (an asyncio load
  generator in ``--procs`` processes, since the GPU machine has no wrk), images/s and p50/p99;
- ``4096``: one request of 4096 images as raw float32 (``application/octet-stream``), again and again
  from one connection: images/s and p50;
- ``model only``: the loaded predictor called in-process on the same 4096 images (no HTTP).

Weights are random (the figures do not depend on them), and the images are MNIST's where
``../shared/data/mnist`` is at hand, else random pixels.

    python bench/gpu/serve_cuda.py [--devices cuda,cpu] [--seconds 10] [--json OUT]

``bench/gpu/run.sh`` runs it on the device machine, with the GPU tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

KEY = "mp_gpu-benchmark-admin-key-0123456789abcdefghijkl"
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "serving"))
from many_models import ready  # noqa: E402 - the bench scripts are not a package

SIGNATURE = {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 784]}]}
MNIST = REPO.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def images(n: int) -> np.ndarray:
    """``n`` images as (n, 784) float32 in [0, 1]: MNIST's test images (repeated) if at hand."""
    if MNIST.exists():
        sys.path.insert(0, str(REPO / "src"))
        from modelport.training.data.idx import read_idx

        pixels = read_idx(MNIST).reshape(-1, 784).astype(np.float32) / 255.0
        return np.resize(pixels, (n, 784)).astype(np.float32)
    return np.random.default_rng(0).random((n, 784), dtype=np.float32)


def network(folder: Path) -> Path:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    path = folder / "mlp.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 784)), str(path))
    return path


def start(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MODELPORT_HOME": str(home), "MODELPORT_ADMIN_KEY": KEY, "MODELPORT_JOB_WORKERS": "0"}
    cmd = [sys.executable, "-m", "modelport", "serve", "--port", str(port), "--log-level", "warning"]
    return ready(subprocess.Popen(cmd, env=env), port)


def request(path: str, body: bytes, media: str, extra: str = "") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: {media}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(port: int, payload: bytes, until: float, latencies: list[float], failed: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            sent = time.perf_counter()
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - sent)
            if not head.startswith(b"HTTP/1.1 200"):
                failed.append(1)
    finally:
        writer.close()


def _load(port: int, payload: bytes, connections: int, seconds: float, queue: Any) -> None:
    """One load process: ``connections`` keep-alive connections sending ``payload`` back to back."""
    latencies: list[float] = []
    failed: list[int] = []
    until = time.perf_counter() + seconds

    async def run() -> None:
        await asyncio.gather(*(_connection(port, payload, until, latencies, failed) for _ in range(connections)))

    asyncio.run(run())
    queue.put((latencies, len(failed)))


def drive(port: int, payload: bytes, connections: int, seconds: float, procs: int) -> dict[str, float]:
    """Requests/s, p50/p99 (ms) and failures of ``connections`` connections over ``procs`` processes."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_load, args=(port, payload, connections // procs, seconds, queue)) for _ in range(procs)
    ]
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    latencies = sorted(t for lat, _ in results for t in lat)
    return {
        "rps": len(latencies) / seconds,
        "p50_ms": 1e3 * latencies[len(latencies) // 2],
        "p99_ms": 1e3 * latencies[int(len(latencies) * 0.99)],
        "failed": float(sum(f for _, f in results)),
    }


def model_only(device: str, batch: np.ndarray, seconds: float) -> dict[str, float]:
    """The RSW-1 network on ``device`` called in-process the way the server calls it (numpy in, numpy out)."""
    sys.path.insert(0, str(REPO / "src"))
    from modelport.formats import torchscript
    from modelport.store.bundle import Manifest

    with tempfile.TemporaryDirectory() as tmp:
        path = network(Path(tmp))
        manifest = Manifest.model_validate({"format": "torchscript", "entrypoint": path.name, "signature": SIGNATURE})
        predictor = torchscript.load(Path(tmp), manifest, device)  # type: ignore[arg-type]
        feed = {"input": batch}
        for _ in range(5):
            predictor(feed)
        times = []
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            started = time.perf_counter()
            predictor(feed)
            times.append(time.perf_counter() - started)
    p50 = statistics.median(times)
    return {"images_per_s": len(batch) / p50, "p50_ms": 1e3 * p50}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cuda,cpu")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--procs", type=int, default=4, help="load-generator processes for B@64")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    devices = args.devices.split(",")
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA GPU here; run with --devices cpu")
    b = images(32)
    big = images(4096)
    body_b = json.dumps({"inputs": b.astype(np.float64).round(6).tolist()}).encode()
    path = "/v1/models/mlp/predict"
    payload_b = request(path, body_b, "application/json")
    payload_big = request(path, big.tobytes(), "application/octet-stream", "X-Tensor-Shape: 4096,784\r\n")
    figures: dict[str, Any] = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start(Path(tmp) / "home", port)
        try:
            auth = {"Authorization": f"Bearer {KEY}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=120) as c:
                c.post("/v1/models", json={"name": "mlp"})
                model = network(Path(tmp))
                files = [("file", (model.name, model.read_bytes(), "application/octet-stream"))]
                manifest = json.dumps({"signature": SIGNATURE})
                r = c.post("/v1/models/mlp/versions", files=files, data={"manifest": manifest})
                assert r.status_code == 201, r.text
                answers = {}
                raw_headers = {"Content-Type": "application/octet-stream", "X-Tensor-Shape": "4096,784", **auth}
                for device in devices:
                    r = c.put("/v1/models/mlp/deployment", json={"device": device})
                    assert r.status_code == 200, r.text
                    first = c.post(path, content=big.tobytes(), headers=raw_headers)
                    assert first.status_code == 200, first.text
                    answers[device] = np.asarray(first.json()["outputs"])
                    loaded = c.get("/v1/runtime").json()["loaded"]
                    assert [m["device"] for m in loaded] == [device], loaded
                    drive(port, payload_b, 64, 2.0, args.procs)  # warm-up
                    b64 = drive(port, payload_b, 64, args.seconds, args.procs)
                    one = drive(port, payload_big, 1, args.seconds, 1)
                    figures[device] = {
                        "B@64": {**b64, "images_per_s": 32 * b64["rps"]},
                        "4096": {**one, "images_per_s": 4096 * one["rps"]},
                        "model only, 4096": model_only(device, big, args.seconds / 2),
                        "model only, 32": model_only(device, b, args.seconds / 2),
                    }
                if len(answers) == 2:
                    a, z = answers.values()
                    figures["max |cuda - cpu|"] = float(np.max(np.abs(a - z)))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    print(f"GPU: {figures['gpu']}")
    print(
        "| device | B@64 images/s | B@64 p50 / p99 ms | 4096-image request: images/s | p50 ms "
        "| model only, 4096: images/s | model only, 32: images/s | failed |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for device in devices:
        f = figures[device]
        print(
            f"| {device} | {f['B@64']['images_per_s']:,.0f} | {f['B@64']['p50_ms']:.2f} / {f['B@64']['p99_ms']:.2f} "
            f"| {f['4096']['images_per_s']:,.0f} | {f['4096']['p50_ms']:.2f} "
            f"| {f['model only, 4096']['images_per_s']:,.0f} | {f['model only, 32']['images_per_s']:,.0f} "
            f"| {f['B@64']['failed'] + f['4096']['failed']:.0f} |"
        )
    if "max |cuda - cpu|" in figures:
        print(f"answers on cuda against the CPU's (4096 images): max difference {figures['max |cuda - cpu|']:.2e}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
