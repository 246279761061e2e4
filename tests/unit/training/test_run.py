"""training/run.py: a spec becomes a servable bundle whose manifest, ONNX graph and metrics agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import safetensors.torch

from modelport.errors import BadRequest
from modelport.formats import torch as torch_format
from modelport.serving.pipeline import Pipeline
from modelport.store.bundle import Manifest, ManifestInput
from modelport.training.data.idx import load_mnist
from modelport.training.nets import build_network
from modelport.training.run import TrainOutcome, run_training
from modelport.training.spec import load_spec
from tests.conftest import MNIST
from tests.unit.training._specs import digits

Events = list[dict[str, Any]]


def train(spec: Any, tmp_path: Path, **kw: Any) -> tuple[TrainOutcome, Events]:
    events: Events = []
    return run_training(spec, workdir=tmp_path, report=events.append, **kw), events


def test_mnist_slice_end_to_end(tmp_path: Path) -> None:
    spec = load_spec(
        {
            "name": "mnist-mlp",
            "data": {
                "source": "mnist",
                "path": str(MNIST),
                "validation_split": 0.1,
                "max_samples": 3000,
                "max_test_samples": 500,
                "preprocess": [{"scale": 1 / 255}],
            },
            "model": {"layers": [{"dense": 64, "activation": "relu"}, {"dense": 10, "activation": "softmax"}]},
            "train": {"epochs": 2, "device": "cpu"},
        }
    )
    out, events = train(spec, tmp_path)
    assert sorted(p.name for p in out.bundle_dir.iterdir()) == ["model.onnx", "model.safetensors"]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished" and kinds.count("epoch") == 2
    epoch = next(e for e in events if e["type"] == "epoch")
    assert set(epoch) >= {"epoch", "epochs", "train", "validation", "lr", "seconds"}
    assert {"loss", "accuracy"} <= set(epoch["train"]) and {"loss", "accuracy"} <= set(epoch["validation"])
    m = out.metrics
    assert m["test_accuracy"] > 0.8 and m["onnx_max_abs_diff"] <= 1e-5 and m["throughput"] > 0
    assert len(m["history"]["val_loss"]) == 2 and np.array(m["confusion_matrix"]).sum() == 500
    manifest = ManifestInput.model_validate(out.manifest)
    assert manifest.labels == [str(i) for i in range(10)] and manifest.lineage.dataset_sha256
    assert out.manifest["metrics"] is m and manifest.format == "onnx" and manifest.architecture is not None

    # Serving's pipeline over the exported graph, fed raw 28x28 pixels, reproduces the test accuracy.
    served = Manifest.model_validate({**out.manifest, "files": {}})
    session = ort.InferenceSession(str(out.bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    pipeline = Pipeline(served, predictor=lambda t: {"output": session.run(None, t)[0]})  # type: ignore[arg-type]
    x, y = load_mnist(MNIST, "test")
    arrays, _ = pipeline.prepare(x[:500], max_batch=1000)
    _, predictions = pipeline.postprocess(pipeline.run(arrays))
    assert predictions is not None
    accuracy = np.mean([int(p["label"]) == t for p, t in zip(predictions, y[:500], strict=True)])
    assert accuracy == pytest.approx(m["test_accuracy"], abs=1e-9)

    # The torch weights rebuild through formats.torch from the recorded architecture.
    layers, shape = torch_format.parse_architecture(out.manifest["architecture"])
    net = build_network(layers, shape)
    net.load_state_dict(safetensors.torch.load_file(str(out.bundle_dir / "model.safetensors")), strict=True)
    assert shape == [784] and list(net.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_standardize_becomes_a_normalize_step(tmp_path: Path) -> None:
    out, _ = train(digits(data={"preprocess": ["standardize"]}), tmp_path)
    norm = out.manifest["preprocess"][0]["normalize"]
    assert len(norm["mean"]) == 64 and out.manifest["preprocess"][-1] == {"reshape": [64]}
    assert out.metrics["test_accuracy"] > 0.85


def test_logits_network_gets_softmax_postprocess(tmp_path: Path) -> None:
    spec = digits(model={"layers": [{"dense": 32, "activation": "relu"}, {"dense": 10}]}, label_smoothing=0.1)
    out, _ = train(spec, tmp_path)
    assert out.manifest["postprocess"] == [{"softmax": True}, {"argmax": True}]


def test_regression_with_mse(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=y)
    spec = load_spec(
        {
            "name": "reg",
            "data": {"source": "npz", "path": str(tmp_path / "reg.npz")},
            "model": {"layers": [{"dense": 1}]},
            "train": {"loss": "mse", "optimizer": {"name": "sgd", "lr": 0.05}, "epochs": 5, "device": "cpu"},
        }
    )
    out, _ = train(spec, tmp_path / "w")
    assert out.metrics["test_loss"] < 0.01 and out.metrics["test_mae"] < 0.1
    assert out.manifest["labels"] is None and out.manifest["postprocess"] == []
    assert "confusion_matrix" not in out.metrics


def test_binary_cross_entropy_on_two_classes(tmp_path: Path) -> None:
    spec = digits(
        data={"name": "breast_cancer", "preprocess": ["standardize"]},
        model={"layers": [{"dense": 8, "activation": "relu"}, {"dense": 1, "activation": "sigmoid"}]},
        loss="binary_cross_entropy",
        optimizer={"name": "adam", "lr": 0.01},
        epochs=5,
    )
    out, _ = train(spec, tmp_path)
    assert out.metrics["test_accuracy"] > 0.9 and out.manifest["labels"] == ["malignant", "benign"]
    assert np.array(out.metrics["confusion_matrix"]).shape == (2, 2)


def test_one_hot_targets_with_mse(tmp_path: Path) -> None:
    out, _ = train(digits(data={"one_hot": True}, loss="mse", optimizer={"name": "adam", "lr": 0.01}), tmp_path)
    assert out.metrics["test_accuracy"] > 0.8


def test_python_module_network(tmp_path: Path) -> None:
    linear = {"layers": None, "python": "torch.nn:Linear", "kwargs": {"in_features": 64, "out_features": 10}}
    spec = digits(model=linear, optimizer={"name": "adam", "lr": 0.01})
    assert spec.uses_python_module
    out, _ = train(spec, tmp_path)
    assert out.manifest["architecture"]["python"] == "torch.nn:Linear" and out.metrics["test_accuracy"] > 0.8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": {"layers": [{"dense": 5, "activation": "softmax"}]}}, "5 outputs but the data has 10 classes"),
        ({"model": {"layers": [{"conv2d": 4}]}}, "model: layers"),
        ({"device": "cuda"}, "no CUDA device"),
        ({"model": {"layers": None, "python": "modelport_nope.mod:Net"}}, "not installed"),
        ({"model": {"layers": None, "python": "collections:OrderedDict"}}, "not an nn.Module class"),
        ({"loss": "binary_cross_entropy"}, "needs 2 classes"),
        ({"early_stopping": {"metric": "val_mae"}}, "early_stopping.metric: 'val_mae' is not measured"),
    ],
)
def test_runtime_problems_are_bad_requests(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    if overrides.get("device") == "cuda":
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    with pytest.raises(BadRequest, match=message):
        train(digits(**overrides), tmp_path)
