"""Resumable checkpoints as records: tensors in safetensors, everything else in JSON. No pickle.

A checkpoint is a folder ``checkpoints/step-<global step>/`` holding

    model.safetensors      the network's state_dict
    optimizer.safetensors  optimizer state tensors, keyed ``<param index>.<name>`` (e.g. ``0.exp_avg``)
    best.safetensors       the best weights so far (early stopping with restore_best), if any
    state.json             position (epoch, step, global_step), RNG states as integer lists, schedule, early
                           stopping and running-metric state, history, optimizer param groups and
                           non-tensor optimizer state, and the fingerprint of the spec

It is written to a temporary folder and renamed into place, and ``state.json`` is written last, so
a run killed mid-write leaves either the previous checkpoint or a complete new one. Only folders
this module wrote are read back, and only with safetensors and json.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from modelport.errors import InvalidArtifact

FORMAT_VERSION = 1
_PREFIX = "step-"


@dataclass(frozen=True)
class Record:
    """One checkpoint as read back: tensors for ``load_state_dict`` plus the JSON state."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    best: dict[str, torch.Tensor] | None
    state: dict[str, Any]


def save(
    directory: Path,
    *,
    model: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    state: dict[str, Any],
    best: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Write one checkpoint atomically and delete all but the newest ``keep``; returns its folder."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{_PREFIX}{int(state['position']['global_step']):010d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory))
    try:
        tensors, optimizer_json = _split_optimizer(optimizer)
        _save_tensors(model, tmp / "model.safetensors")
        _save_tensors(tensors, tmp / "optimizer.safetensors")
        if best is not None:
            _save_tensors(best, tmp / "best.safetensors")
        record = {"format_version": FORMAT_VERSION, **state, "optimizer": optimizer_json}
        _write_json(tmp / "state.json", record)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in _complete(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(directory: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    found = _complete(directory) if directory.is_dir() else []
    return found[-1] if found else None


def load(path: Path) -> Record:
    """Read a checkpoint written by :func:`save`."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        model = safetensors.torch.load_file(str(path / "model.safetensors"))
        tensors = safetensors.torch.load_file(str(path / "optimizer.safetensors"))
        best_file = path / "best.safetensors"
        best = safetensors.torch.load_file(str(best_file)) if best_file.is_file() else None
    except (OSError, ValueError, safetensors.SafetensorError) as exc:
        raise InvalidArtifact(message=f"the checkpoint cannot be read ({type(exc).__name__})") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise InvalidArtifact(message="the checkpoint was written by another version of Modelport")
    optimizer = _join_optimizer(tensors, state.pop("optimizer"))
    return Record(model=model, optimizer=optimizer, best=best, state=state)


def rng_state() -> dict[str, Any]:
    """torch's CPU (and CUDA) generator states as integer lists: JSON, no bytes or pickles."""
    state: dict[str, Any] = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _split_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state tensors (``"<index>.<name>"``) and the JSON rest (param groups, scalars)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    for index, values in rest["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    safetensors.torch.save_file(clean, str(path))


def _write_json(path: Path, value: dict[str, Any]) -> None:
    with path.open("w", encoding="utf-8") as f:
        json.dump(value, f, allow_nan=True)
        f.flush()
        os.fsync(f.fileno())


def _complete(directory: Path) -> list[Path]:
    found = [p for p in directory.iterdir() if p.name.startswith(_PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)
