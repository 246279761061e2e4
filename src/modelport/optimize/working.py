"""The state an optimize step works on: one registered version, its files, and its torch network.

A step reads the version before it (``Working``), writes a new bundle and manifest (``Produced``),
and the pipeline registers that as the next version. The torch network is rebuilt from the
manifest's layer list and safetensors weights, never unpickled; a version without them (an
uploaded ONNX file) can still be quantized, but not pruned, fine-tuned, distilled or exported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelport.errors import BadRequest, InvalidManifest
from modelport.formats import torch as torch_format
from modelport.store.bundle import Manifest
from modelport.training.data.preprocess import apply_steps, encode_targets
from modelport.training.data.sources import load_source
from modelport.training.data.splits import make_splits
from modelport.training.losses import Objective, build_objective, final_activation
from modelport.training.spec import DataSpec

WEIGHTS = "model.safetensors"


@dataclass
class Working:
    """A version as the next step sees it."""

    ref: str
    """``model:N``: the lineage parent of what the step produces."""
    manifest: Manifest
    folder: Path
    """A hash-checked copy of the version's files."""
    layers: list[Any] | None = None
    input_shape: list[int] | None = None
    model: nn.Sequential | None = None
    """Rebuilt from ``layers`` + the safetensors weights; None for a version that is only a graph."""

    def network(self, what: str) -> tuple[nn.Sequential, list[Any], list[int]]:
        """The torch network, or a 400 saying why ``what`` (a step kind) cannot run on this version."""
        if self.model is None or self.layers is None or self.input_shape is None:
            raise BadRequest(
                message=f"{what} needs a torch network (a version trained by Modelport or of format torch); "
                f"{self.ref} is a {self.manifest.format} file only"
            )
        return self.model, self.layers, self.input_shape


@dataclass
class Produced:
    """What a step wrote: a bundle folder and the manifest to register it with."""

    folder: Path
    manifest: dict[str, Any]
    transform: dict[str, Any]
    """Recorded in the lineage: the step kind and its options."""
    model: nn.Sequential | None = None
    layers: list[Any] | None = None
    input_shape: list[int] | None = None
    counts: tuple[int, int] | None = None
    """(parameters, non-zero parameters) when the bundle's file cannot tell (a quantized graph)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Step-specific facts for the report (quantization details, the distillation control run)."""


@dataclass(frozen=True)
class Examples:
    """The data the steps share, preprocessed as the source version's manifest says."""

    x_train: np.ndarray
    """(N, *input_shape) float32"""
    y_train: np.ndarray
    """(N,) int64 class ids"""
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int


def load_working(ref: str, manifest: dict[str, Any], dest: Path) -> Working:
    """The version whose files were copied (hash-checked) into ``dest``, with its network rebuilt if it
    has one. The copying is the caller's: a job asks its worker (``jobs/services.py``)."""
    parsed = Manifest.model_validate(manifest)
    working = Working(ref=ref, manifest=parsed, folder=dest)
    architecture = parsed.architecture
    if isinstance(architecture, dict) and "layers" in architecture:
        layers, input_shape = torch_format.parse_architecture(architecture)
        weights = parsed.entrypoint if parsed.format == "torch" else WEIGHTS
        if (dest / weights).is_file():
            working.layers, working.input_shape = layers, input_shape
            working.model = torch_format.load_network(dest, weights, layers, input_shape)
    return working


def load_examples(
    data: DataSpec, manifest: Manifest, input_shape: list[int] | None, resolve_dataset: Callable[[str], Path] | None
) -> Examples:
    """Training and test examples, preprocessed with the version's own (recorded) steps."""
    if not manifest.labels:
        raise BadRequest(
            message="optimize measures classification accuracy: the source version has no labels "
            "(train it with cross_entropy, or give labels in its manifest)"
        )
    source = load_source(data, resolve_dataset)
    splits = make_splits(source, validation_split=0.0, test_split=data.test_split, seed=0)
    if splits.test is None:
        raise BadRequest(message="data: optimize needs a test split (the source has none and test_split is 0)")
    steps = [step.model_dump(exclude_none=True) for step in manifest.preprocess]
    shape = input_shape or _signature_shape(manifest)
    size = int(np.prod(shape))
    classes = len(manifest.labels)

    def prepare(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xs = apply_steps(steps, x, size=size).astype(np.float32, copy=False).reshape(-1, *shape)
        ys = encode_targets(y, "class_index", manifest.labels)
        if ys.size and (ys.min() < 0 or ys.max() >= classes):
            raise BadRequest(message=f"data: labels outside the version's {classes} classes")
        return np.ascontiguousarray(xs), ys

    test = splits.test
    if data.max_test_samples is not None:
        test = type(test)(test.x[: data.max_test_samples], test.y[: data.max_test_samples])
    x_train, y_train = prepare(splits.train.x, splits.train.y)
    x_test, y_test = prepare(test.x, test.y)
    return Examples(x_train, y_train, x_test, y_test, classes)


def classifier_objective(model: nn.Module) -> tuple[Objective, nn.Module]:
    """Cross-entropy on logits, and the head the loss sees (the network without a final softmax)."""
    objective = build_objective("cross_entropy", final=final_activation(model))
    head = model[:-1] if objective.strip_final and isinstance(model, nn.Sequential) else model
    return objective, head


def logits_of(model: nn.Module, x: np.ndarray, *, batch: int = 4096) -> torch.Tensor:
    """The head's outputs (logits) for ``x``, in eval mode, without gradients: (N, classes)."""
    _, head = classifier_objective(model)
    was = head.training
    head.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch):
            out.append(head(torch.from_numpy(x[start : start + batch])))
    head.train(was)
    return torch.cat(out) if out else torch.zeros((0, 0))


def child_manifest(parent: Manifest, *, fmt: str, entrypoint: str, description: str) -> dict[str, Any]:
    """The manifest of a step's result: the parent's decoding and labels, a new format and entrypoint.

    The signature is left for the upload check to infer from the new file.
    """
    return {
        "format": fmt,
        "entrypoint": entrypoint,
        "preprocess": [step.model_dump(exclude_none=True) for step in parent.preprocess],
        "postprocess": [step.model_dump(exclude_none=True) for step in parent.postprocess],
        "labels": parent.labels,
        "description": description,
        "serving": parent.serving.model_dump(exclude_none=True),
    }


def _signature_shape(manifest: Manifest) -> list[int]:
    inputs = manifest.signature.inputs
    if len(inputs) != 1 or inputs[0].shape is None or any(d < 1 for d in inputs[0].shape[1:]):
        raise InvalidManifest(message="optimize needs one input with a fixed per-example shape")
    return list(inputs[0].shape[1:])
