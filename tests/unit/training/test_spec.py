"""training/spec.py: specs load from YAML/JSON/files; every mistake names its field and the allowed values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelport.errors import BadRequest
from modelport.training.spec import SpecError, TrainSpec, load_spec
from tests.conftest import REPO

BASE: dict[str, Any] = {
    "name": "t",
    "data": {"source": "builtin", "name": "digits"},
    "model": {"layers": [{"dense": 10, "activation": "softmax"}]},
}


def with_train(**train: Any) -> dict[str, Any]:
    return {**BASE, "train": train}


def test_example_spec_loads() -> None:
    spec = load_spec(REPO / "examples" / "mnist-mlp.yaml")
    assert spec.train.optimizer.name == "adam" and spec.train.batch_size == 32 and spec.train.epochs == 10
    assert spec.registration is not None and spec.registration.alias == "staging"
    assert not spec.uses_python_module


def test_json_text_and_dict_give_the_same_spec() -> None:
    assert load_spec(json.dumps(BASE)) == load_spec(BASE)


def test_spec_error_is_a_bad_request_with_a_code() -> None:
    with pytest.raises(BadRequest) as info:
        load_spec(with_train(optimizer={"name": "adamm"}))
    assert info.value.code == "invalid_spec"
    assert "train.optimizer.name: 'adamm' is not one of gd, sgd, adagrad, adadelta, rmsprop, adam, adamw" in str(
        info.value
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (with_train(optimizer={"name": "adam", "momentum": 0.9}), "train.optimizer.momentum: not an option of adam"),
        (with_train(optimizer={"name": "sgd", "nesterov": True}), "nesterov needs momentum"),
        (with_train(epochs=0), "train.epochs:"),
        (with_train(foo=1), "train.foo: unknown field"),
        (with_train(loss="hinge"), "train.loss: 'hinge' is not one of mse, mae, cross_entropy"),
        (with_train(schedule={"name": "cyclic"}), "needs max_lr"),
        (with_train(schedule={"name": "step", "max_lr": 1.0}), "train.schedule.max_lr: not an option of schedule step"),
        (with_train(batch_size={3: 64}), "batch-size schedule maps epochs (from 0)"),
        (with_train(early_stopping={"metric": "vall"}), "train.early_stopping.metric: 'vall' is not one of"),
        (with_train(label_smoothing=0.1, loss="mse"), "label_smoothing goes with loss cross_entropy"),
        (with_train(parallel={"strategy": "data", "workers": 1}), "workers >= 2"),
        ({**BASE, "data": {"source": "csv"}}, "source 'csv' needs a path"),
        ({**BASE, "data": {"source": "builtin", "name": "cifar"}}, "builtin sets: digits, iris, wine, breast_cancer"),
        ({**BASE, "model": {"python": "os.system"}}, "package.module:ClassName"),
        ({**BASE, "model": {}}, "exactly one of layers or python"),
        (
            {
                **BASE,
                "data": {"source": "builtin", "name": "iris", "validation_split": 0},
                "train": {"early_stopping": {}},
            },
            "needs data.validation_split > 0",
        ),
    ],
)
def test_invalid_specs_name_the_field(spec: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert expected in str(info.value)


def test_yaml_syntax_error_and_non_mapping() -> None:
    with pytest.raises(SpecError, match="line"):
        load_spec("name: [unclosed")
    with pytest.raises(SpecError, match="mapping"):
        load_spec("- a list")


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "nope.yaml")


def test_python_module_is_flagged() -> None:
    spec = load_spec(
        {**BASE, "model": {"python": "torch.nn:Linear", "kwargs": {"in_features": 64, "out_features": 10}}}
    )
    assert spec.uses_python_module


def test_fingerprint_ignores_epochs_and_register_only() -> None:
    a = load_spec(with_train(epochs=2))
    assert a.fingerprint() == load_spec({**with_train(epochs=5), "register": {"model": "x"}}).fingerprint()
    assert a.fingerprint() != load_spec(with_train(epochs=2, seed=1)).fingerprint()


def test_batch_size_schedule_keys_from_json_are_ints() -> None:
    spec = load_spec(json.dumps(with_train(batch_size={"0": 16, "2": 64})))
    assert spec.train.batch_size == {0: 16, 2: 64}
    assert isinstance(TrainSpec.model_json_schema(), dict)
