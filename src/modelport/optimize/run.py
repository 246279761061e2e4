"""``run_optimize``: the chain of steps, each result measured against its parent and registered.

The registry is reached through two callbacks so that this module holds no database code:
``registered(i)`` finds the version an earlier attempt of this job already made for step ``i``
(a retry after a crash resumes after the last registered step instead of registering it twice),
and ``register(i, produced, report)`` stores a step's bundle as a new version and returns it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.optimize import report as reports
from modelport.optimize.spec import OptimizeSpec
from modelport.optimize.steps import Context, run_step
from modelport.optimize.working import Examples, Produced, Working
from modelport.registry.uploads import check_bundle
from modelport.store.bundle import Manifest, ManifestInput
from modelport.training.callbacks import Event


@dataclass(frozen=True)
class Registered:
    ref: str
    """``model:N``"""
    version: int
    working: Working


@dataclass(frozen=True)
class Callbacks:
    report: Callable[[Event], None]
    should_stop: Callable[[], bool]
    registered: Callable[[int], Registered | None]
    register: Callable[[int, Produced, dict[str, Any]], Registered]


class Stopped(Exception):
    """``should_stop`` turned true between steps."""


def run_optimize(
    spec: OptimizeSpec, source: Working, examples: Examples, workdir: Path, calls: Callbacks
) -> list[dict[str, Any]]:
    """Run every step not yet registered; returns one summary per step (ref and headline figures)."""
    sample = _sample(examples)
    measured: dict[str, dict[str, Any]] = {}
    current = source
    summaries: list[dict[str, Any]] = []
    for index, step in enumerate(spec.steps):
        if calls.should_stop():
            raise Stopped
        done = calls.registered(index)
        if done is not None:
            calls.report({"type": "log", "message": f"step {index + 1} ({step.kind}) was registered as {done.ref}"})
            summaries.append({"step": index, "kind": step.kind, "ref": done.ref, "resumed": True})
            current = done.working
            continue
        calls.report({"type": "step", "index": index, "kind": step.kind, "status": "running", "of": len(spec.steps)})
        ctx = Context(
            examples=examples,
            out=workdir / f"step-{index}",
            report=calls.report,
            should_stop=calls.should_stop,
            checkpoints=workdir / f"step-{index}.checkpoints",
            fingerprint=f"{current.ref}|{index}|{step.model_dump_json()}",
        )
        produced = run_step(step, current, ctx)
        if current.ref not in measured:
            measured[current.ref] = _measure(current.folder, current.manifest, sample, spec, None)
        manifest = check_bundle(produced.folder, ManifestInput.model_validate(produced.manifest))
        figures = _measure(produced.folder, manifest, sample, spec, produced.counts)
        report = {
            "parent": current.ref,
            "transform": produced.transform,
            "evaluation": {"split": "test", "examples": len(sample.y)},
            "figures": reports.compare(figures, measured[current.ref]),
            **produced.extra,
        }
        done = calls.register(index, produced, report)
        measured[done.ref] = figures
        figures_brief = {k: v["value"] for k, v in report["figures"].items()}
        calls.report(
            {
                "type": "step",
                "index": index,
                "kind": step.kind,
                "status": "registered",
                "ref": done.ref,
                "figures": figures_brief,
            }
        )
        summaries.append({"step": index, "kind": step.kind, "ref": done.ref, "figures": figures_brief})
        current = done.working
    return summaries


def _sample(examples: Examples) -> reports.Sample:
    return reports.Sample(np.ascontiguousarray(examples.x_test), examples.y_test)


def _measure(
    folder: Path, manifest: Manifest, sample: reports.Sample, spec: OptimizeSpec, counts: tuple[int, int] | None
) -> dict[str, Any]:
    return reports.measure(
        folder,
        manifest,
        sample,
        counts=counts,
        latency=spec.evaluation.latency,
        repeats=spec.evaluation.repeats,
        cores=spec.evaluation.cores,
    )
