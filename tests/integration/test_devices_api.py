"""Where a model runs: ``device`` in its deployment settings (``serving/devices.py``).

On a machine without CUDA (CI's), asking for it is refused with a message that says why, and nothing
changes; on one with a GPU, the model serves there with the CPU's answers (the test runs only there).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch

from modelport import formats
from modelport.errors import Unavailable
from modelport.serving import devices
from modelport.store.bundle import Manifest
from tests.conftest import TrainedMnist, upload

NO_CUDA = devices.why_not("cuda") is not None


async def _predict(client: httpx.AsyncClient, images: np.ndarray) -> list[list[float]]:
    r = await client.post("/v1/models/dev/predict", json={"inputs": images.tolist()})
    assert r.status_code == 200, r.text
    outputs: list[list[float]] = r.json()["outputs"]
    return outputs


async def _answers_on_cuda_are_the_cpu_answers(client: httpx.AsyncClient) -> None:
    """The uploaded model ``dev`` (784 -> 10) answers 64 images on cuda as it did on the CPU, and is
    loaded on cuda."""
    images = np.random.default_rng(0).random((64, 784), dtype=np.float32)
    on_cpu = np.array(await _predict(client, images))
    r = await client.put("/v1/models/dev/deployment", json={"device": "cuda"})
    assert r.status_code == 200, r.text
    on_gpu = np.array(await _predict(client, images))
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)
    loaded = (await client.get("/v1/runtime")).json()["loaded"]
    assert [(m["model"], m["device"]) for m in loaded] == [("dev", "cuda")]


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
async def test_asking_for_cuda_without_one_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    await upload(client, "dev", mnist_model.onnx_path, mnist_model.manifest)
    before = await _predict(client, mnist_model.test_images[:3])
    r = await client.put("/v1/models/dev/deployment", json={"device": "cuda"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["details"] == {"device": "cuda"} and "no CUDA" in error["message"]
    assert (await client.get("/v1/models/dev/deployment")).json()["device"] == "cpu"
    assert await _predict(client, mnist_model.test_images[:3]) == before

    r = await client.put("/v1/models/dev/deployment", json={"device": "tpu"})
    assert r.status_code == 422 and "device" in r.json()["error"]["message"]
    r = await client.put("/v1/models/dev/deployment", json={"device": "cpu"})
    assert r.status_code == 200 and r.json()["device"] == "cpu"
    loaded = (await client.get("/v1/runtime")).json()["loaded"]
    assert [(m["model"], m["device"]) for m in loaded] == [("dev", "cpu")]


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_a_loader_refuses_a_device_it_cannot_use(mnist_model: TrainedMnist, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.onnx").write_bytes(mnist_model.onnx_path.read_bytes())
    manifest = Manifest.model_validate({"format": "onnx", "entrypoint": "model.onnx"})
    with pytest.raises(Unavailable, match="onnxruntime-gpu"):
        formats.get("onnx").load(bundle, manifest, "cuda")
    assert formats.get("onnx").load(bundle, manifest, "cpu")({"input": np.zeros((1, 784), np.float32)})
    assert devices.why_not("cuda", "sklearn") == "format sklearn serves on the CPU only"
    assert devices.why_not("cuda", "torch") == "torch sees no CUDA GPU on this server"
    assert devices.why_not("cpu", "keras") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch)")
async def test_a_torch_model_serves_on_cuda_with_the_cpu_answers(client: httpx.AsyncClient, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 784)), str(path))
    await client.post("/v1/models", json={"name": "dev"})
    signature = {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 784]}]}
    files = [("file", (path.name, path.read_bytes(), "application/octet-stream"))]
    r = await client.post(
        "/v1/models/dev/versions", files=files, data={"manifest": json.dumps({"signature": signature})}
    )
    assert r.status_code == 201, r.text
    await _answers_on_cuda_are_the_cpu_answers(client)


def test_a_session_that_fell_back_to_the_cpu_is_refused(mnist_model: TrainedMnist) -> None:
    """onnxruntime opens a session on the CPU by itself when its CUDA provider cannot start; a model
    meant for cuda is then refused, not served on the CPU unannounced. (A real session's providers:
    this machine's onnxruntime opens every session on the CPU.)"""
    session = ort.InferenceSession(str(mnist_model.onnx_path), providers=["CPUExecutionProvider"])
    with pytest.raises(Unavailable, match="could not start its CUDA provider"):
        devices.confirm_onnx("cuda", session.get_providers())
    devices.confirm_onnx("cpu", session.get_providers())


class _MakesATensor(torch.nn.Module):
    """784 -> 10, plus a tensor made in ``forward`` (export records it as made on the CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + torch.arange(10, dtype=torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch)")
async def test_an_exported_program_serves_on_cuda_with_the_cpu_answers(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    batch = torch.export.Dim("batch")
    program = torch.export.export(_MakesATensor().eval(), (torch.zeros(2, 784),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(tmp_path / "model.pt2"))
    await client.post("/v1/models", json={"name": "dev"})
    files = [("file", ("model.pt2", (tmp_path / "model.pt2").read_bytes(), "application/octet-stream"))]
    r = await client.post("/v1/models/dev/versions", files=files)
    assert r.status_code == 201, r.text
    await _answers_on_cuda_are_the_cpu_answers(client)
