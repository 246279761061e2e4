"""The training spec: one YAML or JSON file that *is* the model and how to train it.

Every field is validated before a job starts, so a typo is a 400 with the field path and the allowed
values (``train.optimizer.name: 'adamm' is not one of gd, sgd, ...``), never a failure an hour in.
The pydantic models below are the reference for the format; ``examples/mnist-mlp.yaml`` is a tour.

``data.path`` is a local path chosen by the spec's author and read as is (relative paths resolve
against the training process's working directory). It is the only path Modelport builds from a
spec: a dataset named with ``{source: dataset, name: ...}`` is resolved by the caller's
``resolve_dataset`` callback, which decides where registered datasets live. A caller that accepts
specs from untrusted users should refuse ``path`` (or limit it) the way it refuses
``model.python`` (see :attr:`TrainSpec.uses_python_module`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from modelport.errors import BadRequest

MAX_SPEC_BYTES = 1 << 20
BUILTIN_SETS = ("digits", "iris", "wine", "breast_cancer")
OPTIMIZERS = ("gd", "sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "step", "multistep", "exponential", "cosine", "warmup", "plateau", "cyclic", "one_cycle")
EPOCH_METRICS = ("loss", "accuracy", "mae", "val_loss", "val_accuracy", "val_mae")
_FIELD_FIRST = re.compile(r"^([a-z_0-9]+): (.*)$", re.DOTALL)
_PYTHON_REF = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")

# Options each optimizer takes besides ``name`` and ``lr``; anything else is refused by name.
OPTIMIZER_OPTIONS: dict[str, frozenset[str]] = {
    "gd": frozenset({"momentum", "nesterov", "weight_decay"}),
    "sgd": frozenset({"momentum", "nesterov", "weight_decay", "dampening"}),
    "adagrad": frozenset({"weight_decay", "eps", "lr_decay", "initial_accumulator_value"}),
    "adadelta": frozenset({"weight_decay", "eps", "rho"}),
    "rmsprop": frozenset({"weight_decay", "eps", "alpha", "momentum", "centered"}),
    "adam": frozenset({"weight_decay", "eps", "betas", "amsgrad"}),
    "adamw": frozenset({"weight_decay", "eps", "betas", "amsgrad"}),
}
SCHEDULE_OPTIONS: dict[str, frozenset[str]] = {
    "constant": frozenset(),
    "step": frozenset({"step_size", "gamma"}),
    "multistep": frozenset({"milestones", "gamma"}),
    "exponential": frozenset({"gamma"}),
    "cosine": frozenset({"warmup", "min_lr"}),
    "warmup": frozenset({"warmup"}),
    "plateau": frozenset({"metric", "mode", "factor", "patience", "min_lr", "threshold"}),
    "cyclic": frozenset({"max_lr", "step_size", "mode", "gamma"}),
    "one_cycle": frozenset({"max_lr", "pct_start", "div_factor", "final_div_factor"}),
}


class SpecError(BadRequest):
    """A training spec that cannot run; the message names the field and what is allowed."""

    code = "invalid_spec"

    def __init__(self, *, message: str) -> None:
        super().__init__(message=f"invalid training spec: {message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalize(_Strict):
    mean: float | list[float]
    std: float | list[float]

    @model_validator(mode="after")
    def _positive_std(self) -> Normalize:
        stds = self.std if isinstance(self.std, list) else [self.std]
        if not stds or any(s <= 0 for s in stds):
            raise ValueError("std values must be positive")
        return self


class PreprocessStep(_Strict):
    """Exactly one of ``scale``, ``shift``, ``normalize``, ``standardize`` (per feature, computed on the
    training split and recorded as ``normalize``) or ``reshape`` (per-example shape)."""

    scale: float | None = None
    shift: float | None = None
    normalize: Normalize | None = None
    standardize: Literal[True] | None = None
    reshape: list[int] | None = Field(default=None, min_length=1, max_length=7)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, value: Any) -> Any:
        return {"standardize": True} if value == "standardize" else value

    @model_validator(mode="after")
    def _one_kind(self) -> PreprocessStep:
        kinds = [k for k in ("scale", "shift", "normalize", "standardize", "reshape") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("each step sets exactly one of scale, shift, normalize, standardize, reshape")
        if self.reshape is not None and any(d < 1 for d in self.reshape):
            raise ValueError("reshape takes positive sizes (the per-example shape)")
        return self


class DataSpec(_Strict):
    """Where the examples come from and how they are split and preprocessed."""

    source: Literal["mnist", "idx", "npz", "csv", "parquet", "builtin", "dataset"]
    path: str | None = Field(default=None, max_length=4096)
    name: str | None = Field(default=None, max_length=200)
    format: Literal["idx", "npz", "csv", "parquet"] | None = None
    """For ``source: dataset``: the file format of the resolved path (default: from its suffix)."""
    target: str | None = Field(default=None, max_length=200)
    """CSV/Parquet: the label column (default: the last); NPZ: the label array (default ``y``)."""
    features: list[str] | None = Field(default=None, max_length=100_000)
    """CSV/Parquet: the feature columns (default: all but the target); NPZ: the input array (``[x]``)."""
    validation_split: float = Field(default=0.1, ge=0.0, lt=1.0)
    test_split: float = Field(default=0.2, ge=0.0, lt=1.0)
    """Used only when the source has no test split of its own."""
    max_samples: int | None = Field(default=None, ge=1)
    """Keep the first N training examples (quick runs, tests)."""
    max_test_samples: int | None = Field(default=None, ge=1)
    preprocess: list[PreprocessStep] = Field(default_factory=list, max_length=32)
    one_hot: bool = False
    """Targets become one-hot vectors (for mse/mae/binary_cross_entropy on class labels)."""

    @model_validator(mode="after")
    def _where(self) -> DataSpec:
        needs_path = self.source in ("mnist", "idx", "npz", "csv", "parquet")
        if needs_path and not self.path:
            raise ValueError(f"source {self.source!r} needs a path")
        if self.source == "builtin" and self.name not in BUILTIN_SETS:
            raise ValueError(f"builtin sets: {', '.join(BUILTIN_SETS)} (got name={self.name!r})")
        if self.source == "dataset" and not self.name:
            raise ValueError("source 'dataset' needs the dataset's name")
        if self.source in ("builtin", "dataset") and self.path:
            raise ValueError(f"source {self.source!r} takes a name, not a path")
        if self.validation_split + (self.test_split if self.source != "mnist" else 0.0) >= 1.0:
            raise ValueError("validation_split + test_split must leave some training data")
        return self


class ModelSpec(_Strict):
    """A layer list (see training/nets.py), or an ``nn.Module`` class from an installed package."""

    layers: list[Any] | None = Field(default=None, max_length=256)
    python: str | None = Field(default=None, max_length=300)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    input_shape: list[int] | None = Field(default=None, min_length=1, max_length=7)

    @model_validator(mode="after")
    def _one_kind(self) -> ModelSpec:
        if (self.layers is None) == (self.python is None):
            raise ValueError("give exactly one of layers or python")
        if self.python is not None and not _PYTHON_REF.fullmatch(self.python):
            raise ValueError("python must look like 'package.module:ClassName'")
        if self.kwargs and self.python is None:
            raise ValueError("kwargs go with python")
        return self


class OptimizerSpec(_Strict):
    """``lr`` defaults to one that trains the mission's MLP to >= 97% (see optimizers.DEFAULT_LR)."""

    name: Literal["gd", "sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw"] = "adam"
    lr: float | None = Field(default=None, gt=0.0, le=100.0)
    momentum: float | None = Field(default=None, ge=0.0, lt=1.0)
    nesterov: bool | None = None
    dampening: float | None = Field(default=None, ge=0.0, le=1.0)
    weight_decay: float | None = Field(default=None, ge=0.0, le=1.0)
    eps: float | None = Field(default=None, gt=0.0, le=1.0)
    betas: tuple[float, float] | None = None
    amsgrad: bool | None = None
    rho: float | None = Field(default=None, gt=0.0, lt=1.0)
    alpha: float | None = Field(default=None, gt=0.0, lt=1.0)
    centered: bool | None = None
    lr_decay: float | None = Field(default=None, ge=0.0)
    initial_accumulator_value: float | None = Field(default=None, ge=0.0)

    @model_validator(mode="after")
    def _options_fit(self) -> OptimizerSpec:
        given = {k for k in self.model_fields_set if k not in ("name", "lr") and getattr(self, k) is not None}
        unknown = sorted(given - OPTIMIZER_OPTIONS[self.name])
        if unknown:
            allowed = ", ".join(sorted(OPTIMIZER_OPTIONS[self.name] | {"lr"}))
            raise ValueError(f"{', '.join(unknown)}: not an option of {self.name} (allowed: {allowed})")
        if self.nesterov and not self.momentum:
            raise ValueError("nesterov needs momentum > 0")
        if self.betas is not None and not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas are two numbers in [0, 1)")
        return self


class ScheduleSpec(_Strict):
    """Learning-rate schedule; positions are in epochs (fractions allowed), see schedules.py."""

    name: Literal["constant", "step", "multistep", "exponential", "cosine", "warmup", "plateau", "cyclic", "one_cycle"]
    gamma: float | None = Field(default=None, gt=0.0, le=1.0)
    step_size: float | None = Field(default=None, gt=0.0)
    milestones: list[float] | None = Field(default=None, max_length=100)
    warmup: float | None = Field(default=None, ge=0.0)
    min_lr: float | None = Field(default=None, ge=0.0)
    metric: str | None = None
    mode: Literal["min", "max", "triangular", "triangular2", "exp_range"] | None = None
    factor: float | None = Field(default=None, gt=0.0, lt=1.0)
    patience: int | None = Field(default=None, ge=0)
    threshold: float | None = Field(default=None, ge=0.0)
    max_lr: float | None = Field(default=None, gt=0.0)
    pct_start: float | None = Field(default=None, gt=0.0, lt=1.0)
    div_factor: float | None = Field(default=None, ge=1.0)
    final_div_factor: float | None = Field(default=None, ge=1.0)

    @model_validator(mode="after")
    def _options_fit(self) -> ScheduleSpec:
        given = {k for k in self.model_fields_set if k != "name" and getattr(self, k) is not None}
        unknown = sorted(given - SCHEDULE_OPTIONS[self.name])
        if unknown:
            allowed = ", ".join(sorted(SCHEDULE_OPTIONS[self.name])) or "none"
            raise ValueError(f"{', '.join(unknown)}: not an option of schedule {self.name} (allowed: {allowed})")
        if self.metric is not None and self.metric not in EPOCH_METRICS:
            raise ValueError(f"metric {self.metric!r} is not one of {', '.join(EPOCH_METRICS)}")
        cyclic = self.name == "cyclic"
        if self.mode is not None and (self.mode in ("min", "max")) == cyclic:
            raise ValueError("mode is min/max for plateau, triangular/triangular2/exp_range for cyclic")
        if self.name in ("cyclic", "one_cycle") and self.max_lr is None:
            raise ValueError(f"schedule {self.name} needs max_lr")
        return self


class Regularization(_Strict):
    l1: float = Field(default=0.0, ge=0.0, le=1.0)
    l2: float = Field(default=0.0, ge=0.0, le=1.0)
    """Penalty l2 * sum(w^2) added to the loss (weights only, not biases); weight decay is an optimizer option."""
    dropout: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Insert a dropout layer after every hidden activation of the layer list."""
    clip_norm: float | None = Field(default=None, gt=0.0)
    """Clip the global gradient norm before each step."""


class EarlyStopping(_Strict):
    metric: str = "val_loss"
    mode: Literal["min", "max", "auto"] = "auto"
    patience: int = Field(default=3, ge=0)
    min_delta: float = Field(default=0.0, ge=0.0)
    restore_best: bool = True

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in EPOCH_METRICS:
            raise ValueError(f"{value!r} is not one of {', '.join(EPOCH_METRICS)}")
        return value


class CheckpointSpec(_Strict):
    every_steps: int | None = Field(default=None, ge=1)
    """Also checkpoint every N optimizer steps (a checkpoint is always written after each epoch)."""
    keep: int = Field(default=2, ge=1, le=100)


class ParallelSpec(_Strict):
    strategy: Literal["none", "data", "model"] = "none"
    workers: int = Field(default=1, ge=1, le=64)
    """Data parallel: processes, each with a shard of every batch."""
    stages: int = Field(default=1, ge=1, le=64)
    """Model parallel: pipeline stages, each a contiguous part of the layer list."""
    micro_batches: int = Field(default=4, ge=1, le=1024)


class TrainOptions(_Strict):
    loss: Literal["mse", "mae", "cross_entropy", "binary_cross_entropy"] = "cross_entropy"
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec | None = None
    batch_size: int | dict[int, int] = 32
    """A size, or ``{epoch: size}`` (e.g. ``{0: 32, 5: 128}``) growing at the given epochs."""
    epochs: int = Field(default=10, ge=1, le=100_000)
    regularization: Regularization = Field(default_factory=Regularization)
    early_stopping: EarlyStopping | None = None
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    device: Literal["cpu", "cuda", "auto"] = "auto"
    threads: int | None = Field(default=None, ge=1, le=256)
    """CPU threads for torch (default: 1 for small models, where more threads only contend)."""
    parallel: ParallelSpec = Field(default_factory=ParallelSpec)

    @field_validator("batch_size")
    @classmethod
    def _sizes(cls, value: int | dict[int, int]) -> int | dict[int, int]:
        sizes = value.values() if isinstance(value, dict) else [value]
        if isinstance(value, dict) and (0 not in value or any(e < 0 for e in value)):
            raise ValueError("a batch-size schedule maps epochs (from 0) to sizes, e.g. {0: 32, 5: 128}")
        if any(s < 1 or s > 1 << 20 for s in sizes):
            raise ValueError("batch sizes are between 1 and 1048576")
        return value

    @model_validator(mode="after")
    def _fits(self) -> TrainOptions:
        if self.optimizer.name == "gd" and self.batch_size != 32 and "batch_size" in self.model_fields_set:
            raise ValueError("optimizer gd uses the full training set as one batch; drop batch_size")
        if self.label_smoothing and self.loss != "cross_entropy":
            raise ValueError("label_smoothing goes with loss cross_entropy")
        if self.parallel.strategy == "data" and self.parallel.workers < 2:
            raise ValueError("parallel strategy data needs workers >= 2")
        if self.parallel.strategy == "model" and self.parallel.stages < 2:
            raise ValueError("parallel strategy model needs stages >= 2")
        return self


class RegisterSpec(_Strict):
    model: str = Field(max_length=63)
    alias: str | None = Field(default=None, max_length=63)
    description: str = Field(default="", max_length=10_000)


class TrainSpec(_Strict):
    """A whole spec file. ``register`` (``.registration`` in Python, as pydantic reserves the name) is
    read by the caller that stores the version."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, max_length=63)
    description: str = Field(default="", max_length=10_000)
    data: DataSpec
    model: ModelSpec
    train: TrainOptions = Field(default_factory=TrainOptions)
    registration: RegisterSpec | None = Field(default=None, alias="register")

    @model_validator(mode="after")
    def _consistent(self) -> TrainSpec:
        stopping = self.train.early_stopping
        if stopping and stopping.metric.startswith("val_") and self.data.validation_split == 0:
            raise ValueError(f"early_stopping on {stopping.metric} needs data.validation_split > 0")
        schedule = self.train.schedule
        on_validation = schedule is not None and (schedule.metric or "val_loss").startswith("val_")
        if schedule and schedule.name == "plateau" and on_validation and self.data.validation_split == 0:
            raise ValueError("schedule plateau on a validation metric needs data.validation_split > 0")
        if self.train.parallel.strategy == "model":
            if self.model.layers is None:
                raise ValueError("parallel strategy model splits a layer list; it cannot split a python module")
            if stopping is not None or (schedule is not None and schedule.name == "plateau"):
                raise ValueError("parallel strategy model supports neither early_stopping nor a plateau schedule")
        return self

    @property
    def uses_python_module(self) -> bool:
        """True when the spec imports code (``model.python``): the caller must check that permission."""
        return self.model.python is not None

    def fingerprint(self) -> str:
        """sha256 of the spec without ``train.epochs`` and ``register``: what a checkpoint must match."""
        data = self.model_dump(mode="json", exclude={"registration": True, "train": {"epochs"}})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def load_spec(source: str | Path | dict[str, Any]) -> TrainSpec:
    """Parse and validate a spec from YAML/JSON text, a file path or a dict; raises SpecError."""
    if isinstance(source, dict):
        return validate_spec(source)
    if isinstance(source, Path):
        try:
            if source.stat().st_size > MAX_SPEC_BYTES:
                raise SpecError(message=f"the spec file is larger than {MAX_SPEC_BYTES} bytes")
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(message=f"cannot read the spec file ({type(exc).__name__})") from None
    else:
        text = source
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(message=f"the spec is larger than {MAX_SPEC_BYTES} bytes")
    try:
        parsed = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(message=f"not valid YAML or JSON{where}") from None
    if not isinstance(parsed, dict):
        raise SpecError(message="the spec must be a mapping with name, data, model and train")
    return validate_spec(parsed)


def validate_spec(data: dict[str, Any]) -> TrainSpec:
    """Validate a parsed spec; raises SpecError with one ``field.path: problem`` per line."""
    try:
        return TrainSpec.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()[:10]]
        raise SpecError(message="; ".join(problems)) from None


def _describe(err: ErrorDetails) -> str:
    """``train.optimizer.name: 'adamm' is not one of gd, sgd, ...`` from one pydantic error."""
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after")) or "(root)"
    ctx = err.get("ctx") or {}
    if err["type"] == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"{loc}: {_shown(err['input'])} is not one of {expected}"
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown field"
    message = str(err["msg"]).removeprefix("Value error, ")
    field = _FIELD_FIRST.match(message)  # "momentum: not an option of adam" names a sub-field
    if field:
        return f"{loc}.{field[1]}: {field[2]}"
    return f"{loc}: {message}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
