"""torch.export archives (``.pt2``, ``torch.export.save``), run on the CPU or a CUDA GPU.

Unlike TorchScript, an exported program records the dtype and shape of every input, with dynamic
dimensions as symbols, so the signature is read from the program. The archive is checked by
:mod:`modelport.formats._pt2_guard` before ``torch.export.load`` sees it: that loader would
otherwise unpickle, ``eval`` and ``exec`` parts of the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.export.passes import move_to_device_pass

from modelport.errors import InvalidArtifact
from modelport.formats._common import (
    Files,
    default_output_names,
    describe_error,
    files_of,
    reconcile,
    resolve_entry,
    spec,
)
from modelport.formats._pt2_guard import check_archive
from modelport.formats.base import Inspection
from modelport.formats.torchscript import TorchPredictor
from modelport.serving import devices
from modelport.serving.devices import Device
from modelport.store.bundle import Manifest, ManifestInput, Signature, TensorSpec

NAME = "torch_export"
EXTENSIONS: tuple[str, ...] = (".pt2",)
ENTRYPOINT = "model.pt2"

_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.int8: "int8",
    torch.int16: "int16",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.uint8: "uint8",
    torch.bool: "bool",
}


def save(program: torch.export.ExportedProgram, directory: Path) -> Files:
    """Write an exported program as ``model.pt2`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(directory / ENTRYPOINT))
    return files_of(directory, [ENTRYPOINT])


def inspect(bundle_dir: Path, entrypoint: str, given: ManifestInput) -> Inspection:
    """Check the archive is safe and loads, and read the signature from the program."""
    program = _load_program(bundle_dir, entrypoint)
    try:
        program.module()  # builds the callable now, so a broken archive fails at upload
    except Exception as exc:  # noqa: BLE001 - any torch failure here means a broken archive
        raise InvalidArtifact(
            message=f"{entrypoint!r} cannot be turned into a module ({describe_error(exc, bundle_dir)})"
        ) from None
    inferred = program_signature(program)
    params = sum(t.numel() for t in program.state_dict.values())
    return Inspection(signature=reconcile(inferred, given.signature), extra={"parameters": int(params)})


def load(bundle_dir: Path, manifest: Manifest, device: Device = "cpu") -> TorchPredictor:
    """Load the program and build its callable module on ``device``."""
    program = _load_program(bundle_dir, manifest.entrypoint)
    weights = [*program.state_dict.values(), *program.constants.values()]
    size = sum(t.numel() * t.element_size() for t in weights if isinstance(t, torch.Tensor))
    where = devices.torch_device(device, NAME)
    return TorchPredictor(
        module_on(program, where), manifest.signature, memory_bytes=2 * size + (1 << 20), device=where
    )


def module_on(program: torch.export.ExportedProgram, where: torch.device) -> torch.nn.Module:
    """The program's callable module with every tensor on ``where``.

    ``program.module().to(where)`` is not enough: the graph keeps the device each tensor it makes was
    made on (``torch.ones(2)`` in ``forward`` is recorded as ``aten.ones(..., device=cpu)``), so a program
    exported on the CPU would fail at its first call on a GPU. torch's ``move_to_device_pass`` moves
    those too (pytorch/pytorch#121761, where ``to()`` on such a module is called unsupported).
    """
    if where.type != "cpu":
        program = move_to_device_pass(program, where)
    return program.module()


def program_signature(program: torch.export.ExportedProgram) -> Signature:
    """User inputs by name with dtype and shape (symbolic dims -> -1); outputs ``output``/``output_i``."""
    nodes = {n.name: n for n in program.graph.nodes}
    inputs = [_tensor_spec(name, _value(nodes.get(name))) for name in program.graph_signature.user_inputs]
    user_outputs = program.graph_signature.user_outputs
    names = default_output_names(len(user_outputs))
    outputs = [_tensor_spec(name, _value(nodes.get(str(out)))) for name, out in zip(names, user_outputs, strict=True)]
    return Signature(inputs=inputs, outputs=outputs)


def _value(node: torch.fx.Node | None) -> Any:
    """The fake tensor torch.export recorded for a node (dtype and possibly symbolic shape)."""
    return None if node is None else node.meta.get("val")


def _tensor_spec(name: str, value: Any) -> TensorSpec:
    if not isinstance(value, torch.Tensor):
        raise InvalidArtifact(message=f"{name!r} is not a tensor; Modelport serves tensor programs only")
    dtype = _DTYPES.get(value.dtype)
    if dtype is None:
        raise InvalidArtifact(message=f"{name!r} has dtype {value.dtype}, which Modelport cannot serve")
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in value.shape]  # SymInt dims -> -1
    return spec(name, dtype, shape)


def _load_program(bundle_dir: Path, entrypoint: str) -> torch.export.ExportedProgram:
    path = resolve_entry(bundle_dir, entrypoint)
    check_archive(path, entrypoint)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, SerializeError, AssertionError...
        raise InvalidArtifact(
            message=f"{entrypoint!r} is not a loadable torch.export archive ({describe_error(exc, bundle_dir)})"
        ) from None
    return program
