"""Keras 3 models (``.keras`` archives and legacy ``.h5`` files); needs ``modelport[keras]``.

Keras rebuilds a model from a JSON config, and that config can carry Python bytecode (``Lambda``
layers, lambda activations) or name functions in arbitrary modules. Keras' ``safe_mode`` refuses
lambdas; we also read the config ourselves first (zip + JSON, or h5py attributes) and refuse
bytecode, non-Keras modules and custom objects, so a future Keras bug cannot be the only guard.
Keras is imported lazily with the torch backend, the one Modelport installs.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from modelport.errors import BadRequest, InvalidArtifact, InvalidInput, UnsafeFormat
from modelport.formats._common import (
    Files,
    default_output_names,
    describe_error,
    files_of,
    reconcile,
    resolve_entry,
    spec,
)
from modelport.formats.base import Inspection, Tensors
from modelport.serving import devices
from modelport.serving.devices import Device
from modelport.store.bundle import Manifest, ManifestInput, Signature, TensorSpec

NAME = "keras"
EXTENSIONS: tuple[str, ...] = (".keras", ".h5", ".hdf5")
ENTRYPOINT = "model.keras"
INSTEAD = "a .keras model made of built-in Keras layers only, or ONNX"

_MAX_CONFIG_BYTES = 64 * 1024 * 1024
_CODE_CLASSES = frozenset({"Lambda", "__lambda__", "TFOpLambda", "SlicingOpLambda"})
_FUNCTION_MODULES = ("keras.activations", "keras.losses", "keras.metrics", "keras.src.activations",
                     "keras.src.losses", "keras.src.metrics")  # fmt: skip
_MARSHAL_CODE = 0xE3  # marshal's TYPE_CODE | FLAG_REF: how Keras stores a lambda's bytecode


def keras_module() -> Any:
    """Import Keras with the torch backend unless one was chosen; explain a missing extra."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as exc:
        raise BadRequest(
            message=f"the keras format needs the optional extra: pip install 'modelport[keras]' ({exc.name} missing)"
        ) from None
    return keras


def save(model: Any, directory: Path) -> Files:
    """Write a Keras model as ``model.keras`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save(str(directory / ENTRYPOINT))
    return files_of(directory, [ENTRYPOINT])


def inspect(bundle_dir: Path, entrypoint: str, given: ManifestInput) -> Inspection:
    """Refuse code in the config, load in safe mode and read the signature from the model."""
    model = _load_model(bundle_dir, entrypoint)
    inferred = model_signature(model)
    return Inspection(signature=reconcile(inferred, given.signature), extra={"parameters": int(model.count_params())})


def load(bundle_dir: Path, manifest: Manifest, device: Device = "cpu") -> KerasPredictor:
    """Load the model without its training configuration (on the CPU only)."""
    devices.require(device, NAME)
    model = _load_model(bundle_dir, manifest.entrypoint)
    size = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
    return KerasPredictor(model, manifest.signature, memory_bytes=2 * size + (1 << 20))


class KerasPredictor:
    """Calls ``predict_on_batch``; a lock keeps Keras' cached predict function single-threaded."""

    def __init__(self, model: Any, signature: Signature, memory_bytes: int) -> None:
        self._model: Any = model
        self.signature = signature
        self.memory_bytes = memory_bytes
        self._lock = threading.Lock()

    def __call__(self, inputs: Tensors) -> Tensors:
        if self._model is None:
            raise RuntimeError("predictor was unloaded")
        missing = [s.name for s in self.signature.inputs if s.name not in inputs]
        if missing:
            raise InvalidInput(message=f"missing input(s) {missing}", details={"missing": missing})
        args = [inputs[s.name] for s in self.signature.inputs]
        with self._lock:
            result = self._model.predict_on_batch(args[0] if len(args) == 1 else args)
        values = result if isinstance(result, list | tuple) else [result]
        names = [s.name for s in self.signature.outputs] or default_output_names(len(values))
        if len(names) != len(values):
            raise InvalidArtifact(message=f"the model returned {len(values)} outputs, its signature {len(names)}")
        return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}

    def unload(self) -> None:
        self._model = None


def model_signature(model: Any) -> Signature:
    """Inputs by their Keras names, outputs ``output``/``output_i``; ``None`` dims become -1."""
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        raise InvalidArtifact(message="the model was saved before it was built; build it with keras.Input") from None
    names = default_output_names(len(outputs))
    return Signature(
        inputs=[_tensor_spec(str(t.name), t) for t in inputs],
        outputs=[_tensor_spec(name, t) for name, t in zip(names, outputs, strict=True)],
    )


def _tensor_spec(name: str, tensor: Any) -> TensorSpec:
    shape = [-1 if d is None else int(d) for d in tensor.shape]
    return spec(name, str(tensor.dtype), shape)


def check_config(config: Any, filename: str) -> None:
    """Refuse Python bytecode, functions outside Keras, non-Keras modules and custom objects."""
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            _check_object(item, filename)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and _is_bytecode(item):
            raise UnsafeFormat(filename=filename, reason="its config holds Python bytecode (a lambda)", instead=INSTEAD)


def _check_object(item: dict[str, Any], filename: str) -> None:
    class_name, module = item.get("class_name"), item.get("module")
    registered = item.get("registered_name")
    if class_name in _CODE_CLASSES:
        raise UnsafeFormat(filename=filename, reason=f"it uses a {class_name} layer (Python code)", instead=INSTEAD)
    if isinstance(module, str) and not (module == "keras" or module.startswith("keras.")):
        raise UnsafeFormat(filename=filename, reason=f"its config imports module {module[:60]!r}", instead=INSTEAD)
    if class_name == "function" and not (isinstance(module, str) and module.startswith(_FUNCTION_MODULES)):
        raise UnsafeFormat(filename=filename, reason=f"its config calls a function from {module!r}", instead=INSTEAD)
    if isinstance(registered, str) and ">" in registered:
        raise UnsafeFormat(filename=filename, reason=f"it needs the custom object {registered[:60]!r}", instead=INSTEAD)


def _is_bytecode(text: str) -> bool:
    if len(text) < 16 or not text.startswith("4w"):
        return False
    try:
        return base64.b64decode(text[:16], validate=False)[0] == _MARSHAL_CODE
    except (binascii.Error, ValueError, IndexError):
        return False


def read_config(path: Path, entrypoint: str) -> Any:
    """The model config JSON, read without Keras: ``config.json`` of a .keras zip, or h5 attributes."""
    suffix = PurePosixPath(entrypoint).suffix.lower()
    try:
        if suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                if archive.getinfo("config.json").file_size > _MAX_CONFIG_BYTES:
                    raise InvalidArtifact(message=f"{entrypoint!r}: config.json is too large")
                return json.loads(archive.read("config.json"))
        return _read_h5_config(path, entrypoint)
    except (KeyError, ValueError, OSError, EOFError, NotImplementedError, zipfile.BadZipFile):
        raise InvalidArtifact(message=f"{entrypoint!r} is not a Keras model file with a config") from None


def _read_h5_config(path: Path, entrypoint: str) -> Any:
    try:
        import h5py
    except ImportError:
        raise BadRequest(message="the keras format needs the optional extra: pip install 'modelport[keras]'") from None
    with h5py.File(path, "r") as handle:
        raw = handle.attrs.get("model_config")
        if raw is None:
            raise InvalidArtifact(message=f"{entrypoint!r} holds weights only; save the whole model")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        training = handle.attrs.get("training_config")
    config = {"model_config": json.loads(text)}
    if training is not None:
        config["training_config"] = json.loads(training.decode() if isinstance(training, bytes) else str(training))
    return config


def _load_model(bundle_dir: Path, entrypoint: str) -> Any:
    path = resolve_entry(bundle_dir, entrypoint)
    check_config(read_config(path, entrypoint), entrypoint)
    keras = keras_module()
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError/TypeError for unknown or refused objects
        raise InvalidArtifact(message=f"Keras cannot load {entrypoint!r} ({describe_error(exc, bundle_dir)})") from None
