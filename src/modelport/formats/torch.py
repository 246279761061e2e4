"""Torch networks stored as safetensors weights plus the layer list that rebuilds them.

No Python code travels with the model: ``manifest.architecture`` holds the training spec's
``layers`` and ``input_shape``, :func:`modelport.training.nets.build_network` rebuilds the
``nn.Sequential``, and the weights load with ``strict=True``. The weight file's header is compared
with the network built on the meta device first, so a bad layer list cannot allocate memory.

Pruned or int8 weights may be stored compressed (:mod:`modelport.formats.compressed`), so the size
on disk shrinks with sparsity; the file stays a safetensors file and is decoded to the dense
state_dict on load. The shape check uses the shapes the header declares, before any data is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import safetensors
import safetensors.torch
import torch
from torch import nn

from modelport.errors import InvalidArtifact, InvalidManifest
from modelport.formats import compressed
from modelport.formats._common import (
    Files,
    batch_shape,
    describe_error,
    dtype_name,
    files_of,
    reconcile,
    resolve_entry,
    spec,
)
from modelport.formats.base import Inspection
from modelport.formats.torchscript import TorchPredictor, to_numpy
from modelport.serving import devices
from modelport.serving.devices import Device
from modelport.store.bundle import Manifest, ManifestInput, Signature
from modelport.training.nets import LayerSpecError, build_network, input_dtype

NAME = "torch"
EXTENSIONS: tuple[str, ...] = (".safetensors",)
ENTRYPOINT = "model.safetensors"
_SHOWN_KEYS = 5
Encoding = Literal["dense", "sparse", "int8"]
"""How ``save`` stores weights: plain, sparse float32 (lossless), or int8 (sparse or dense, per tensor)."""
_ENCODINGS: tuple[Encoding, ...] = ("dense", "sparse", "int8")


def architecture(layers: Sequence[Any], input_shape: Sequence[int]) -> dict[str, Any]:
    """The ``manifest.architecture`` value for a network built from ``layers``."""
    return {"layers": list(layers), "input_shape": list(input_shape)}


def save(
    model: nn.Module,
    directory: Path,
    *,
    layers: Sequence[Any],
    input_shape: Sequence[int],
    encoding: Encoding = "dense",
) -> Files:
    """Write ``model``'s weights as ``model.safetensors``, after checking they fit the layer list.

    The check runs here, at training time, so that a version which cannot be loaded back is never
    registered. ``encoding="sparse"`` is lossless; ``"int8"`` rounds each weight to within half its
    row's scale. Each weight still falls back to plain storage where that is smaller.
    """
    if encoding not in _ENCODINGS:
        raise ValueError(f"encoding must be one of {list(_ENCODINGS)}, not {encoding!r}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _check_keys_and_shapes({k: tuple(v.shape) for k, v in state.items()}, _expected_shapes(layers, input_shape))
    if encoding == "dense":
        tensors, metadata = state, {"format": "pt"}
    else:
        tensors, metadata = compressed.encode(state, int8=encoding == "int8")
    directory.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(directory / ENTRYPOINT), metadata=metadata)
    return files_of(directory, [ENTRYPOINT])


def inspect(bundle_dir: Path, entrypoint: str, given: ManifestInput) -> Inspection:
    """Rebuild the network from ``given.architecture``, load the weights strictly, infer the signature."""
    layers, input_shape = parse_architecture(given.architecture)
    net = load_network(bundle_dir, entrypoint, layers, input_shape)
    inferred = _infer_signature(net, layers, input_shape)
    params = sum(p.numel() for p in net.parameters())
    return Inspection(signature=reconcile(inferred, given.signature), extra={"parameters": int(params)})


def load(bundle_dir: Path, manifest: Manifest, device: Device = "cpu") -> TorchPredictor:
    """Rebuild the network and load its weights in eval mode, then move it to ``device``."""
    where = devices.torch_device(device, NAME)
    layers, input_shape = parse_architecture(manifest.architecture)
    net = load_network(bundle_dir, manifest.entrypoint, layers, input_shape)
    size = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    return TorchPredictor(net.to(where), manifest.signature, memory_bytes=2 * size + (1 << 20), device=where)


def parse_architecture(value: dict[str, Any] | None) -> tuple[list[Any], list[int]]:
    """``(layers, input_shape)`` from a manifest's architecture, or InvalidManifest."""
    if not isinstance(value, dict):
        raise InvalidManifest(
            message='format torch needs "architecture": {"layers": [...], "input_shape": [...]} '
            "(the training spec's layer list and the per-example input shape)"
        )
    unknown = sorted(set(value) - {"layers", "input_shape"})
    if unknown:
        raise InvalidManifest(message=f"architecture: unknown key(s) {unknown}; expected layers, input_shape")
    layers, input_shape = value.get("layers"), value.get("input_shape")
    if not isinstance(layers, list) or not layers:
        raise InvalidManifest(message="architecture.layers must be a non-empty list")
    if not isinstance(input_shape, list) or any(isinstance(d, bool) or not isinstance(d, int) for d in input_shape):
        raise InvalidManifest(message="architecture.input_shape must be a list of integers")
    return layers, input_shape


def _expected_shapes(layers: Sequence[Any], input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """state_dict key -> shape of the network for ``layers``, built without allocating weights."""
    try:
        with torch.device("meta"):
            net = build_network(layers, input_shape)
    except LayerSpecError as exc:
        raise InvalidManifest(message=f"architecture: {exc}") from None
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _check_keys_and_shapes(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[:_SHOWN_KEYS]}" + (" ..." if len(missing) > _SHOWN_KEYS else ""))
        if unexpected:
            parts.append(f"unexpected {unexpected[:_SHOWN_KEYS]}" + (" ..." if len(unexpected) > _SHOWN_KEYS else ""))
        raise InvalidArtifact(message=f"the weights do not match the layer list: {'; '.join(parts)}")
    wrong = [f"{k}: {list(found[k])} != {list(expected[k])}" for k in sorted(expected) if found[k] != expected[k]]
    if wrong:
        raise InvalidArtifact(message=f"weight shapes do not match the layer list: {', '.join(wrong[:_SHOWN_KEYS])}")


def load_network(bundle_dir: Path, entrypoint: str, layers: list[Any], input_shape: list[int]) -> nn.Sequential:
    """The network with its weights (dense or compressed) loaded strictly, in eval mode; or InvalidArtifact.

    Public for transforms that need the ``nn.Module`` itself (pruning, quantization), not a Predictor.
    """
    path = resolve_entry(bundle_dir, entrypoint)
    expected = _expected_shapes(layers, input_shape)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            found = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118  # not a dict
        _check_keys_and_shapes(compressed.declared_shapes(found, metadata), expected)
        state = compressed.decode(safetensors.torch.load_file(str(path), device="cpu"), metadata)
    except InvalidArtifact:
        raise
    except Exception as exc:  # noqa: BLE001 - SafetensorError for a bad header, OSError for truncated data
        raise InvalidArtifact(
            message=f"{entrypoint!r} is not a valid safetensors file ({describe_error(exc, bundle_dir)})"
        ) from None
    net = build_network(layers, input_shape)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # dtype that cannot be copied into float parameters, etc.
        raise InvalidArtifact(message=f"cannot load the weights: {describe_error(exc, bundle_dir)}") from None
    return net.eval()


def _infer_signature(net: nn.Sequential, layers: list[Any], input_shape: list[int]) -> Signature:
    """Input from the architecture; output from running one all-zero example (batch 1)."""
    dtype = input_dtype(layers)
    example = torch.zeros((1, *input_shape), dtype=getattr(torch, dtype))  # (1, *input_shape)
    try:
        with torch.inference_mode():
            out = net(example)  # (1, *out_shape)
    except Exception as exc:  # noqa: BLE001 - a layer list that builds but cannot run
        raise InvalidArtifact(message=f"the network fails on an all-zero input ({describe_error(exc)})") from None
    output_dtype = dtype_name(to_numpy(out).dtype)
    return Signature(
        inputs=[spec("input", dtype, batch_shape(input_shape))],
        outputs=[spec("output", output_dtype, batch_shape(out.shape[1:]))],
    )
