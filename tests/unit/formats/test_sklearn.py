"""formats/sklearn.py: skops only, a fixed trust list, outputs named label/probabilities/output."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from modelport.errors import InvalidArtifact, UnsafeFormat
from modelport.formats import sklearn as sklearn_format
from modelport.store.bundle import Manifest, ManifestInput, Signature, TensorSpec

ToManifest = Callable[..., Manifest]


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return x, y


def _predictor(folder: Path, estimator: Any, to_manifest: ToManifest) -> tuple[Signature, Any]:
    sklearn_format.save(estimator, folder)
    info = sklearn_format.inspect(folder, "model.skops", ManifestInput())
    assert info.signature is not None
    return info.signature, sklearn_format.load(folder, to_manifest("sklearn", "model.skops", info))


def test_logistic_regression_on_digits(
    tmp_path: Path, digits: tuple[np.ndarray, np.ndarray], to_manifest: ToManifest
) -> None:
    x, y = digits
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    signature, predictor = _predictor(tmp_path, model, to_manifest)
    assert signature == Signature(
        inputs=[TensorSpec(name="input", dtype="float64", shape=[-1, 64])],
        outputs=[
            TensorSpec(name="label", dtype="int64", shape=[-1]),
            TensorSpec(name="probabilities", dtype="float64", shape=[-1, 10]),
        ],
    )
    out = predictor({"input": x[:20]})
    np.testing.assert_array_equal(out["label"], model.predict(x[:20]))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(x[:20]), atol=1e-5)
    assert out["label"].dtype == np.int64
    predictor.unload()


def test_trusted_internal_types_and_string_labels(
    tmp_path: Path, digits: tuple[np.ndarray, np.ndarray], to_manifest: ToManifest
) -> None:
    x, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])[y]
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, names)
    assert skops.io.get_untrusted_types(data=skops.io.dumps(model)) == ["sklearn.tree._tree.Tree"]
    signature, predictor = _predictor(tmp_path, model, to_manifest)
    assert signature.outputs[0] == TensorSpec(name="label", dtype="string", shape=[-1])
    out = predictor({"input": x[:10]})
    assert out["label"].tolist() == model.predict(x[:10]).tolist()
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(x[:10]), atol=1e-5)


def test_regressor_output(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray], to_manifest: ToManifest) -> None:
    x, y = digits
    model = Ridge().fit(x, y.astype(float))
    signature, predictor = _predictor(tmp_path, model, to_manifest)
    assert signature.outputs == [TensorSpec(name="output", dtype="float64", shape=[-1])]
    np.testing.assert_allclose(predictor({"input": x[:5]})["output"], model.predict(x[:5]), atol=1e-5)


def test_untrusted_types_are_refused_by_name(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    clip = FunctionTransformer(functools.partial(np.clip, a_min=0, a_max=8))
    model = make_pipeline(clip, LogisticRegression(max_iter=2000)).fit(x, y)
    sklearn_format.save(model, tmp_path)
    with pytest.raises(UnsafeFormat, match=r"functools\.partial") as info:
        sklearn_format.inspect(tmp_path, "model.skops", ManifestInput())
    assert "skops" in info.value.details["instead"]
    with pytest.raises(UnsafeFormat):
        sklearn_format.load(tmp_path, Manifest(format="sklearn", entrypoint="model.skops"))


def test_trust_list_holds_no_code_runners() -> None:
    for name in sklearn_format.TRUSTED_TYPES:
        assert name.split(".")[0] in ("sklearn", "numpy", "scipy"), name
    for dangerous in ("builtins.eval", "builtins.exec", "functools.partial", "os.system", "subprocess.Popen"):
        assert dangerous not in sklearn_format.TRUSTED_TYPES


def test_not_a_skops_file(tmp_path: Path) -> None:
    (tmp_path / "model.skops").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    with pytest.raises(InvalidArtifact) as info:
        sklearn_format.inspect(tmp_path, "model.skops", ManifestInput())
    assert str(tmp_path) not in str(info.value)


def test_a_signature_without_outputs_still_predicts(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    model = Ridge().fit(x, y.astype(float))
    sklearn_format.save(model, tmp_path)
    given = Signature(inputs=[TensorSpec(name="input", dtype="float64", shape=[-1, 64])])
    manifest = Manifest(format="sklearn", entrypoint="model.skops", signature=given)
    out = sklearn_format.load(tmp_path, manifest)({"input": x[:3]})
    np.testing.assert_allclose(out["output"], model.predict(x[:3]), atol=1e-5)
