"""formats/torchscript.py: the uploader's signature, outputs learned from a dry run, real predictions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from modelport.errors import InvalidArtifact, InvalidManifest
from modelport.formats import torchscript
from modelport.store.bundle import Manifest, ManifestInput, Signature, TensorSpec

ToManifest = Callable[..., Manifest]


class TwoHeads(torch.nn.Module):
    """x: (B, 8) -> (logits (B, 3), score (B,))."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(8, 4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.body(x))
        return self.head(h), h.sum(dim=1)


@pytest.fixture
def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()


def _inputs(shape: list[int] | None = None) -> ManifestInput:
    return ManifestInput(signature=Signature(inputs=[TensorSpec(name="pixels", shape=shape or [-1, 784])]))


def test_signature_is_required(tmp_path: Path, mlp: torch.nn.Module) -> None:
    torchscript.save(torch.jit.script(mlp), tmp_path)
    with pytest.raises(InvalidManifest, match="torchscript needs a signature"):
        torchscript.inspect(tmp_path, "model.pt", ManifestInput())


def test_outputs_are_inferred_and_predictions_match(
    tmp_path: Path, mlp: torch.nn.Module, to_manifest: ToManifest
) -> None:
    files = torchscript.save(torch.jit.script(mlp), tmp_path)
    assert list(files) == ["model.pt"]
    info = torchscript.inspect(tmp_path, "model.pt", _inputs())
    assert info.signature is not None
    assert info.signature.outputs == [TensorSpec(name="output", dtype="float32", shape=[-1, 10])]
    assert info.extra["parameters"] == 784 * 64 + 64 + 64 * 10 + 10
    predictor = torchscript.load(tmp_path, to_manifest("torchscript", "model.pt", info))
    x = np.random.default_rng(1).random((4, 784), dtype=np.float32)
    with torch.no_grad():
        expected = mlp(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predictor({"pixels": x})["output"], expected, atol=1e-5)
    predictor.unload()


def test_tuple_outputs_take_the_given_names(tmp_path: Path, to_manifest: ToManifest) -> None:
    model = TwoHeads().eval()
    torchscript.save(torch.jit.script(model), tmp_path)
    info = torchscript.inspect(tmp_path, "model.pt", _inputs([-1, 8]))
    assert info.signature is not None and [o.name for o in info.signature.outputs] == ["output_0", "output_1"]
    assert info.signature.outputs[1].shape == [-1]
    given = Signature(
        inputs=[TensorSpec(name="pixels", shape=[-1, 8])],
        outputs=[TensorSpec(name="logits"), TensorSpec(name="score")],
    )
    info = torchscript.inspect(tmp_path, "model.pt", ManifestInput(signature=given))
    predictor = torchscript.load(tmp_path, to_manifest("torchscript", "model.pt", info))
    x = np.ones((2, 8), dtype=np.float32)
    out = predictor({"pixels": x})
    with torch.no_grad():
        logits, score = model(torch.from_numpy(x))
    np.testing.assert_allclose(out["logits"], logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["score"], score.numpy(), atol=1e-5)


def test_wrong_output_count_and_wrong_shapes_are_refused(tmp_path: Path) -> None:
    torchscript.save(torch.jit.script(TwoHeads()), tmp_path)
    one = Signature(inputs=[TensorSpec(name="x", shape=[-1, 8])], outputs=[TensorSpec(name="only")])
    with pytest.raises(InvalidArtifact, match="returned 2 output"):
        torchscript.inspect(tmp_path, "model.pt", ManifestInput(signature=one))
    with pytest.raises(InvalidArtifact, match="all-zero example"):
        torchscript.inspect(tmp_path, "model.pt", _inputs([-1, 5]))


def test_unknown_shapes_skip_the_dry_run(tmp_path: Path, mlp: torch.nn.Module) -> None:
    torchscript.save(torch.jit.script(mlp), tmp_path)
    info = torchscript.inspect(tmp_path, "model.pt", _inputs([-1, -1]))
    assert info.signature is not None and info.signature.outputs == []


def test_not_torchscript_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    with pytest.raises(InvalidArtifact) as info:
        torchscript.inspect(tmp_path, "model.pt", _inputs())
    assert str(tmp_path) not in str(info.value)
