"""Sweep specs: validation with field paths, grid and random combinations, overrides, ranking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modelport.auth.principals import Principal
from modelport.config import Settings
from modelport.errors import InvalidJobSpec, PermissionDenied
from modelport.jobs.sweep import SweepKind, apply, combinations, parse_sweep, rank
from modelport.jobs.tables import Job

BASE: dict[str, Any] = {
    "name": "m",
    "data": {"source": "builtin", "name": "digits"},
    "model": {"layers": [{"dense": 10, "activation": "softmax"}]},
    "train": {"optimizer": {"name": "adam", "lr": 0.001}},
}
ADMIN = Principal(name="root", role="admin")
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "sweep-mnist.yaml"


def sweep(**fields: Any) -> dict[str, Any]:
    return {"base": BASE, "parameters": {"train.optimizer.lr": [0.1, 0.01]}, **fields}


def test_grid_tries_every_combination_in_order() -> None:
    spec = parse_sweep(sweep(parameters={"train.optimizer.name": ["sgd", "adam"], "train.batch_size": [32, 128]}))
    assert combinations(spec) == [
        {"train.optimizer.name": "sgd", "train.batch_size": 32},
        {"train.optimizer.name": "sgd", "train.batch_size": 128},
        {"train.optimizer.name": "adam", "train.batch_size": 32},
        {"train.optimizer.name": "adam", "train.batch_size": 128},
    ]


def test_random_search_draws_distinct_sets_reproducibly() -> None:
    params = {"train.optimizer.lr": [0.1, 0.01, 0.001], "train.batch_size": [8, 16, 32, 64]}
    spec = parse_sweep(sweep(search="random", trials=5, parameters=params, seed=3))
    drawn = combinations(spec)
    assert len(drawn) == 5 and len({tuple(d.items()) for d in drawn}) == 5
    assert drawn == combinations(parse_sweep(sweep(search="random", trials=5, parameters=params, seed=3)))
    assert len(combinations(parse_sweep(sweep(search="random", trials=50, parameters=params)))) == 12


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"parameters": {}}, "parameters"),
        ({"parameters": {"train/lr": [1]}}, "parameters"),
        ({"parameters": {"register.model": ["x"]}}, "parameters"),
        ({"parameters": {"train.epochs": []}}, "parameters"),
        ({"search": "random"}, "random search needs trials"),
        ({"trials": 3}, "trials goes with search: random"),
        ({"mode": "best"}, "mode"),
        ({"parameters": {"train.batch_size": list(range(1, 60)), "train.epochs": [1, 2, 3]}}, "at most 128"),
    ],
)
def test_bad_sweeps_name_the_field(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidJobSpec) as info:
        parse_sweep(sweep(**fields))
    assert where in info.value.message


def test_apply_sets_dotted_paths_on_a_copy() -> None:
    spec = apply(BASE, {"train.optimizer.lr": 0.5, "train.regularization.l2": 0.01})
    assert spec["train"]["optimizer"] == {"name": "adam", "lr": 0.5}
    assert spec["train"]["regularization"] == {"l2": 0.01}
    assert BASE["train"]["optimizer"]["lr"] == 0.001 and "regularization" not in BASE["train"]
    with pytest.raises(InvalidJobSpec, match="not a mapping"):
        apply(BASE, {"data.source.x": 1})


def test_prepare_validates_every_trial_and_keeps_permissions() -> None:
    settings = Settings(home=Path("unused"))
    prepared = SweepKind().prepare(sweep(), ADMIN, settings)
    assert prepared.target == "m" and [t.params for t in prepared.trials] == [
        {"train.optimizer.lr": 0.1},
        {"train.optimizer.lr": 0.01},
    ]
    with pytest.raises(InvalidJobSpec, match=r"trial 1 \(train.optimizer.momentum=0.9\)"):
        SweepKind().prepare(sweep(parameters={"train.optimizer.momentum": [0.9]}), ADMIN, settings)
    member = Principal(name="bob", role="member")
    with pytest.raises(PermissionDenied):
        SweepKind().prepare(
            sweep(parameters={"data.path": ["/etc"], "data.source": ["npz"], "data.name": [None]}), member, settings
        )


def test_the_mnist_faq_example_is_a_valid_48_trial_grid() -> None:
    prepared = SweepKind().prepare(yaml.safe_load(EXAMPLE.read_text()), ADMIN, Settings(home=Path("unused")))
    assert len(prepared.trials) == 4 * 3 * 2 * 2 and prepared.target == "mnist-mlp"
    names = {t.spec["train"]["optimizer"]["name"] for t in prepared.trials}
    assert names == {"sgd", "adagrad", "adadelta", "adam"}


def _trial(n: int, status: str, value: float | None) -> Job:
    metrics = {"val_accuracy": value} if value is not None else {}
    return Job(id=f"j{n}", status=status, meta={"trial": n, "params": {"p": n}}, result={"metrics": metrics})


def test_rank_puts_the_best_succeeded_trial_first_and_failures_last() -> None:
    trials = [
        _trial(1, "succeeded", 0.8),
        _trial(2, "failed", None),
        _trial(3, "succeeded", 0.9),
        _trial(4, "succeeded", None),
    ]
    table = rank(trials, "val_accuracy", "max")
    assert [r["trial"] for r in table] == [3, 1, 2, 4] and [r["rank"] for r in table] == [1, 2, 3, 4]
    assert table[0]["val_accuracy"] == 0.9 and table[2]["val_accuracy"] is None
    assert [r["trial"] for r in rank(trials, "val_accuracy", "min")][:2] == [1, 3]
