"""training/checkpoint.py: records round-trip exactly; resuming gives the same run as never stopping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from modelport.errors import BadRequest, InvalidArtifact
from modelport.training import checkpoint
from modelport.training.run import TrainingCancelled, run_training
from modelport.training.spec import load_spec
from tests.conftest import MNIST
from tests.unit.training._specs import digits


def test_record_round_trip(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    state = {"position": {"global_step": 7}, "rng": checkpoint.rng_state(), "note": "x"}
    folder = checkpoint.save(tmp_path, model=net.state_dict(), optimizer=opt.state_dict(), state=state)
    assert folder.name == "step-0000000007" and checkpoint.latest(tmp_path) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    record = checkpoint.load(folder)
    assert record.state["note"] == "x" and record.best is None
    again = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    again.load_state_dict(record.optimizer)
    torch.testing.assert_close(again.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert again.state_dict()["param_groups"][0]["betas"] == (0.9, 0.999)


def test_only_the_newest_are_kept_and_partial_folders_ignored(tmp_path: Path) -> None:
    for step in range(1, 5):
        checkpoint.save(
            tmp_path,
            model={},
            optimizer={"state": {}, "param_groups": []},
            state={"position": {"global_step": step}},
            keep=2,
        )
    (tmp_path / "step-0000000099").mkdir()  # no state.json: an interrupted write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000000003", "step-0000000004", "step-0000000099"]
    assert checkpoint.latest(tmp_path) == tmp_path / "step-0000000004"


def test_rng_state_is_json_and_restores(tmp_path: Path) -> None:
    state = json.loads(json.dumps(checkpoint.rng_state()))
    a = torch.rand(3)
    checkpoint.set_rng_state(state)
    torch.testing.assert_close(torch.rand(3), a)


def test_a_corrupt_checkpoint_is_refused(tmp_path: Path) -> None:
    folder = checkpoint.save(
        tmp_path,
        model={"w": torch.ones(2)},
        optimizer={"state": {}, "param_groups": []},
        state={"position": {"global_step": 1}},
    )
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InvalidArtifact, match="cannot be read"):
        checkpoint.load(folder)


def _stop_after_first_epoch() -> tuple[list[dict[str, Any]], Any]:
    events: list[dict[str, Any]] = []
    return events, lambda: any(e["type"] == "epoch" for e in events)


def test_resume_after_epoch_one_equals_a_straight_run(tmp_path: Path) -> None:
    spec = load_spec(
        {
            "name": "resume",
            "data": {
                "source": "mnist",
                "path": str(MNIST),
                "max_samples": 2000,
                "max_test_samples": 300,
                "preprocess": [{"scale": 1 / 255}],
            },
            "model": {
                "layers": [
                    {"dense": 32, "activation": "relu"},
                    {"dropout": 0.2},
                    {"dense": 10, "activation": "softmax"},
                ]
            },
            "train": {
                "epochs": 2,
                "device": "cpu",
                "schedule": {"name": "cosine", "warmup": 0.5},
                "early_stopping": {"metric": "val_accuracy", "patience": 5},
            },
        }
    )
    straight = run_training(spec, workdir=tmp_path / "a", report=lambda e: None)
    events, should_stop = _stop_after_first_epoch()
    with pytest.raises(TrainingCancelled):
        run_training(spec, workdir=tmp_path / "b", report=events.append, should_stop=should_stop)
    assert [e["epoch"] for e in events if e["type"] == "epoch"] == [1]
    resumed_events: list[dict[str, Any]] = []
    resumed = run_training(spec, workdir=tmp_path / "b", report=resumed_events.append)
    assert any(e["type"] == "log" and "resumed at epoch 2" in e["message"] for e in resumed_events)
    assert [e["epoch"] for e in resumed_events if e["type"] == "epoch"] == [2]
    for key in ("train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy", "history"):
        assert resumed.metrics[key] == straight.metrics[key], key


def test_resume_mid_epoch_with_step_checkpoints(tmp_path: Path) -> None:
    spec = digits(
        checkpoint={"every_steps": 10},
        regularization={"l2": 1e-4, "clip_norm": 1.0},
        model={
            "layers": [{"dense": 32, "activation": "relu"}, {"dropout": 0.3}, {"dense": 10, "activation": "softmax"}]
        },
    )
    straight = run_training(spec, workdir=tmp_path / "a", report=lambda e: None)
    calls = iter(range(1000))
    with pytest.raises(TrainingCancelled):
        run_training(spec, workdir=tmp_path / "b", report=lambda e: None, should_stop=lambda: next(calls) == 57)
    assert checkpoint.latest(tmp_path / "b" / "checkpoints") == tmp_path / "b" / "checkpoints" / "step-0000000057"
    resumed = run_training(spec, workdir=tmp_path / "b", report=lambda e: None)
    assert resumed.metrics["history"] == straight.metrics["history"]
    assert resumed.metrics["test_loss"] == straight.metrics["test_loss"]


def test_checkpoints_of_another_spec_are_refused(tmp_path: Path) -> None:
    run_training(digits(epochs=1), workdir=tmp_path, report=lambda e: None)
    with pytest.raises(BadRequest, match="different spec"):
        run_training(digits(epochs=1, seed=5), workdir=tmp_path, report=lambda e: None)
