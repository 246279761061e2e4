"""training/loop.py and its callbacks: determinism, schedules, early stopping, batch sizes, every optimizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from modelport.training.callbacks import EarlyStopping, ProgressEvents
from modelport.training.loop import Plan, epoch_batches
from modelport.training.run import run_training
from tests.unit.training._specs import digits


def run(tmp_path: Path, **train: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    out = run_training(digits(**train), workdir=tmp_path, report=events.append)
    return out.metrics, events


def test_same_spec_and_seed_give_the_same_metrics(tmp_path: Path) -> None:
    layers = {"layers": [{"dense": 32, "activation": "relu"}, {"dropout": 0.2}, {"dense": 10, "activation": "softmax"}]}
    a, _ = run(tmp_path / "a", model=layers)
    b, _ = run(tmp_path / "b", model=layers)
    c, _ = run(tmp_path / "c", model=layers, seed=1)
    assert a["history"] == b["history"] and a["test_loss"] == b["test_loss"]
    assert a["history"]["loss"] != c["history"]["loss"]


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw"])
def test_every_optimizer_learns_with_its_defaults(tmp_path: Path, name: str) -> None:
    optimizer: dict[str, Any] = {"name": name, "momentum": 0.9} if name == "sgd" else {"name": name}
    metrics, _ = run(tmp_path, optimizer=optimizer, epochs=5)
    assert metrics["test_accuracy"] > 0.85, metrics["test_accuracy"]


def test_full_batch_gradient_descent_takes_one_step_per_epoch(tmp_path: Path) -> None:
    metrics, events = run(tmp_path, optimizer={"name": "gd", "momentum": 0.9}, epochs=4)
    checkpoints = [e["step"] for e in events if e["type"] == "checkpoint"]
    assert checkpoints == [1, 2, 3, 4] and metrics["history"]["loss"][-1] < metrics["history"]["loss"][0]


def test_schedule_is_applied_per_step_in_fractional_epochs(tmp_path: Path) -> None:
    metrics, _ = run(
        tmp_path, optimizer={"name": "sgd", "lr": 0.1}, schedule={"name": "step", "step_size": 1, "gamma": 0.5}
    )
    assert metrics["history"]["lr"] == [0.1, 0.05, 0.025]


def test_plateau_lowers_the_rate_when_validation_stalls(tmp_path: Path) -> None:
    metrics, _ = run(
        tmp_path,
        epochs=4,
        optimizer={"name": "sgd", "lr": 1e-6},
        schedule={"name": "plateau", "patience": 0, "factor": 0.5, "threshold": 0.5},
    )
    # epoch 1 sets the best; each later epoch is "bad" and, with patience 0, halves the next epoch's rate
    assert metrics["history"]["lr"] == [1e-6, 1e-6, 5e-7, 2.5e-7]


def test_early_stopping_stops_and_restores_the_best(tmp_path: Path) -> None:
    metrics, _ = run(
        tmp_path, epochs=30, optimizer={"name": "sgd", "lr": 3.0}, early_stopping={"metric": "val_loss", "patience": 1}
    )
    assert metrics["stopped_early"] and metrics["epochs_run"] < 30
    best = min(metrics["history"]["val_loss"])
    assert metrics["best_epoch"] == metrics["history"]["val_loss"].index(best) + 1
    assert metrics["val_loss"] == pytest.approx(best, rel=1e-5)


def test_batch_size_schedule_changes_steps_per_epoch(tmp_path: Path) -> None:
    _, events = run(tmp_path, batch_size={0: 100, 2: 400})
    steps = [e["step"] for e in events if e["type"] == "checkpoint"]
    per_epoch = [b - a for a, b in zip([0, *steps], steps, strict=False)]
    assert per_epoch[0] == per_epoch[1] > per_epoch[2] >= 1


def test_regularization_penalties_and_dropout_insertion(tmp_path: Path) -> None:
    base, _ = run(tmp_path / "a", epochs=2)
    l1, _ = run(tmp_path / "b", epochs=2, regularization={"l1": 1e-3, "l2": 1e-3, "dropout": 0.2, "clip_norm": 0.5})
    assert l1["history"]["loss"] != base["history"]["loss"]


def test_epoch_batches_depend_only_on_seed_and_epoch_and_shard() -> None:
    plan = Plan(
        model=torch.nn.Identity(),
        head=torch.nn.Identity(),
        objective=None,  # type: ignore[arg-type]
        optimizer=None,
        lr_at=lambda t: 0.1,
        epochs=1,
        batch_size=4,
        seed=3,
    )  # type: ignore[arg-type]
    a = epoch_batches(10, plan, 0, torch.device("cpu"))
    assert [len(b) for b in a] == [4, 4, 2]
    assert torch.equal(torch.cat(a).sort().values, torch.arange(10))
    assert all(torch.equal(x, y) for x, y in zip(a, epoch_batches(10, plan, 0, torch.device("cpu")), strict=True))
    plan.shard = (1, 2)
    half = epoch_batches(10, plan, 0, torch.device("cpu"))
    assert [len(b) for b in half] == [2, 2, 1] and torch.equal(half[0], a[0][2:])


def test_progress_events_are_throttled() -> None:
    events: list[dict[str, Any]] = []
    progress = ProgressEvents(events.append, epochs=2, interval_s=3600)
    for step in range(100):
        progress.step(epoch=0, step=step, steps=100, loss=torch.tensor(1.0), lr=0.1, batch=32)
    assert events == []
    progress = ProgressEvents(events.append, epochs=2, interval_s=0.0)
    progress.step(epoch=0, step=10, steps=100, loss=torch.tensor(0.5), lr=0.1, batch=32)
    assert set(events[0]) == {"type", "epoch", "epochs", "step", "steps_per_epoch", "loss", "throughput", "eta_s", "lr"}


def test_early_stopping_modes() -> None:
    stop = EarlyStopping.create("val_accuracy", "auto", patience=1, min_delta=0.01)
    assert stop.mode == "max"
    assert [stop.update(e, {"val_accuracy": v}) for e, v in enumerate([0.5, 0.505, 0.52, 0.52, 0.52])] == [
        (True, False),
        (False, False),
        (True, False),
        (False, False),
        (False, True),
    ]
