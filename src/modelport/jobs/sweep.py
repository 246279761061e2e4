"""Hyper-parameter sweeps: one job that queues a training trial per parameter combination, ranks the
trials by a metric when they have all ended, and registers only the best one.

A sweep spec::

    base: {name: mnist-mlp, data: ..., model: ..., train: ...}   # a training spec
    search: grid                # or random, with trials: N
    parameters:                 # dotted paths into the base spec -> values to try
      train.optimizer.name: [sgd, adam]
      train.optimizer.lr: [0.01, 0.001]
    metric: val_accuracy        # from each trial's final metrics
    mode: max

Every trial spec is built and validated at submit time, so a bad combination is a 400 before anything
runs. The sweep job itself needs no worker while its trials run: it waits as ``running`` and is
queued again by the queue when its last trial ends (see ``queue._trial_ended``); then a worker runs
:meth:`SweepKind.run`, which ranks the trials and has the worker register the best one from its
folder (``services.register_trial``).
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelport.auth.principals import Principal
from modelport.config import Settings
from modelport.errors import InvalidJobSpec
from modelport.jobs import kinds
from modelport.jobs.kinds import JobFailed, Prepared, RunEnv, Trial

if TYPE_CHECKING:
    from modelport.jobs.queue import Claimed
    from modelport.jobs.services import TrialInfo

MAX_TRIALS = 128
_PATH = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z0-9_]+){0,7}$")


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: dict[str, Any]
    search: Literal["grid", "random"] = "grid"
    trials: int | None = Field(default=None, ge=1, le=MAX_TRIALS)
    """Random search: how many combinations to try."""
    parameters: dict[str, list[Any]] = Field(min_length=1, max_length=16)
    metric: str = Field(default="val_accuracy", min_length=1, max_length=64)
    mode: Literal["max", "min"] = "max"
    seed: int = Field(default=0, ge=0)

    @field_validator("parameters")
    @classmethod
    def _paths(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, values in value.items():
            if not _PATH.fullmatch(path):
                raise ValueError(f"{path!r} is not a dotted path such as train.optimizer.lr")
            if path.split(".")[0] not in ("data", "model", "train"):
                raise ValueError(f"{path!r}: sweep parameters live under data, model or train")
            if not 1 <= len(values) <= 64:
                raise ValueError(f"{path}: give 1 to 64 values")
        return value

    @model_validator(mode="after")
    def _size(self) -> SweepSpec:
        if self.search == "random" and self.trials is None:
            raise ValueError("random search needs trials: N")
        if self.search == "grid" and self.trials is not None:
            raise ValueError("trials goes with search: random (a grid tries every combination)")
        if self.search == "grid" and grid_size(self) > MAX_TRIALS:
            raise ValueError(f"the grid has {grid_size(self)} combinations; at most {MAX_TRIALS}")
        return self


def grid_size(spec: SweepSpec) -> int:
    return math.prod(len(v) for v in spec.parameters.values())


def parse_sweep(raw: Any) -> SweepSpec:
    """The sweep spec, or InvalidJobSpec naming the first bad field."""
    if not isinstance(raw, dict):
        raise InvalidJobSpec(field="spec", problem="a sweep is a mapping with base, parameters, metric")
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise InvalidJobSpec(field=loc, problem=str(err["msg"]).removeprefix("Value error, ")) from None


def combinations(spec: SweepSpec) -> list[dict[str, Any]]:
    """The parameter sets to try: every one (grid), or ``trials`` distinct ones drawn with ``seed``."""
    keys = list(spec.parameters)
    if spec.search == "grid" or grid_size(spec) <= 10_000:
        grid = [dict(zip(keys, values, strict=True)) for values in itertools.product(*spec.parameters.values())]
        if spec.search == "grid":
            return grid
        return random.Random(spec.seed).sample(grid, min(spec.trials or 1, len(grid)))
    rng = random.Random(spec.seed)
    return [{k: rng.choice(spec.parameters[k]) for k in keys} for _ in range(spec.trials or 1)]


def apply(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with each dotted path set to its value (missing mappings created)."""
    spec = copy.deepcopy(base)
    for path, value in params.items():
        node = spec
        *parents, leaf = path.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InvalidJobSpec(field=f"parameters.{path}", problem=f"{part!r} is not a mapping in base")
            node = child
        node[leaf] = value
    return spec


def _value(job: TrialInfo, metric: str) -> float | None:
    value = ((job.result or {}).get("metrics") or {}).get(metric)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def rank(trials: Sequence[TrialInfo], metric: str, mode: str) -> list[dict[str, Any]]:
    """Trials best first: succeeded ones by ``metric`` (``mode`` max or min), then the rest."""

    def key(job: TrialInfo) -> tuple[int, float]:
        value = _value(job, metric)
        if job.status != "succeeded" or value is None:
            return 1, 0.0
        return 0, -value if mode == "max" else value

    rows = []
    for place, job in enumerate(sorted(trials, key=key), start=1):
        rows.append(
            {
                "rank": place,
                "trial": job.meta.get("trial"),
                "job": job.id,
                "status": job.status,
                "params": job.meta.get("params", {}),
                metric: _value(job, metric),
                "metrics": (job.result or {}).get("metrics") or {},
                "error": job.error,
            }
        )
    return rows


class SweepKind:
    """``sweep``: trials as child jobs; the best one registered."""

    name = "sweep"

    def prepare(self, spec: dict[str, Any], principal: Principal, settings: Settings) -> Prepared:
        sweep = parse_sweep(spec)
        base = kinds.check_train_spec(sweep.base, principal, settings, where="base")
        trials, used = [], kinds.datasets_of(base)
        for number, params in enumerate(combinations(sweep), start=1):
            trial_spec = apply(sweep.base, params)
            shown = ", ".join(f"{k}={v}" for k, v in params.items())
            checked = kinds.check_train_spec(trial_spec, principal, settings, where=f"trial {number} ({shown})")
            trials.append(Trial(spec=trial_spec, params=params))
            used += kinds.datasets_of(checked)
        meta = {"trials": len(trials)}
        return Prepared(spec=spec, target=kinds.target_of(base), meta=meta, trials=trials, datasets=used)

    def run(self, job: Claimed, env: RunEnv) -> dict[str, Any]:
        sweep = parse_sweep(job.spec)
        table = rank(env.services.trials(), sweep.metric, sweep.mode)
        env.report({"type": "log", "message": f"ranked {len(table)} trials by {sweep.metric} ({sweep.mode})"})
        best = table[0] if table and table[0][sweep.metric] is not None else None
        if best is None:
            raise JobFailed(f"no trial succeeded with a {sweep.metric!r} metric; see the trials' errors")
        base = kinds.check_train_spec(sweep.base, job.owner, env.settings, where="base")
        registered = env.services.register_trial(
            best["job"],
            alias=base.registration.alias if base.registration else None,
            transform={"sweep": job.id, "trial": best["trial"], "params": best["params"]},
        )
        env.services.remove_trial_folders()
        return {"metric": sweep.metric, "mode": sweep.mode, "best": best, "trials": table, **registered.as_result()}
