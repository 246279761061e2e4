"""One function per step kind: read the current version, write the next one's bundle.

Each function returns a :class:`~modelport.optimize.working.Produced`; the pipeline
(:mod:`modelport.optimize.run`) measures it, registers it as a new version and moves on.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelport.errors import BadRequest
from modelport.formats import torch as torch_format
from modelport.optimize import prune as pruning
from modelport.optimize.spec import DistillSpec, ExportSpec, FinetuneSpec, PruneSpec, QuantizeSpec, Step
from modelport.optimize.train import Run, distill_objective, train
from modelport.optimize.working import (
    WEIGHTS,
    Examples,
    Produced,
    Working,
    child_manifest,
    classifier_objective,
    logits_of,
)
from modelport.training.callbacks import Event
from modelport.training.loop import Data
from modelport.training.losses import Objective
from modelport.training.nets import LayerSpecError, build_network
from modelport.training.regularization import insert_dropout
from modelport.training.run import ONNX_TOLERANCE, check_onnx_export, postprocess_steps

ONNX_FILE = "model.onnx"
_CHECK_EXAMPLES = 512


@dataclass(frozen=True)
class Context:
    examples: Examples
    out: Path
    """An empty folder for the step's bundle."""
    report: Callable[[Event], None]
    should_stop: Callable[[], bool]
    checkpoints: Path | None = None
    """Where this step's training runs keep their checkpoints (kept across attempts of the job)."""
    fingerprint: str = ""
    """Identifies the step (its index and options): a checkpoint of anything else is not resumed."""

    def run_folder(self, name: str) -> Path | None:
        return self.checkpoints / name if self.checkpoints is not None else None


def run_step(step: Step, current: Working, ctx: Context) -> Produced:
    if ctx.out.exists():
        shutil.rmtree(ctx.out)
    ctx.out.mkdir(parents=True)
    options = step.options
    if isinstance(options, PruneSpec):
        return prune(options, current, ctx)
    if isinstance(options, FinetuneSpec):
        return finetune(options, current, ctx)
    if isinstance(options, QuantizeSpec):
        return quantize(options, current, ctx)
    if isinstance(options, DistillSpec):
        return distill(options, current, ctx)
    assert isinstance(options, ExportSpec)
    return export(options, current, ctx)


# -- prune -------------------------------------------------------------------------------------------
def prune(options: PruneSpec, current: Working, ctx: Context) -> Produced:
    model, layers, input_shape = current.network("prune")
    model = copy.deepcopy(model)
    transform: dict[str, Any] = {"kind": "prune", **options.model_dump(exclude_none=True)}
    if options.method == "structured":
        assert options.amount is not None
        try:
            model, layers = pruning.structured(model, layers, input_shape, options.amount, criterion=options.criterion)
        except ValueError as exc:
            raise BadRequest(message=f"prune: {exc}") from None
        return _torch_bundle(model, layers, input_shape, current, ctx, transform, encoding="dense")
    masks: pruning.Masks | None = pruning.masks_of(model)
    stages = options.stages
    for index, target in enumerate(stages):
        masks = _masks(options, model, target, masks, ctx)
        pruning.apply_masks(model, masks)
        ctx.report({"type": "log", "message": f"pruned to {target:.0%} ({options.method}, {options.scope})"})
        if options.finetune is not None and index < len(stages) - 1:
            _finetune(model, options.finetune, ctx, masks)
    return _torch_bundle(model, layers, input_shape, current, ctx, transform, encoding="sparse")


def _masks(
    options: PruneSpec, model: nn.Module, target: float, current: pruning.Masks | None, ctx: Context
) -> pruning.Masks:
    try:
        if options.method == "random":
            return pruning.random_masks(model, target, scope=options.scope, seed=options.seed, current=current)
        if options.method == "magnitude":
            return pruning.magnitude_masks(model, target, scope=options.scope, current=current)
        objective, head = classifier_objective(model)
        n = min(options.calibration_samples, len(ctx.examples.x_train))
        x = torch.from_numpy(ctx.examples.x_train[:n])
        y = torch.from_numpy(ctx.examples.y_train[:n])
        return pruning.taylor_masks(
            model,
            target,
            scope=options.scope,
            loss_of=lambda xb, yb: objective.loss(head(xb), yb),
            x=x,
            y=y,
            current=current,
        )
    except ValueError as exc:
        raise BadRequest(message=f"prune: {exc}") from None


# -- finetune ----------------------------------------------------------------------------------------
def finetune(options: FinetuneSpec, current: Working, ctx: Context) -> Produced:
    model, layers, input_shape = current.network("finetune")
    model = copy.deepcopy(model)
    masks = pruning.masks_of(model)
    _finetune(model, options, ctx, masks, checkpoints=ctx.run_folder("finetune"))
    sparse = _sparsity(model) >= 0.2
    transform = {"kind": "finetune", **options.model_dump(exclude_none=True)}
    return _torch_bundle(model, layers, input_shape, current, ctx, transform, encoding="sparse" if sparse else "dense")


def _finetune(
    model: nn.Sequential, options: FinetuneSpec, ctx: Context, masks: pruning.Masks, *, checkpoints: Path | None = None
) -> None:
    objective, head = classifier_objective(model)
    data = Data(torch.from_numpy(ctx.examples.x_train), torch.from_numpy(ctx.examples.y_train))
    release = pruning.hold_masks(model, masks)
    try:
        run = Run(
            epochs=options.epochs,
            optimizer=options.optimizer,
            batch_size=options.batch_size,
            seed=options.seed,
            schedule=options.schedule,
        )
        train(
            model,
            head,
            objective,
            data,
            run,
            report=ctx.report,
            should_stop=ctx.should_stop,
            checkpoints=checkpoints,
            fingerprint=ctx.fingerprint,
        )
    finally:
        release()
    pruning.apply_masks(model, masks)  # exact zeros, whatever the optimizer's arithmetic did


def _sparsity(model: nn.Module) -> float:
    params, nonzero = pruning.count(model)
    return 1.0 - nonzero / max(params, 1)


# -- quantize ----------------------------------------------------------------------------------------
def quantize(options: QuantizeSpec, current: Working, ctx: Context) -> Produced:
    from modelport.optimize.quantize import quantize_onnx  # onnxruntime.quantization is a heavy import

    transform: dict[str, Any] = {"kind": "quantize", **options.model_dump(exclude_none=True)}
    if options.storage == "compressed":
        model, layers, input_shape = current.network("quantize with storage compressed")
        return _torch_bundle(model, layers, input_shape, current, ctx, transform, encoding="int8")
    counts = pruning.count(current.model) if current.model is not None else None
    if current.model is not None:
        source = ctx.out.parent / f"{ctx.out.name}.fp32.onnx"
        _export_onnx(current.model, ctx.examples.x_test, source, ONNX_TOLERANCE)
    elif current.manifest.format == "onnx":
        source = current.folder / current.manifest.entrypoint
    else:
        raise BadRequest(message=f"quantize needs an ONNX graph or a torch network; {current.ref} has neither")
    n = min(options.calibration_samples, len(ctx.examples.x_train))
    calibration = ctx.examples.x_train[:n] if options.method == "int8_static" else None
    inputs = current.manifest.signature.inputs
    facts = quantize_onnx(
        source,
        ctx.out / ONNX_FILE,
        options.method,
        calibration=calibration,
        input_name=inputs[0].name if current.model is None and inputs else "input",
        block_size=options.block_size,
    )
    manifest = child_manifest(
        current.manifest, fmt="onnx", entrypoint=ONNX_FILE, description=_describe(current, transform)
    )
    return Produced(ctx.out, manifest, transform, counts=counts, extra={"quantization": facts})


# -- distill -----------------------------------------------------------------------------------------
def distill(options: DistillSpec, current: Working, ctx: Context) -> Produced:
    teacher, _, input_shape = current.network("distill (the teacher)")
    assert options.student.layers is not None
    t = options.train
    layers = list(options.student.layers)
    if t.regularization.dropout:
        layers = insert_dropout(layers, t.regularization.dropout)
    x = torch.from_numpy(ctx.examples.x_train)
    labels = torch.from_numpy(ctx.examples.y_train)
    soft = logits_of(teacher, ctx.examples.x_train)  # (N, classes)
    if soft.shape[1] != ctx.examples.classes:
        raise BadRequest(message=f"distill: the teacher has {soft.shape[1]} outputs for {ctx.examples.classes} classes")
    run = Run(
        epochs=t.epochs,
        optimizer=t.optimizer,
        batch_size=t.batch_size,
        seed=t.seed,
        schedule=t.schedule,
        l1=t.regularization.l1,
        l2=t.regularization.l2,
        clip_norm=t.regularization.clip_norm,
    )
    student = _student(layers, input_shape, t.seed, ctx.examples.classes)
    objective, head = classifier_objective(student)
    distilled = distill_objective(
        strip_final=objective.strip_final, temperature=options.temperature, alpha=options.alpha
    )
    targets = torch.cat([labels.float().unsqueeze(1), soft], dim=1)  # (N, 1 + classes)

    def fit(name: str, model: nn.Module, model_head: nn.Module, loss: Objective, data: Data) -> None:
        """Both runs the same way (the same ``run``, each with its own checkpoints)."""
        train(
            model,
            model_head,
            loss,
            data,
            run,
            report=ctx.report,
            should_stop=ctx.should_stop,
            checkpoints=ctx.run_folder(name),
            fingerprint=ctx.fingerprint,
        )

    ctx.report({"type": "log", "message": "training the student on the teacher's soft targets"})
    fit("student", student, head, distilled, Data(x, targets))
    extra: dict[str, Any] = {}
    if options.control:
        control = _student(layers, input_shape, t.seed, ctx.examples.classes)
        control_objective, control_head = classifier_objective(control)
        ctx.report({"type": "log", "message": "training the control: the same student on hard labels only"})
        fit("control", control, control_head, control_objective, Data(x, labels))
        extra["control"] = _accuracy(control, ctx.examples)
    extra["teacher"] = _accuracy(teacher, ctx.examples)
    extra["student"] = _accuracy(student, ctx.examples)
    transform = {"kind": "distill", **options.model_dump(exclude_none=True, exclude={"student"}), "student": layers}
    produced = _torch_bundle(student, layers, input_shape, current, ctx, transform, encoding="dense")
    produced.extra.update(extra)
    produced.manifest["postprocess"] = postprocess_steps(objective, [ctx.examples.classes])  # as training decodes
    return produced


def _student(layers: list[Any], input_shape: list[int], seed: int, classes: int) -> nn.Sequential:
    torch.manual_seed(seed)
    try:
        net = build_network(layers, input_shape)
    except LayerSpecError as exc:
        raise BadRequest(message=f"distill.student: {exc}") from None
    with torch.no_grad():
        out = net.eval()(torch.zeros((1, *input_shape)))
    if out.shape != (1, classes):
        raise BadRequest(message=f"distill.student: it has outputs of shape {list(out.shape[1:])}; {classes} classes")
    return net


def _accuracy(model: nn.Module, examples: Examples) -> dict[str, Any]:
    predicted = logits_of(model, examples.x_test).argmax(dim=1).numpy()
    errors = int((predicted != examples.y_test).sum())
    return {"accuracy": 1.0 - errors / max(len(examples.y_test), 1), "errors": errors}


# -- export ------------------------------------------------------------------------------------------
def export(options: ExportSpec, current: Working, ctx: Context) -> Produced:
    model, layers, input_shape = current.network("export")
    diff = _export_onnx(model, ctx.examples.x_test, ctx.out / ONNX_FILE, options.tolerance)
    torch_format.save(model, ctx.out, layers=layers, input_shape=input_shape)
    transform = {"kind": "export", **options.model_dump(exclude_none=True), "max_abs_diff": diff}
    manifest = child_manifest(
        current.manifest, fmt="onnx", entrypoint=ONNX_FILE, description=_describe(current, transform)
    )
    manifest["architecture"] = torch_format.architecture(layers, input_shape)
    return Produced(
        ctx.out, manifest, transform, model=model, layers=layers, input_shape=input_shape, extra={"max_abs_diff": diff}
    )


def _export_onnx(model: nn.Module, x: np.ndarray, path: Path, tolerance: float) -> float:
    """Export with a dynamic batch axis, then check onnxruntime against torch on real inputs."""
    return check_onnx_export(model.eval(), torch.from_numpy(x[:_CHECK_EXAMPLES]), path, tolerance=tolerance)


# -- bundles -----------------------------------------------------------------------------------------
def _torch_bundle(
    model: nn.Sequential,
    layers: list[Any],
    input_shape: list[int],
    current: Working,
    ctx: Context,
    transform: dict[str, Any],
    *,
    encoding: str,
) -> Produced:
    model = model.eval()
    torch_format.save(model, ctx.out, layers=layers, input_shape=input_shape, encoding=encoding)  # type: ignore[arg-type]
    manifest = child_manifest(
        current.manifest, fmt="torch", entrypoint=WEIGHTS, description=_describe(current, transform)
    )
    manifest["architecture"] = torch_format.architecture(layers, input_shape)
    return Produced(
        ctx.out, manifest, transform, model=model, layers=layers, input_shape=input_shape, counts=pruning.count(model)
    )


def _describe(current: Working, transform: dict[str, Any]) -> str:
    return f"{transform['kind']} of {current.ref}"
