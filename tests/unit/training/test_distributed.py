"""training/distributed.py: 2-process data parallelism (DDP, gloo) and a 2-stage pipeline on the CPU.

Each parallel run spawns two Python processes (a few seconds each), so the cases are grouped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from torch import nn

from modelport.errors import BadRequest
from modelport.training.distributed import partition
from modelport.training.run import TrainingCancelled, run_training
from tests.unit.training._specs import digits

MLP = {"layers": [{"dense": 32, "activation": "relu"}, {"dense": 10, "activation": "softmax"}]}


def test_data_parallel_stops_resumes_and_matches_one_process(tmp_path: Path) -> None:
    single = run_training(digits(epochs=4, model=MLP), workdir=tmp_path / "one", report=lambda e: None)
    spec = digits(epochs=4, model=MLP, parallel={"strategy": "data", "workers": 2})
    events: list[dict[str, Any]] = []
    with pytest.raises(TrainingCancelled):
        run_training(
            spec,
            workdir=tmp_path / "ddp",
            report=events.append,
            should_stop=lambda: any(e["type"] == "epoch" for e in events),
        )
    assert any(e["type"] == "started" and e.get("workers") == 2 for e in events)
    resumed_events: list[dict[str, Any]] = []
    ddp = run_training(spec, workdir=tmp_path / "ddp", report=resumed_events.append)
    epochs = [e["epoch"] for e in events + resumed_events if e["type"] == "epoch"]
    assert epochs[-1] == 4 and len(ddp.metrics["history"]["loss"]) == 4
    assert sorted(p.name for p in ddp.bundle_dir.iterdir()) == ["model.onnx", "model.safetensors"]
    assert ddp.metrics["test_accuracy"] > 0.85
    assert abs(ddp.metrics["test_accuracy"] - single.metrics["test_accuracy"]) < 0.05


def test_pipeline_of_two_stages_matches_one_process(tmp_path: Path) -> None:
    single = run_training(digits(epochs=4, model=MLP), workdir=tmp_path / "one", report=lambda e: None)
    events: list[dict[str, Any]] = []
    spec = digits(epochs=4, model=MLP, parallel={"strategy": "model", "stages": 2, "micro_batches": 4})
    piped = run_training(spec, workdir=tmp_path / "pipe", report=events.append)
    assert [e["epoch"] for e in events if e["type"] == "epoch"] == [1, 2, 3, 4]
    assert len(piped.metrics["history"]["val_loss"]) == 4 and piped.metrics["onnx_max_abs_diff"] <= 1e-5
    assert abs(piped.metrics["test_accuracy"] - single.metrics["test_accuracy"]) < 0.05


@pytest.mark.parametrize(
    ("parallel", "layers", "message"),
    [
        ({"strategy": "data", "workers": 2}, [{"dense": 5, "activation": "softmax"}], "5 outputs"),
        ({"strategy": "model", "stages": 3}, [{"dense": 10, "activation": "softmax"}], "fewer stages"),
    ],
)
def test_problems_are_found_before_any_process_starts(
    tmp_path: Path, parallel: dict[str, Any], layers: list[Any], message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        run_training(digits(model={"layers": layers}, parallel=parallel), workdir=tmp_path, report=lambda e: None)
    assert not (tmp_path / "checkpoints").exists()


def test_partition_balances_parameters() -> None:
    modules = [nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10)]
    assert partition(modules, 2) == [0, 2, 5]
    assert partition(modules, 5) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(BadRequest, match="fewer stages"):
        partition(modules, 6)
