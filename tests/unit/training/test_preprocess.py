"""training/data/preprocess.py: what training applies is what serving applies, step for step."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.errors import BadRequest
from modelport.serving.pipeline import Pipeline
from modelport.store.bundle import Manifest
from modelport.training.data.preprocess import apply_steps, fit_steps, input_shape_for, one_hot
from modelport.training.spec import PreprocessStep


def steps(*raw: object) -> list[PreprocessStep]:
    return [PreprocessStep.model_validate(r) for r in raw]


def test_standardize_is_fitted_on_train_and_recorded_as_normalize() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, size=(500, 3)).astype(np.float32)
    x[:, 2] = 7.0  # a constant feature must not divide by zero
    fitted = fit_steps(steps({"scale": 0.5}, "standardize"), x, [3])
    assert fitted[0] == {"scale": 0.5} and fitted[-1] == {"reshape": [3]}
    norm = fitted[1]["normalize"]
    assert norm["std"][2] == 1.0 and norm["mean"][2] == pytest.approx(3.5)
    out = apply_steps(fitted, x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, :2].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out[:, :2].std(axis=0), 1.0, atol=1e-4)


def test_training_preprocessing_equals_serving(tmp_path: object) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(4, 4, 4)).astype(np.uint8)
    fitted = fit_steps(steps({"scale": 1 / 255}, "standardize", {"shift": 0.1}), images, [1, 4, 4])
    manifest = Manifest.model_validate(
        {
            "format": "onnx",
            "entrypoint": "model.onnx",
            "preprocess": fitted,
            "signature": {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 4, 4]}]},
        }
    )
    served, _ = Pipeline(manifest, predictor=None).prepare(images.tolist(), max_batch=16)  # type: ignore[arg-type]
    np.testing.assert_array_equal(served["input"], apply_steps(fitted, images))


def test_input_shape_rules() -> None:
    assert input_shape_for((28, 28), [], "dense", None) == [784]
    assert input_shape_for((28, 28), [], "conv2d", None) == [1, 28, 28]
    assert input_shape_for((28, 28), steps({"reshape": [4, 196]}), "dense", None) == [4, 196]
    assert input_shape_for((28, 28), [], "dense", [2, 392]) == [2, 392]
    with pytest.raises(BadRequest, match="does not hold"):
        input_shape_for((28, 28), [], "dense", [100])


def test_one_hot() -> None:
    assert one_hot(np.array([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    with pytest.raises(BadRequest, match="class ids"):
        one_hot(np.array([3]), 3)
