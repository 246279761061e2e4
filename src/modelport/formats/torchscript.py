"""TorchScript archives (``torch.jit.save``), run on the CPU under ``torch.inference_mode``.

A TorchScript file records code and weights but not the dtypes or shapes of its inputs, so the
uploader must give a signature. When that signature fixes every input dimension but the batch, one
zero example of batch size 1 is run at upload to learn the outputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelport.errors import InvalidArtifact, InvalidInput, InvalidManifest
from modelport.formats._common import (
    Files,
    batch_shape,
    default_output_names,
    describe_error,
    dtype_name,
    files_of,
    reconcile,
    resolve_entry,
    spec,
)
from modelport.formats.base import Inspection, Tensors
from modelport.serving import devices
from modelport.serving.devices import Device
from modelport.store.bundle import Manifest, ManifestInput, Signature, TensorSpec

NAME = "torchscript"
EXTENSIONS: tuple[str, ...] = (".pt", ".pth")
ENTRYPOINT = "model.pt"


def save(model: torch.jit.ScriptModule, directory: Path) -> Files:
    """Write a scripted or traced module as ``model.pt`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.jit.save(model, str(directory / ENTRYPOINT))
    return files_of(directory, [ENTRYPOINT])


def inspect(bundle_dir: Path, entrypoint: str, given: ManifestInput) -> Inspection:
    """Check the archive loads; require the uploader's signature and complete its outputs."""
    if given.signature is None or not given.signature.inputs:
        raise InvalidManifest(
            message="torchscript needs a signature with its inputs (name, dtype, shape): "
            "a TorchScript file does not record them"
        )
    if any(s.dtype == "string" for s in given.signature.inputs):
        raise InvalidManifest(message="torchscript inputs must be numeric tensors, not strings")
    module = _load_module(bundle_dir, entrypoint)
    signature = given.signature
    if _runnable(signature.inputs):
        signature = _probe_outputs(module, signature, bundle_dir)
    params = sum(p.numel() for p in module.parameters())
    return Inspection(signature=signature, extra={"parameters": int(params)})


def load(bundle_dir: Path, manifest: Manifest, device: Device = "cpu") -> TorchPredictor:
    """Load the archive onto the CPU in eval mode."""
    where = devices.torch_device(device, NAME)
    module = _load_module(bundle_dir, manifest.entrypoint)
    return TorchPredictor(module.to(where), manifest.signature, memory_bytes=_module_bytes(module), device=where)


class TorchPredictor:
    """Calls a torch module with the signature's inputs, in order, and names its outputs.

    Shared by the torchscript, torch_export and torch formats: all three take positional tensors.
    """

    def __init__(self, module: Any, signature: Signature, memory_bytes: int, device: Any = None) -> None:
        self._module: Any = module
        self.signature = signature
        self.memory_bytes = memory_bytes
        self._device = None if device is None or device.type == "cpu" else device
        """Where inputs go before the call (None: the CPU, where ``from_numpy`` shares the memory)."""

    def __call__(self, inputs: Tensors) -> Tensors:
        if self._module is None:
            raise RuntimeError("predictor was unloaded")
        missing = [s.name for s in self.signature.inputs if s.name not in inputs]
        if missing:
            raise InvalidInput(message=f"missing input(s) {missing}", details={"missing": missing})
        args = [_tensor(inputs[s.name]) for s in self.signature.inputs]
        if self._device is not None:
            args = [a.to(self._device, non_blocking=True) for a in args]
        with torch.inference_mode():
            result = self._module(*args)
        return name_outputs(result, [s.name for s in self.signature.outputs])

    def unload(self) -> None:
        self._module = None


def _tensor(array: np.ndarray[Any, Any]) -> torch.Tensor:
    """A tensor sharing ``array``'s memory. Raw-tensor bodies arrive as read-only arrays (straight over
    the request's bytes); torch takes them with a warning that its tensors cannot be read-only, though
    a model only reads its inputs (under ``inference_mode``), and a write would touch only that
    request's own bytes. So the warning is silenced there rather than the bytes copied. (The filter
    is process-wide while it is on, so two threads here at once can leave this one message ignored
    for good: harmless, and torch gives it once a process anyway.)"""
    array = np.ascontiguousarray(array)
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return torch.from_numpy(array)


def name_outputs(result: Any, names: Sequence[str]) -> Tensors:
    """Map a module's return value (tensor, tuple/list of tensors, or dict) to named arrays.

    With no names in the signature, one output is ``output`` and several are ``output_0``...
    """
    if isinstance(result, dict):
        return {str(k): to_numpy(v) for k, v in result.items()}
    values = [result] if isinstance(result, torch.Tensor) else list(result)
    if not names:
        names = default_output_names(len(values))
    if len(values) != len(names):
        raise InvalidArtifact(
            message=f"the model returned {len(values)} output(s) but its signature names {len(names)}"
        )
    return {name: to_numpy(value) for name, value in zip(names, values, strict=True)}


def to_numpy(value: Any) -> np.ndarray[Any, Any]:
    """Detach a tensor to a numpy array; bfloat16, which numpy lacks, becomes float32."""
    if not isinstance(value, torch.Tensor):
        raise InvalidArtifact(message=f"the model returned a {type(value).__name__}, not a tensor")
    tensor = value.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def _load_module(bundle_dir: Path, entrypoint: str) -> torch.jit.ScriptModule:
    path = resolve_entry(bundle_dir, entrypoint)
    try:
        module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            str(path), map_location="cpu"
        )
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, ValueError or its own classes
        raise InvalidArtifact(
            message=f"{entrypoint!r} is not a loadable TorchScript archive ({describe_error(exc, bundle_dir)})"
        ) from None
    module.eval()
    return module


def _runnable(inputs: Sequence[TensorSpec]) -> bool:
    """True when every input shape is known apart from a leading any-size batch dimension."""
    return all(s.shape is not None and len(s.shape) >= 1 and all(d > 0 for d in s.shape[1:]) for s in inputs)


def _probe_outputs(module: Any, signature: Signature, bundle_dir: Path) -> Signature:
    """Run one all-zero example (batch 1) to learn output dtypes and shapes."""
    args = []
    for s in signature.inputs:
        shape = [1, *(s.shape or [])[1:]]  # (1, *example_shape)
        args.append(torch.zeros(shape, dtype=getattr(torch, s.dtype)))
    try:
        with torch.inference_mode():
            outputs = name_outputs(module(*args), [o.name for o in signature.outputs])
    except InvalidArtifact:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the model's own code raises
        raise InvalidArtifact(
            message=f"the model fails on an all-zero example of the signature ({describe_error(exc, bundle_dir)})"
        ) from None
    inferred = [
        spec(name, dtype_name(array.dtype), batch_shape(array.shape[1:]) if array.ndim else [])
        for name, array in outputs.items()
    ]
    merged = reconcile(Signature(inputs=list(signature.inputs), outputs=inferred), signature)
    return merged if merged is not None else signature


def _module_bytes(module: Any) -> int:
    """Parameters and buffers, twice over for activations and the allocator's slack."""
    tensors = [*module.parameters(), *module.buffers()]
    return int(2 * sum(t.numel() * t.element_size() for t in tensors) + (1 << 20))
