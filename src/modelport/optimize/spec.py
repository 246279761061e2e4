"""The optimize spec: a source version, data to evaluate and calibrate on, and a chain of steps.

Each step's result becomes its own version, a child of the one before, so that any point of the
chain can be served or compared::

    source: mnist-mlp:1
    data: {source: mnist, path: ../shared/data/mnist}      # evaluation, calibration, fine-tuning
    steps:
      - prune: {method: magnitude, sparsity: 0.9, scope: global}
      - finetune: {epochs: 2, optimizer: {name: sgd, lr: 0.005, momentum: 0.9}}
      - quantize: {method: int8_static, calibration_samples: 2000}
    register: {model: mnist-mlp, alias: candidate}

Everything is checked before the job is queued; the order rules (quantize ends a chain, export
needs a torch network) are checked here too, so a mistake is a 400, not a failure after training.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelport.errors import BadRequest
from modelport.store.bundle import describe_validation_error
from modelport.training.spec import DataSpec, ModelSpec, OptimizerSpec, ScheduleSpec, TrainOptions

MAX_STEPS = 16
PRUNE_METHODS = ("random", "magnitude", "taylor", "structured")
QUANTIZE_METHODS = ("int8_dynamic", "int8_static", "int4_weight")


class OptimizeSpecError(BadRequest):
    code = "invalid_spec"

    def __init__(self, *, message: str) -> None:
        super().__init__(message=f"invalid optimize spec: {message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FinetuneSpec(_Strict):
    """Train the current network a little more on the data's training split (pruned weights stay zero)."""

    epochs: int = Field(default=2, ge=1, le=1000)
    optimizer: OptimizerSpec = Field(default_factory=lambda: OptimizerSpec(name="adam", lr=5e-4, weight_decay=1e-4))
    schedule: ScheduleSpec | None = Field(default_factory=lambda: ScheduleSpec(name="cosine"))
    """A learning-rate schedule over the fine-tuning epochs, as in a training spec; null for a constant rate.

    The defaults are the recipe that recovered a 90%-pruned LeNet-300-100 best (docs/benchmarks.md):
    a flat Adam 1e-4 left it 0.28 point above its parent, Adam 5e-4 + weight decay + cosine 0.2 below."""
    batch_size: int = Field(default=128, ge=1, le=1 << 20)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class PruneSpec(_Strict):
    """Unstructured pruning to ``sparsity`` (a number, or a schedule such as [0.5, 0.8, 0.9] with
    ``finetune`` between the stages), or structured removal of ``amount`` of every hidden layer's
    neurons/channels (a smaller dense network)."""

    method: Literal["random", "magnitude", "taylor", "structured"] = "magnitude"
    sparsity: float | list[float] | None = None
    scope: Literal["layer", "global"] = "layer"
    amount: float | None = Field(default=None, gt=0.0, lt=1.0)
    criterion: Literal["l1", "l2"] = "l1"
    finetune: FinetuneSpec | None = None
    """For a schedule: fine-tuning after every stage but the last (add a finetune step for that one)."""
    calibration_samples: int = Field(default=2000, ge=1, le=1_000_000)
    """Taylor importance: gradients are summed over this many training examples."""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _fits(self) -> PruneSpec:
        if self.method == "structured":
            if self.amount is None or self.sparsity is not None:
                raise ValueError("structured pruning takes amount (the fraction of neurons removed), not sparsity")
            return self
        if self.sparsity is None or self.amount is not None:
            raise ValueError(f"{self.method} pruning takes sparsity (a fraction, or a rising list), not amount")
        stages = self.stages
        if not stages or any(not 0.0 < s < 1.0 for s in stages):
            raise ValueError("sparsity values are in (0, 1)")
        if any(b <= a for a, b in itertools.pairwise(stages)):
            raise ValueError("a sparsity schedule must rise (e.g. [0.5, 0.8, 0.9])")
        if len(stages) > 20:
            raise ValueError("at most 20 sparsity stages")
        return self

    @property
    def stages(self) -> list[float]:
        if self.sparsity is None:
            return []
        return list(self.sparsity) if isinstance(self.sparsity, list) else [self.sparsity]


class QuantizeSpec(_Strict):
    """``onnx`` storage runs ONNX Runtime's quantized kernels; ``compressed`` keeps the torch network and
    stores its weights as int8 (sparse weights with a relative index, Deep Compression's layout)."""

    method: Literal["int8_dynamic", "int8_static", "int4_weight"] = "int8_static"
    calibration_samples: int = Field(default=2000, ge=1, le=1_000_000)
    storage: Literal["onnx", "compressed"] = "onnx"
    block_size: int = Field(default=64, ge=16, le=4096)
    """int4_weight: weights per scale along the input axis (a power of two)."""

    @model_validator(mode="after")
    def _fits(self) -> QuantizeSpec:
        if self.storage == "compressed" and self.method != "int8_dynamic":
            raise ValueError("storage compressed holds int8 weights only: use method int8_dynamic")
        if self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of two")
        return self


class DistillSpec(_Strict):
    """Train ``student`` on the current version's soft targets (temperature ``temperature``) plus the labels.

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross_entropy(student, labels).
    With ``control``, the same student is also trained the same way without the teacher and its
    figures go into the report beside the distilled one.
    """

    student: ModelSpec
    train: TrainOptions = Field(default_factory=TrainOptions)
    temperature: float = Field(default=4.0, gt=0.0, le=100.0)
    alpha: float = Field(default=0.9, ge=0.0, le=1.0)
    control: bool = True

    @model_validator(mode="after")
    def _fits(self) -> DistillSpec:
        if self.student.layers is None:
            raise ValueError("student needs layers (a layer list, as in a training spec)")
        if self.train.loss != "cross_entropy":
            raise ValueError("distillation trains classifiers: train.loss must be cross_entropy")
        if self.train.parallel.strategy != "none":
            raise ValueError("distillation runs in one process: train.parallel is not supported")
        return self


class ExportSpec(_Strict):
    format: Literal["onnx"] = "onnx"
    tolerance: float = Field(default=1e-4, gt=0.0, le=1.0)
    """Largest allowed |onnx - torch| on real inputs (relative above 1)."""


class Step(_Strict):
    """Exactly one of the step kinds."""

    prune: PruneSpec | None = None
    finetune: FinetuneSpec | None = None
    quantize: QuantizeSpec | None = None
    distill: DistillSpec | None = None
    export: ExportSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if value == "export" or value == {"export": "onnx"}:
            return {"export": {}}
        if value == "finetune":
            return {"finetune": {}}
        return value

    @model_validator(mode="after")
    def _one(self) -> Step:
        if len(self.kinds()) != 1:
            raise ValueError("each step is exactly one of prune, finetune, quantize, distill, export")
        return self

    def kinds(self) -> list[str]:
        return [k for k in ("prune", "finetune", "quantize", "distill", "export") if getattr(self, k) is not None]

    @property
    def kind(self) -> str:
        return self.kinds()[0]

    @property
    def options(self) -> BaseModel:
        value = getattr(self, self.kind)
        assert isinstance(value, BaseModel)
        return value


class Register(_Strict):
    model: str | None = Field(default=None, max_length=63)
    """Default: the source's model."""
    alias: str | None = Field(default=None, max_length=63)
    """Set on the last step's version."""


class Evaluation(_Strict):
    latency: bool = True
    """Measure batch-1 and batch-256 latency through the serving runtime (parent and child)."""
    repeats: int = Field(default=30, ge=3, le=10_000)
    cores: int | None = Field(default=1, ge=1, le=1024)
    """CPUs the serving runtime is pinned to while measuring (null: all the worker may use)."""


class OptimizeSpec(_Strict):
    source: str = Field(min_length=1, max_length=200)
    data: DataSpec | None = None
    """Default: the data the source version (or its nearest ancestor made by a job) was trained on."""
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)
    registration: Register = Field(default_factory=Register, alias="register")
    """``register`` in the file (pydantic reserves the name)."""
    evaluation: Evaluation = Field(default_factory=Evaluation)
    description: str = Field(default="", max_length=10_000)

    @model_validator(mode="after")
    def _order(self) -> OptimizeSpec:
        for i, step in enumerate(self.steps[:-1]):
            if step.kind == "quantize":
                raise ValueError(
                    f"steps[{i}]: quantize must be the last step (its int8/int4 result cannot be pruned, "
                    "fine-tuned or exported again; an onnx-stored quantize already produces ONNX)"
                )
        return self


def load_optimize_spec(raw: Any) -> OptimizeSpec:
    """Validate a parsed spec; a 400 names the field path and what is allowed."""
    if not isinstance(raw, dict):
        raise OptimizeSpecError(message="must be a mapping with source, data and steps")
    try:
        return OptimizeSpec.model_validate(raw)
    except ValidationError as exc:
        raise OptimizeSpecError(message=describe_validation_error(exc)) from None
