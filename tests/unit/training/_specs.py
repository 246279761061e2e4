"""Small specs shared by the training tests (sklearn digits: 1,797 8x8 images, trains in well under a second)."""

from __future__ import annotations

from typing import Any

from modelport.training.spec import TrainSpec, load_spec

DIGITS_MLP: dict[str, Any] = {
    "name": "digits",
    "data": {
        "source": "builtin",
        "name": "digits",
        "validation_split": 0.15,
        "test_split": 0.2,
        "preprocess": [{"scale": 0.0625}],
    },
    "model": {"layers": [{"dense": 32, "activation": "relu"}, {"dense": 10, "activation": "softmax"}]},
    "train": {"epochs": 3, "batch_size": 32, "seed": 0, "device": "cpu"},
}


def digits(**train: Any) -> TrainSpec:
    """The digits MLP with ``train`` options merged in (``data``/``model`` keys replace those sections)."""
    spec: dict[str, Any] = {**DIGITS_MLP, "train": {**DIGITS_MLP["train"]}}
    for section in ("data", "model"):
        if section in train:
            spec[section] = {**spec[section], **train.pop(section)}
    spec["train"].update(train)
    return load_spec(spec)
