"""Reports: what a version gained and lost against its parent, measured, never copied.

Every figure is measured on the files as they will be served: the bundle is loaded with the same
format loader the serving runtime uses, accuracy is the argmax of its outputs on the evaluation
split, and latency is the median of timed calls at batch 1 and batch 256. The parent is measured
the same way in the same process, so the ratios compare like with like.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from modelport import formats
from modelport.store.bundle import Manifest

EVAL_BATCH = 1024
LATENCY_BATCHES = (1, 256)
RATIO_KEYS = ("parameters", "nonzero_parameters", "model_bytes", "bundle_bytes", "latency_ms_b1", "latency_ms_b256")


@dataclass(frozen=True)
class Sample:
    """Evaluation data, already preprocessed: x (N, *input_shape) float32, y (N,) int64."""

    x: np.ndarray
    y: np.ndarray


def measure(
    folder: Path,
    manifest: Manifest,
    sample: Sample,
    *,
    counts: tuple[int, int] | None = None,
    latency: bool = True,
    repeats: int = 30,
    cores: int | None = 1,
) -> dict[str, Any]:
    """Size, parameter counts, accuracy and latency of the version in ``folder``.

    With ``cores``, the process is pinned to that many CPUs while the version is loaded and timed,
    so the loaders size their thread pools as a server pinned the same way would (the RSW-1 serving
    benchmark pins its server to one core). Parent and child are then compared per core, and the
    figure does not swing with whatever else the machine is running on its other cores.
    """
    with _pinned(cores):
        return _measure(folder, manifest, sample, counts=counts, latency=latency, repeats=repeats)


def _measure(
    folder: Path,
    manifest: Manifest,
    sample: Sample,
    *,
    counts: tuple[int, int] | None,
    latency: bool,
    repeats: int,
) -> dict[str, Any]:
    predictor = formats.get(manifest.format).load(folder, manifest)
    try:
        name_in = manifest.signature.inputs[0].name
        name_out = manifest.signature.outputs[0].name

        def call(x: np.ndarray) -> np.ndarray:
            return np.asarray(predictor({name_in: x})[name_out])

        predicted = np.concatenate(
            [
                call(sample.x[i : i + EVAL_BATCH]).reshape(-1, _classes(manifest)).argmax(axis=1)
                for i in range(0, len(sample.x), EVAL_BATCH)
            ]
        )
        errors = int((predicted != sample.y).sum())
        out: dict[str, Any] = {
            "accuracy": 1.0 - errors / max(len(sample.y), 1),
            "errors": errors,
            "examples": len(sample.y),
        }
        if latency:
            for batch in LATENCY_BATCHES:
                out[f"latency_ms_b{batch}"] = _latency_ms(call, sample.x[:batch], repeats)
    finally:
        predictor.unload()
    params, nonzero = counts if counts is not None else count_parameters(folder, manifest)
    out.update(
        parameters=params,
        nonzero_parameters=nonzero,
        model_bytes=model_bytes(folder, manifest),
        bundle_bytes=sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        format=manifest.format,
    )
    return out


def compare(child: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
    """``{figure: {"value", "parent", "ratio"}}`` (ratio = value / parent; accuracy gets a delta)."""
    rows: dict[str, Any] = {}
    for key, value in child.items():
        if key not in parent or isinstance(value, str):
            continue
        row: dict[str, Any] = {"value": value, "parent": parent[key]}
        if key in RATIO_KEYS and parent[key]:
            row["ratio"] = value / parent[key]
        if key == "accuracy":
            row["delta_points"] = 100.0 * (value - parent[key])
        rows[key] = row
    return rows


def model_bytes(folder: Path, manifest: Manifest) -> int:
    """Bytes of what the server loads: the entrypoint and, for ONNX, its external-data files.

    A trained version also carries ``model.safetensors`` (so it can be optimized later); it is not
    served, so counting it would flatter every child's size ratio.
    """
    total = (folder / manifest.entrypoint).stat().st_size
    external = manifest.metrics.get("external_data") if manifest.format == "onnx" else None
    for name in external or []:
        total += (folder / str(name)).stat().st_size
    return total


def count_parameters(folder: Path, manifest: Manifest) -> tuple[int, int]:
    """(parameters, non-zero parameters) read from the served file (weights of every layer)."""
    if manifest.format == "onnx":
        graph = onnx.load(str(folder / manifest.entrypoint), load_external_data=False).graph
        arrays = [numpy_helper.to_array(t) for t in graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
        floats = [a for a in arrays if a.dtype.kind == "f" and a.size > 1]
        return sum(a.size for a in floats), sum(int(np.count_nonzero(a)) for a in floats)
    if manifest.format == "torch":
        from modelport.formats import torch as torch_format

        layers, input_shape = torch_format.parse_architecture(manifest.architecture)
        net = torch_format.load_network(folder, manifest.entrypoint, layers, input_shape)
        tensors = [p.detach() for p in net.parameters()]
        return sum(t.numel() for t in tensors), sum(int(torch.count_nonzero(t)) for t in tensors)
    return 0, 0


@contextlib.contextmanager
def _pinned(cores: int | None) -> Iterator[None]:
    """Run the block on the first ``cores`` CPUs this process may use (torch threads to match)."""
    if cores is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    threads = torch.get_num_threads()
    chosen = set(sorted(before)[:cores])
    os.sched_setaffinity(0, chosen)
    torch.set_num_threads(len(chosen))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
        torch.set_num_threads(threads)


def _classes(manifest: Manifest) -> int:
    return len(manifest.labels or []) or 1


def _latency_ms(call: Any, x: np.ndarray, repeats: int) -> float:
    """Median wall time of one call, after warm-up calls that are not counted."""
    x = np.ascontiguousarray(x)
    for _ in range(3):
        call(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times)
