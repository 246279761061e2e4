"""Every supported format, uploaded over the API and served: outputs match the framework's own."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn

from modelport.formats import sklearn as sk_format
from modelport.formats import torch as torch_format
from modelport.training.nets import build_network

LAYERS = [{"dense": 16, "activation": "relu"}, {"dense": 10, "activation": "softmax"}]


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.data.astype(np.float32), data.target


def _trained_net(x: np.ndarray, y: np.ndarray) -> nn.Sequential:
    torch.manual_seed(0)
    net = build_network(LAYERS, [64])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xs, ys = torch.from_numpy(x / 16.0), torch.from_numpy(y)
    for _ in range(30):
        loss = nn.functional.nll_loss(torch.log(net(xs).clamp_min(1e-9)), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


async def _upload(client: httpx.AsyncClient, name: str, paths: list[Path], manifest: dict[str, object]) -> dict:  # type: ignore[type-arg]
    await client.post("/v1/models", json={"name": name})
    files = [("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    r = await client.post(f"/v1/models/{name}/versions", files=files, data={"manifest": json.dumps(manifest)})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def _predict(client: httpx.AsyncClient, name: str, x: np.ndarray) -> dict:  # type: ignore[type-arg]
    r = await client.post(f"/v1/models/{name}/predict", json={"inputs": x.tolist()})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_sklearn_skops(client: httpx.AsyncClient, digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = digits
    est = LogisticRegression(max_iter=500).fit(x[:1500].astype(np.float64), y[:1500])
    sk_format.save(est, tmp_path)
    (path,) = tmp_path.glob("*.skops")
    v = await _upload(client, "digits-sk", [path], {})
    assert v["format"] == "sklearn"
    body = await _predict(client, "digits-sk", x[1500:1510].astype(np.float64))
    np.testing.assert_array_equal(body["outputs"]["label"], est.predict(x[1500:1510].astype(np.float64)))
    np.testing.assert_allclose(body["outputs"]["probabilities"], est.predict_proba(x[1500:1510]), atol=1e-9)


async def test_torch_safetensors_with_layer_list(client: httpx.AsyncClient, digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = digits
    net = _trained_net(x, y)
    torch_format.save(net, tmp_path, layers=LAYERS, input_shape=[64])
    manifest = {
        "architecture": torch_format.architecture(LAYERS, [64]),
        "preprocess": [{"scale": 1 / 16}],
        "postprocess": [{"argmax": True}],
    }
    v = await _upload(client, "digits-st", [tmp_path / "model.safetensors"], manifest)
    assert v["format"] == "torch" and v["manifest"]["signature"]["inputs"][0]["shape"] == [-1, 64]
    body = await _predict(client, "digits-st", x[:20])
    with torch.no_grad():
        expected = net(torch.from_numpy(x[:20] / 16.0)).numpy()
    np.testing.assert_allclose(body["outputs"], expected, atol=1e-5)
    assert [p["index"] for p in body["predictions"]] == expected.argmax(1).tolist()


async def test_torchscript_needs_and_uses_a_signature(client: httpx.AsyncClient, digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = digits
    net = _trained_net(x, y)
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 64)), str(path))
    await client.post("/v1/models", json={"name": "digits-ts"})
    files = [("file", (path.name, path.read_bytes(), "application/octet-stream"))]
    r = await client.post("/v1/models/digits-ts/versions", files=files)
    assert r.status_code == 400 and "signature" in r.json()["error"]["message"]
    signature = {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 64]}]}
    v = await _upload(client, "digits-ts", [path], {"signature": signature})
    assert v["format"] == "torchscript"
    body = await _predict(client, "digits-ts", x[:5] / 16.0)
    with torch.no_grad():
        np.testing.assert_allclose(body["outputs"], net(torch.from_numpy(x[:5] / 16.0)).numpy(), atol=1e-5)
    # raw float32 bytes arrive as a read-only array: torch takes it without a warning (which pytest
    # turns into an error here)
    raw = {"Content-Type": "application/octet-stream", "X-Tensor-Shape": "5,64"}
    r = await client.post("/v1/models/digits-ts/predict", content=(x[:5] / 16.0).tobytes(), headers=raw)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["outputs"], body["outputs"], atol=1e-6)


async def test_torch_export_archive(client: httpx.AsyncClient, digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = digits
    net = _trained_net(x, y)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(net, (torch.zeros(2, 64),), dynamic_shapes=({0: batch},))
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    v = await _upload(client, "digits-ex", [path], {})
    assert v["format"] == "torch_export"
    body = await _predict(client, "digits-ex", x[:7] / 16.0)
    with torch.no_grad():
        np.testing.assert_allclose(body["outputs"], net(torch.from_numpy(x[:7] / 16.0)).numpy(), atol=1e-5)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
async def test_keras(client: httpx.AsyncClient, digits, tmp_path: Path, suffix: str) -> None:  # type: ignore[no-untyped-def]
    from modelport.formats.keras import keras_module

    keras = keras_module()
    x, y = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10, activation="softmax")]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x / 16.0, y, epochs=2, batch_size=64, verbose=0)
    path = tmp_path / f"model{suffix}"
    model.save(str(path))
    name = f"digits-keras{suffix.replace('.', '-')}"
    v = await _upload(client, name, [path], {"preprocess": [{"scale": 1 / 16}]})
    assert v["format"] == "keras"
    body = await _predict(client, name, x[:6])
    np.testing.assert_allclose(body["outputs"], model.predict(x[:6] / 16.0, verbose=0), atol=1e-5)
