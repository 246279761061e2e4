"""scikit-learn models saved with skops (never pickle or joblib).

skops refuses to build any type it does not trust by default unless the caller names it. We name
only the types in :data:`TRUSTED_TYPES`, a fixed list of scikit-learn internals (tree structures,
losses, kernels, neighbour indexes) and the few NumPy/SciPy callables that estimators keep. A file
needing anything else (a custom class, ``functools.partial``, ``os.system``) is refused at upload.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import skops.io
from sklearn.base import is_classifier

from modelport.errors import InvalidArtifact, InvalidInput, UnsafeFormat
from modelport.formats._common import Files, describe_error, dtype_name, files_of, reconcile, resolve_entry, spec
from modelport.formats.base import Inspection, Tensors
from modelport.serving import devices
from modelport.serving.devices import Device
from modelport.store.bundle import Manifest, ManifestInput, Signature, TensorSpec

NAME = "sklearn"
EXTENSIONS: tuple[str, ...] = (".skops",)
ENTRYPOINT = "model.skops"
INSTEAD = "a model built only from scikit-learn estimators (skops.io.dump), or ONNX (skl2onnx)"

_LOSSES = (
    "HalfSquaredError", "AbsoluteError", "PinballLoss", "HuberLoss", "HalfPoissonLoss", "HalfGammaLoss",
    "HalfTweedieLoss", "HalfTweedieLossIdentity", "HalfBinomialLoss", "ExponentialLoss", "HalfMultinomialLoss",
)  # fmt: skip
_LINKS = ("IdentityLink", "LogLink", "LogitLink", "HalfLogitLink", "MultinomialLogit", "Interval")
_KERNELS = (
    "ConstantKernel", "WhiteKernel", "RBF", "Matern", "RationalQuadratic", "ExpSineSquared", "DotProduct",
    "Sum", "Product", "Exponentiation", "PairwiseKernel", "Hyperparameter",
)  # fmt: skip
_DISTANCES = (
    "EuclideanDistance", "SEuclideanDistance", "ManhattanDistance", "ChebyshevDistance", "MinkowskiDistance",
    "MahalanobisDistance", "HammingDistance", "CanberraDistance", "BrayCurtisDistance", "HaversineDistance",
)  # fmt: skip
TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.cluster._bisect_k_means._BisectingTree",
        "sklearn.cluster._kmeans._kmeans_single_lloyd",
        "sklearn.cluster._kmeans._kmeans_single_elkan",
        "sklearn.feature_selection._univariate_selection.f_classif",
        "sklearn.feature_selection._univariate_selection.f_regression",
        "sklearn.feature_selection._univariate_selection.chi2",
        "sklearn.feature_selection._mutual_info.mutual_info_classif",
        "sklearn.feature_selection._mutual_info.mutual_info_regression",
        "sklearn.gaussian_process._gpc._BinaryGaussianProcessClassifierLaplace",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neighbors._ball_tree.BallTree",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        "numpy.dtype",
        "numpy.mean",
        "numpy.median",
        "numpy.max",
        "scipy.interpolate._bsplines.BSpline",
        "scipy._lib.array_api_compat.numpy._aliases.asarray",
    }
    | {f"sklearn._loss.loss.{name}" for name in _LOSSES}
    | {f"sklearn._loss.link.{name}" for name in _LINKS}
    | {f"sklearn.gaussian_process.kernels.{name}" for name in _KERNELS}
    | {f"sklearn.metrics._dist_metrics.{name}{bits}" for name in _DISTANCES for bits in ("64", "32")}
)
"""Types skops does not trust by default that Modelport does. Never add callables that run commands,
import modules, or build other callables (``functools.partial``, ``builtins.eval``, ``operator.*``)."""


def save(estimator: Any, directory: Path) -> Files:
    """Write a fitted estimator as ``model.skops`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    skops.io.dump(estimator, directory / ENTRYPOINT)
    return files_of(directory, [ENTRYPOINT])


def inspect(bundle_dir: Path, entrypoint: str, given: ManifestInput) -> Inspection:
    """Refuse untrusted types, load the estimator and infer its inputs and outputs."""
    estimator = _load_estimator(bundle_dir, entrypoint)
    inferred = estimator_signature(estimator)
    extra = {"estimator": type(estimator).__name__}
    return Inspection(signature=reconcile(inferred, given.signature), extra=extra)


def load(bundle_dir: Path, manifest: Manifest, device: Device = "cpu") -> SklearnPredictor:
    """Load the estimator; its outputs are the ones its signature lists (on the CPU only)."""
    devices.require(device, NAME)
    path = resolve_entry(bundle_dir, manifest.entrypoint)
    estimator = _load_estimator(bundle_dir, manifest.entrypoint)
    with zipfile.ZipFile(path) as archive:
        size = sum(info.file_size for info in archive.infolist())  # uncompressed arrays
    return SklearnPredictor(estimator, manifest.signature, memory_bytes=2 * size + (1 << 20))


class SklearnPredictor:
    """``label`` (predict) and ``probabilities`` (predict_proba) for classifiers, ``output`` otherwise."""

    def __init__(self, estimator: Any, signature: Signature, memory_bytes: int) -> None:
        self._estimator: Any = estimator
        self.signature = signature
        self.memory_bytes = memory_bytes
        self._input = signature.inputs[0].name if signature.inputs else "input"
        # a signature given without outputs still gets the estimator's own (label, probabilities...)
        outputs = signature.outputs or estimator_signature(estimator).outputs
        self._outputs = {s.name: s for s in outputs}

    def __call__(self, inputs: Tensors) -> Tensors:
        if self._estimator is None:
            raise RuntimeError("predictor was unloaded")
        if self._input not in inputs:
            raise InvalidInput(message=f"missing input {self._input!r}", details={"missing": [self._input]})
        return run_outputs(self._estimator, inputs[self._input], self._outputs)

    def unload(self) -> None:
        self._estimator = None


def run_outputs(estimator: Any, x: np.ndarray[Any, Any], wanted: dict[str, TensorSpec]) -> Tensors:
    """Compute the outputs named in ``wanted`` (x: (B, n_features)), cast to their dtypes."""
    results: Tensors = {}
    for name, out in wanted.items():
        if name == "probabilities":
            value = estimator.predict_proba(x)  # (B, n_classes)
        elif hasattr(estimator, "predict"):
            value = estimator.predict(x)  # (B,) or (B, n_outputs)
        else:
            value = estimator.transform(x)  # (B, n_components)
        array = np.asarray(value.toarray() if hasattr(value, "toarray") else value)  # sparse -> dense
        results[name] = array.astype(str) if out.dtype == "string" else array.astype(out.dtype, copy=False)
    return results


def estimator_signature(estimator: Any) -> Signature:
    """Input ``input`` (B, n_features) float64; outputs learned from one all-zero example."""
    n_features = getattr(estimator, "n_features_in_", None)
    in_shape = [-1, int(n_features)] if isinstance(n_features, int | np.integer) else None
    inputs = [spec("input", "float64", in_shape)]
    if not (hasattr(estimator, "predict") or hasattr(estimator, "transform")):
        raise InvalidArtifact(message=f"a {type(estimator).__name__} has neither predict nor transform")
    names = ["label" if is_classifier(estimator) else "output"]
    if is_classifier(estimator) and hasattr(estimator, "predict_proba"):
        names.append("probabilities")
    if in_shape is None:
        return Signature(inputs=inputs, outputs=[spec(n, _label_dtype(estimator, n), None) for n in names])
    example = np.zeros((1, in_shape[1]), dtype=np.float64)  # (1, n_features)
    draft = {n: spec(n, _label_dtype(estimator, n), None) for n in names}
    try:
        values = run_outputs(estimator, example, draft)
    except Exception as exc:  # noqa: BLE001 - the estimator's own error, shown without paths
        raise InvalidArtifact(message=f"the estimator fails on an all-zero example ({describe_error(exc)})") from None
    outputs = [spec(n, _label_dtype(estimator, n), [-1, *[int(d) for d in values[n].shape[1:]]]) for n in names]
    return Signature(inputs=inputs, outputs=outputs)


def _label_dtype(estimator: Any, name: str) -> str:
    if name != "label":
        return "float64"
    classes = getattr(estimator, "classes_", None)
    if isinstance(classes, list) and classes:
        classes = classes[0]  # multi-output classifiers keep one array per output
    if isinstance(classes, np.ndarray):
        return "int64" if classes.dtype.kind in "iu" else dtype_name(classes.dtype)
    return "int64"


def _load_estimator(bundle_dir: Path, entrypoint: str) -> Any:
    path = resolve_entry(bundle_dir, entrypoint)
    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception as exc:  # noqa: BLE001 - not a zip, no schema.json, unknown protocol...
        raise InvalidArtifact(
            message=f"{entrypoint!r} is not a valid skops file ({describe_error(exc, bundle_dir)})"
        ) from None
    refused = sorted(t for t in untrusted if t not in TRUSTED_TYPES)
    if refused:
        shown = ", ".join(refused[:5]) + (" ..." if len(refused) > 5 else "")
        raise UnsafeFormat(
            filename=entrypoint, reason=f"it contains types Modelport does not trust ({shown})", instead=INSTEAD
        )
    try:
        return skops.io.load(path, trusted=sorted(untrusted))
    except Exception as exc:  # noqa: BLE001 - skops surfaces the estimators' own errors
        raise InvalidArtifact(message=f"skops cannot load {entrypoint!r} ({describe_error(exc, bundle_dir)})") from None
