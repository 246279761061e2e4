"""The manifest's pre/post-processing around a predictor, and input checks."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.errors import InvalidInput
from modelport.formats.base import Tensors
from modelport.serving.pipeline import Pipeline
from modelport.store.bundle import Manifest, Signature, TensorSpec


class Linear:
    """A real (tiny) predictor: y = x @ W, so every expected value can be computed by hand."""

    memory_bytes = 0

    def __init__(self, weights: np.ndarray, *, in_shape: list[int]) -> None:
        self.w = weights
        self.signature = Signature(
            inputs=[TensorSpec(name="x", shape=in_shape)], outputs=[TensorSpec(name="y", shape=[-1, weights.shape[1]])]
        )

    def __call__(self, inputs: Tensors) -> Tensors:
        x = inputs["x"].reshape(len(inputs["x"]), -1)
        return {"y": x @ self.w}

    def unload(self) -> None:
        pass


def make(
    pre: list[dict[str, object]],
    post: list[dict[str, object]],
    labels: list[str] | None = None,
    in_shape: list[int] | None = None,
) -> Pipeline:
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    predictor = Linear(w, in_shape=in_shape or [-1, 4])
    manifest = Manifest.model_validate(
        {
            "format": "onnx",
            "entrypoint": "m.onnx",
            "signature": predictor.signature.model_dump(),
            "preprocess": pre,
            "postprocess": post,
            "labels": labels,
        }
    )
    return Pipeline(manifest, predictor)  # type: ignore[arg-type]


def test_one_example_versus_batch() -> None:
    p = make([], [])
    arrays, single = p.prepare([1, 2, 3, 4], max_batch=10)
    assert single and arrays["x"].shape == (1, 4) and arrays["x"].dtype == np.float32
    arrays, single = p.prepare([[1, 2, 3, 4]] * 3, max_batch=10)
    assert not single and arrays["x"].shape == (3, 4)


def test_scale_normalize_and_decode_labels() -> None:
    p = make(
        [{"scale": 0.5}, {"normalize": {"mean": 1.0, "std": 2.0}}],
        [{"softmax": True}, {"argmax": True}],
        labels=["a", "b", "c"],
    )
    arrays, single = p.prepare([2, 2, 2, 2], max_batch=10)
    np.testing.assert_allclose(arrays["x"], np.zeros((1, 4)))
    outputs, predictions = p.decode(p.run(arrays), single=single)
    np.testing.assert_allclose(outputs, [1 / 3] * 3, rtol=1e-6)
    assert predictions["label"] == "a" and predictions["index"] == 0


def test_reshape_and_top_k() -> None:
    p = make([{"reshape": [2, 2]}], [{"top_k": 2}], in_shape=[-1, 2, 2])
    arrays, single = p.prepare([[1, 0, 0, 0], [0, 0, 0, 1]], max_batch=10)
    assert arrays["x"].shape == (2, 2, 2) and not single
    _, predictions = p.decode(p.run(arrays), single=single)
    assert [item["index"] for item in predictions[0]] == [2, 1]
    assert [item["index"] for item in predictions[1]] == [2, 1]


@pytest.mark.parametrize(
    "bad",
    [
        [1, 2, 3],
        [[1, 2], [3, 4]],
        [[1, 2, 3, 4], [1, 2]],
        ["a", "b", "c", "d"],
        [float("nan")] * 4,
        [[[1, 2, 3, 4]]],
        "text",
        {"x": [1, 2, 3, 4], "z": [1]},
        [[]],
    ],
)
def test_bad_inputs_raise_invalid_input(bad: object) -> None:
    with pytest.raises(InvalidInput):
        make([], []).prepare(bad, max_batch=10)


def test_batch_limit() -> None:
    with pytest.raises(InvalidInput, match="over the limit"):
        make([], []).prepare([[1, 2, 3, 4]] * 11, max_batch=10)


def test_nan_in_outputs_becomes_null_in_json() -> None:
    import orjson

    p = make([], [])
    outputs, _ = p.decode({"y": np.array([[np.nan, 1.0, np.inf]], dtype=np.float32)}, single=True)
    assert orjson.loads(orjson.dumps(outputs, option=orjson.OPT_SERIALIZE_NUMPY)) == [None, 1.0, None]


@pytest.mark.parametrize(
    "rows",
    [
        [[0.1, 0.2, 0.3, 0.4]],
        [[1, 2, 3, 4], [5.5, 6, 7, 8]],
        [[True, 0, 1e-45, -3.4e38]],
        [[0.5, "2", 3, 4]],  # numbers in strings after a number convert on both paths alike
        [[0.5, 2**70, 3, 4], [1, 2, 3, 4]],  # an int past int64 is still a float64
    ],
)
def test_fast_lane_gives_the_general_paths_arrays(rows: list[list[object]]) -> None:
    """A (N, 4) float model takes JSON rows through its fast lane; a model with a free width takes the
    general path. Both must make the very same float32 arrays."""
    fast, general = make([], []), make([], [], in_shape=[-1, -1])
    got, single = fast.prepare(rows, max_batch=10)
    want, _ = general.prepare(rows, max_batch=10)
    assert not single and got["x"].dtype == np.float32
    np.testing.assert_array_equal(got["x"], want["x"])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([0.1, 0.2, float("nan"), 0.4], "NaN or Infinity"),
        ([0.1, 0.2, 1e39, 0.4], "NaN or Infinity"),  # finite as JSON, infinite as float32
        ([0.1, None, 0.3, 0.4], "NaN or Infinity"),
        ([0.1, "x", 0.3, 0.4], "must hold numbers"),
        ([0.1, [0.2], 0.3, 0.4], "rectangular"),
        ([0.1, 10**400, 0.3, 0.4], "must hold numbers"),  # past float64: struct refuses it, so does numpy
    ],
)
def test_fast_lane_leaves_bad_rows_to_the_general_paths_message(row: list[object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        make([], []).prepare([row], max_batch=10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_raw_tensors_take_the_fast_lane_with_the_same_checks(dtype: type) -> None:
    fast, general = make([], []), make([], [], in_shape=[-1, -1])
    arr = np.linspace(-2, 2, 12, dtype=dtype).reshape(3, 4)
    got, single = fast.prepare(arr, max_batch=10)
    want, _ = general.prepare(arr, max_batch=10)
    assert not single and got["x"].dtype == np.float32
    np.testing.assert_array_equal(got["x"], want["x"])
    for bad in (np.nan, np.inf, -np.inf):
        broken = arr.copy()
        broken[1, 2] = bad
        with pytest.raises(InvalidInput, match="NaN or Infinity"):
            fast.prepare(broken, max_batch=10)
    if dtype is np.float64:
        with pytest.raises(InvalidInput, match="NaN or Infinity"):  # past float32's range
            fast.prepare(np.full((1, 4), 1e39), max_batch=10)
