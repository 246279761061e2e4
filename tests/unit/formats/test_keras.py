"""formats/keras.py: .keras and legacy .h5 models, and configs that carry code."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelport.errors import InvalidArtifact, UnsafeFormat
from modelport.formats import keras as keras_format
from modelport.store.bundle import Manifest, ManifestInput, Signature, TensorSpec

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
ToManifest = Callable[..., Manifest]


def _mlp() -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8,), name="features"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def _save(model: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that .h5 is legacy and that lambdas are unsafe
        model.save(str(path))


@pytest.mark.parametrize("name", ["model.keras", "model.h5"])
def test_roundtrip_predictions_match(tmp_path: Path, to_manifest: ToManifest, name: str) -> None:
    model = _mlp()
    _save(model, tmp_path / name)
    info = keras_format.inspect(tmp_path, name, ManifestInput())
    assert info.signature == Signature(
        inputs=[TensorSpec(name="features", dtype="float32", shape=[-1, 8])],
        outputs=[TensorSpec(name="output", dtype="float32", shape=[-1, 3])],
    )
    predictor = keras_format.load(tmp_path, to_manifest("keras", name, info))
    x = np.random.default_rng(0).random((5, 8), dtype=np.float32)
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(predictor({"features": x})["output"], expected, atol=1e-5)
    predictor.unload()


def test_functional_model_with_two_inputs_and_outputs(tmp_path: Path, to_manifest: ToManifest) -> None:
    a, b = keras.Input((4,), name="a"), keras.Input((2,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    model = keras.Model([a, b], [keras.layers.Dense(3)(joined), keras.layers.Dense(1)(joined)])
    keras_format.save(model, tmp_path)
    info = keras_format.inspect(tmp_path, "model.keras", ManifestInput())
    assert info.signature is not None
    assert [(s.name, s.shape) for s in info.signature.inputs] == [("a", [-1, 4]), ("b", [-1, 2])]
    assert [(s.name, s.shape) for s in info.signature.outputs] == [("output_0", [-1, 3]), ("output_1", [-1, 1])]
    xa, xb = np.ones((2, 4), np.float32), np.ones((2, 2), np.float32)
    out = keras_format.load(tmp_path, to_manifest("keras", "model.keras", info))({"a": xa, "b": xb})
    expected = [keras.ops.convert_to_numpy(t) for t in model([xa, xb])]
    np.testing.assert_allclose(out["output_0"], expected[0], atol=1e-5)
    np.testing.assert_allclose(out["output_1"], expected[1], atol=1e-5)


@pytest.mark.parametrize("name", ["model.keras", "model.h5"])
def test_lambda_layers_are_refused(tmp_path: Path, name: str) -> None:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Lambda(lambda x: x * 2)])
    _save(model, tmp_path / name)
    with pytest.raises(UnsafeFormat, match="Lambda") as info:
        keras_format.inspect(tmp_path, name, ManifestInput())
    assert str(tmp_path) not in str(info.value)


def test_lambda_activations_are_refused(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation=lambda x: x)])
    _save(model, tmp_path / "model.keras")
    with pytest.raises(UnsafeFormat, match="bytecode"):
        keras_format.inspect(tmp_path, "model.keras", ManifestInput())


@keras.saving.register_keras_serializable(package="evil")
class Twice(keras.layers.Layer):  # type: ignore[name-defined, misc]  # keras comes from importorskip
    def call(self, x: Any) -> Any:
        return x * 2


def test_custom_objects_are_refused(tmp_path: Path) -> None:
    _save(keras.Sequential([keras.Input((8,)), Twice()]), tmp_path / "model.keras")
    with pytest.raises(UnsafeFormat, match=r"custom object|imports module"):
        keras_format.inspect(tmp_path, "model.keras", ManifestInput())


@pytest.mark.parametrize(
    "config",
    [
        {"module": "os", "class_name": "system", "config": {}},
        {"module": "builtins", "class_name": "function", "config": "eval"},
        {"module": "keras.utils", "class_name": "function", "config": "get_file"},
        {"class_name": "Dense", "config": {"activation": {"class_name": "__lambda__", "config": {}}}},
    ],
)
def test_configs_naming_code_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(UnsafeFormat):
        keras_format.check_config({"layers": [config]}, "model.keras")


def test_builtin_functions_pass() -> None:
    keras_format.check_config(
        {"module": "keras.activations", "class_name": "function", "config": "relu", "registered_name": None}, "m"
    )


def test_weights_only_h5_is_refused(tmp_path: Path) -> None:
    _mlp().save_weights(str(tmp_path / "model.weights.h5"))
    (tmp_path / "model.weights.h5").rename(tmp_path / "model.h5")
    with pytest.raises(InvalidArtifact):
        keras_format.inspect(tmp_path, "model.h5", ManifestInput())
