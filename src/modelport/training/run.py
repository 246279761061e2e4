"""``run_training``: a validated spec in, a servable, reproducible version bundle out.

The composition of the training package, in order: load and split the data, fit the preprocessing,
build the network, loss and optimizer, resume from the newest checkpoint if there is one, run
:func:`~modelport.training.loop.fit`, evaluate, export ONNX (checked against torch on real inputs)
and write the manifest. The caller (the job worker) stores the bundle as a new version, adds the
job id to the lineage and checks permissions (``spec.uses_python_module``) before calling.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from pydantic import ValidationError
from torch import nn

from modelport.errors import BadRequest, InvalidArtifact
from modelport.formats import torch as torch_format
from modelport.store.bundle import ManifestInput, describe_validation_error
from modelport.training import checkpoint
from modelport.training.callbacks import EarlyStopping, Event, ProgressEvents
from modelport.training.data.preprocess import apply_steps, class_names, encode_targets, fit_steps, input_shape_for
from modelport.training.data.sources import ResolveDataset, Table, load_source
from modelport.training.data.splits import make_splits
from modelport.training.loop import Data, Hooks, Plan, Position, TrainingCancelled, confusion_matrix, evaluate, fit
from modelport.training.losses import Objective, build_objective, final_activation
from modelport.training.nets import LayerSpecError, build_network, build_python_module, first_layer_kind, input_dtype
from modelport.training.optimizers import base_lr, build_optimizer
from modelport.training.regularization import insert_dropout, make_penalty
from modelport.training.schedules import ReduceOnPlateau, make_lr_fn
from modelport.training.spec import TrainSpec

__all__ = ["Event", "TrainOutcome", "TrainingCancelled", "run_training"]
ONNX_TOLERANCE = 1e-5
_ONNX_CHECK_EXAMPLES = 512


@dataclass
class TrainOutcome:
    bundle_dir: Path
    """Holds model.onnx and model.safetensors (and nothing else)."""
    manifest: dict[str, Any]
    """ManifestInput-compatible: format onnx, entrypoint, architecture, pre/postprocess, labels, metrics, lineage."""
    metrics: dict[str, Any]
    """The final figures (also inside ``manifest["metrics"]``)."""


@dataclass
class Built:
    """Everything derived from the spec and the data before training starts."""

    spec: TrainSpec
    device: torch.device
    model: nn.Module
    head: nn.Module
    objective: Objective
    layers: list[Any] | None
    input_shape: list[int]
    preprocess: list[dict[str, Any]]
    classes: list[str] | None
    dataset_sha256: str
    data: Data
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None


def run_training(
    spec: TrainSpec,
    *,
    workdir: Path,
    report: Callable[[Event], None],
    should_stop: Callable[[], bool] = lambda: False,
    resolve_dataset: Callable[[str], Path] | None = None,
) -> TrainOutcome:
    """Train ``spec`` in ``workdir`` (resuming from ``workdir/checkpoints`` if present) and export it.

    Raises TrainingCancelled after saving a checkpoint when ``should_stop()`` turns true, and
    BadRequest/InvalidArtifact subclasses for problems with the spec or the data.
    """
    if spec.train.parallel.strategy != "none":
        from modelport.training.distributed import run_parallel

        return run_parallel(
            spec, workdir=workdir, report=report, should_stop=should_stop, resolve_dataset=resolve_dataset
        )
    with _threads(spec):
        built = build(spec, resolve_dataset)
        plan = make_plan(built)
        report(
            {
                "type": "started",
                "epochs": spec.train.epochs,
                "device": str(built.device),
                "train_examples": int(built.data.x_train.shape[0]),
                "parameters": _parameters(built.model),
            }
        )
        pos, hooks = resume(plan, built, workdir, report, should_stop)
        pos = fit(plan, built.data, pos, hooks)
        return finish(built, plan, pos, hooks.best_weights, workdir, report)


def build(spec: TrainSpec, resolve_dataset: ResolveDataset | None, *, device: torch.device | None = None) -> Built:
    """Data, network and loss for ``spec``; seeds torch first so the initial weights are reproducible."""
    device = device or _device(spec.train.device)
    torch.manual_seed(spec.train.seed)
    np.random.seed(spec.train.seed % 2**32)
    source = load_source(spec.data, resolve_dataset)
    splits = make_splits(
        source, validation_split=spec.data.validation_split, test_split=spec.data.test_split, seed=spec.train.seed
    )
    layers = _layers(spec)
    first = first_layer_kind(layers) if layers is not None else None
    input_shape = input_shape_for(source.train.x.shape[1:], spec.data.preprocess, first, spec.model.input_shape)
    model = _network(spec, layers, input_shape).to(device)
    units = _output_units(model, input_shape, device)
    classes = class_names(spec.train.loss, spec.data.one_hot, source.train.y, source.classes, units)
    objective = build_objective(
        spec.train.loss,
        final=final_activation(model),
        label_smoothing=spec.train.label_smoothing,
        one_hot=spec.data.one_hot,
    )
    head = model[:-1] if objective.strip_final and isinstance(model, nn.Sequential) else model
    steps = fit_steps(spec.data.preprocess, splits.train.x, input_shape)

    ids = layers is not None and input_dtype(layers) == "int64"  # an embedding takes token ids

    def tensors(table: Table | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if table is None:
            return None, None
        x = torch.from_numpy(apply_steps(steps, table.x, size=int(np.prod(input_shape))))
        y = torch.from_numpy(encode_targets(table.y, objective.targets, classes))
        return (x.long() if ids else x).to(device), y.to(device)

    x_train, y_train = tensors(splits.train)
    x_val, y_val = tensors(splits.validation)
    x_test, y_test = tensors(splits.test)
    assert x_train is not None
    assert y_train is not None
    data = Data(x_train, y_train, x_val, y_val)
    return Built(
        spec, device, model, head, objective, layers, input_shape, steps, classes, source.sha256, data, x_test, y_test
    )


def make_plan(built: Built, *, head: nn.Module | None = None, shard: tuple[int, int] = (0, 1)) -> Plan:
    """Optimizer, schedule, penalty and early stopping: everything the loop needs, built up front."""
    train = built.spec.train
    schedule = train.schedule
    plateau = None
    if schedule is not None and schedule.name == "plateau":
        plateau = ReduceOnPlateau(
            mode=schedule.mode or "min",
            factor=schedule.factor or 0.1,
            patience=2 if schedule.patience is None else schedule.patience,
            threshold=1e-4 if schedule.threshold is None else schedule.threshold,
            min_scale=(schedule.min_lr or 0.0) / base_lr(train.optimizer),
        )
    stopping = None
    if train.early_stopping is not None:
        es = train.early_stopping
        stopping = EarlyStopping.create(es.metric, es.mode, es.patience, es.min_delta)
    full_batch = train.optimizer.name == "gd"
    return Plan(
        model=built.model,
        head=head or built.head,
        objective=built.objective,
        optimizer=build_optimizer(train.optimizer, built.model.parameters()),
        lr_at=make_lr_fn(schedule, base_lr=base_lr(train.optimizer), total=float(train.epochs)),
        epochs=train.epochs,
        batch_size=int(built.data.x_train.shape[0]) if full_batch else train.batch_size,
        seed=train.seed,
        penalty=make_penalty(built.model, l1=train.regularization.l1, l2=train.regularization.l2),
        clip_norm=train.regularization.clip_norm,
        plateau=plateau,
        plateau_metric=(schedule.metric or "val_loss") if schedule is not None else "val_loss",
        stopping=stopping,
        shard=shard,
    )


def resume(
    plan: Plan,
    built: Built,
    workdir: Path,
    report: Callable[[Event], None],
    should_stop: Callable[[], bool],
    *,
    save: bool = True,
) -> tuple[Position, Hooks]:
    """The starting position (restored from the newest checkpoint, if any) and the loop's hooks."""
    folder = workdir / "checkpoints"
    fingerprint = built.spec.fingerprint()
    keep = built.spec.train.checkpoint.keep

    def save_checkpoint(plan: Plan, pos: Position) -> None:
        if not save:
            return
        state = {"spec": fingerprint, "position": pos.state(), "rng": checkpoint.rng_state()}
        checkpoint.save(
            folder,
            model=plan.model.state_dict(),
            optimizer=plan.optimizer.state_dict(),
            state=state,
            best=hooks.best_weights,
            keep=keep,
        )

    hooks = Hooks(
        report=report,
        should_stop=should_stop,
        save=save_checkpoint,
        every_steps=built.spec.train.checkpoint.every_steps,
        progress=ProgressEvents(report, epochs=plan.epochs),
    )
    pos = Position()
    latest = checkpoint.latest(folder)
    if latest is None:
        return pos, hooks
    record = checkpoint.load(latest)
    if record.state.get("spec") != fingerprint:
        raise BadRequest(message="the work folder holds checkpoints of a different spec; use a new folder")
    plan.model.load_state_dict(record.model, strict=True)
    plan.optimizer.load_state_dict(record.optimizer)
    checkpoint.set_rng_state(record.state["rng"])
    pos = Position(**record.state["position"])
    if plan.plateau is not None and pos.plateau is not None:
        plan.plateau = ReduceOnPlateau.from_state(pos.plateau)
    if plan.stopping is not None and pos.stopping is not None:
        plan.stopping = EarlyStopping.from_state(pos.stopping)
    hooks.best_weights = record.best
    hooks.last_saved = pos.global_step
    report({"type": "log", "message": f"resumed at epoch {pos.epoch + 1}, step {pos.step}"})
    return pos, hooks


def finish(
    built: Built,
    plan: Plan,
    pos: Position,
    best: dict[str, torch.Tensor] | None,
    workdir: Path,
    report: Callable[[Event], None],
) -> TrainOutcome:
    """Restore the best weights if asked, measure, export and describe the version."""
    es = built.spec.train.early_stopping
    if es is not None and es.restore_best and best is not None:
        built.model.load_state_dict(best)
    metrics = final_metrics(built, pos)
    bundle = workdir / "bundle"
    manifest = export_bundle(built, metrics, bundle)
    report({"type": "finished", "metrics": {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}})
    return TrainOutcome(bundle_dir=bundle, manifest=manifest, metrics=metrics)


def final_metrics(built: Built, pos: Position) -> dict[str, Any]:
    """Final train/validation/test figures, curves, confusion matrix and throughput."""
    head, objective, data = built.head, built.objective, built.data
    metrics: dict[str, Any] = {}
    splits = {
        "train": (data.x_train, data.y_train),
        "val": (data.x_val, data.y_val),
        "test": (built.x_test, built.y_test),
    }
    for name, (x, y) in splits.items():
        if x is not None and y is not None:
            for key, value in evaluate(head, objective, x, y).items():
                metrics[f"{name}_{key}"] = value
    seen = int(data.x_train.shape[0]) * max(len(pos.history.get("loss", [])), 1)
    metrics.update(
        epochs_run=len(pos.history.get("loss", [])),
        stopped_early=pos.stopped_early,
        train_seconds=pos.train_seconds,
        throughput=seen / pos.train_seconds if pos.train_seconds > 0 else None,
        history=pos.history,
        parameters=_parameters(built.model),
    )
    if pos.stopping is not None:
        metrics["best_epoch"] = int(pos.stopping["best_epoch"]) + 1
    x_cm, y_cm = (built.x_test, built.y_test) if built.x_test is not None else (data.x_val, data.y_val)
    if built.classes is not None and objective.targets != "regression" and x_cm is not None and y_cm is not None:
        metrics["confusion_matrix"] = confusion_matrix(head, objective, x_cm, y_cm, len(built.classes))
    return metrics


def export_bundle(built: Built, metrics: dict[str, Any], bundle: Path) -> dict[str, Any]:
    """Write model.safetensors and model.onnx into ``bundle`` and return the version's manifest.

    The ONNX graph is run with onnxruntime on real (preprocessed) examples and must match torch
    within 1e-5 (relative for outputs above 1), or the run fails: a version that would serve other
    numbers than the ones measured is never produced.
    """
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle.mkdir(parents=True)
    model = built.model.to("cpu").eval()
    if built.layers is not None:
        torch_format.save(model, bundle, layers=built.layers, input_shape=built.input_shape)
    else:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(state, str(bundle / torch_format.ENTRYPOINT), metadata={"format": "pt"})
    examples = next(x for x in (built.x_test, built.data.x_val, built.data.x_train) if x is not None)
    examples = examples[:_ONNX_CHECK_EXAMPLES].cpu()
    metrics["onnx_max_abs_diff"] = check_onnx_export(model, examples, bundle / "model.onnx")
    dtype = "int64" if examples.dtype == torch.int64 else "float32"
    with torch.no_grad():
        out_shape = list(model(examples[:1]).shape[1:])
    manifest: dict[str, Any] = {
        "format": "onnx",
        "entrypoint": "model.onnx",
        "architecture": _architecture(built),
        "signature": {
            "inputs": [{"name": "input", "dtype": dtype, "shape": [-1, *built.input_shape]}],
            "outputs": [{"name": "output", "dtype": "float32", "shape": [-1, *out_shape]}],
        },
        "preprocess": [] if dtype == "int64" else built.preprocess,
        "postprocess": postprocess_steps(built.objective, out_shape),
        "labels": built.classes,
        "metrics": metrics,
        "description": built.spec.description or f"{built.spec.name}: trained from a Modelport spec",
        "lineage": {"dataset_sha256": built.dataset_sha256},
    }
    try:
        ManifestInput.model_validate(manifest)
    except ValidationError as exc:
        raise InvalidArtifact(message=f"the trained version's manifest: {describe_validation_error(exc)}") from None
    return manifest


def check_onnx_export(
    model: nn.Module, examples: torch.Tensor, path: Path, *, tolerance: float = ONNX_TOLERANCE
) -> float:
    """Export with a dynamic batch axis; return the largest difference from torch on ``examples``.

    Fails (InvalidArtifact) when onnxruntime's outputs differ by more than ``tolerance`` (relative
    for outputs above 1): a version that would serve other numbers than the measured ones is never made.
    """
    try:
        torch.onnx.export(
            model,
            (examples[:1],),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types for unsupported layers
        raise InvalidArtifact(message=f"the network cannot be exported to ONNX: {type(exc).__name__}") from None
    import onnxruntime as ort  # imported here: worker processes of parallel runs never need it

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    got = session.run(["output"], {"input": examples.numpy()})[0]
    with torch.no_grad():
        want = model(examples).numpy()  # (N, *out_shape)
    diff = np.abs(got - want)
    if got.shape != want.shape or not np.all(diff <= tolerance * np.maximum(1.0, np.abs(want))):
        worst = float(diff.max()) if got.shape == want.shape else float("inf")
        raise InvalidArtifact(message=f"the ONNX export differs from torch by up to {worst:.3g} on real inputs")
    return float(diff.max())


def _architecture(built: Built) -> dict[str, Any]:
    if built.layers is not None:
        return torch_format.architecture(built.layers, built.input_shape)
    return {"python": built.spec.model.python, "kwargs": built.spec.model.kwargs, "input_shape": built.input_shape}


def postprocess_steps(objective: Objective, out_shape: list[int]) -> list[dict[str, Any]]:
    """Decoding for serving: probabilities from logits, then argmax -> label for classifiers."""
    steps: list[dict[str, Any]] = []
    single = int(np.prod(out_shape)) == 1
    if objective.outputs == "logits":
        steps.append({"sigmoid": True} if objective.targets == "binary" or single else {"softmax": True})
    if objective.targets in ("class_index", "one_hot") and not single:
        steps.append({"argmax": True})
    return steps


def _layers(spec: TrainSpec) -> list[Any] | None:
    layers = spec.model.layers
    if layers is not None and spec.train.regularization.dropout:
        layers = insert_dropout(layers, spec.train.regularization.dropout)
    return layers


def _network(spec: TrainSpec, layers: list[Any] | None, input_shape: list[int]) -> nn.Module:
    try:
        if layers is not None:
            return build_network(layers, input_shape)
        assert spec.model.python is not None
        return build_python_module(spec.model.python, spec.model.kwargs)
    except LayerSpecError as exc:
        raise BadRequest(message=f"model: {exc}") from None


def _output_units(model: nn.Module, input_shape: list[int], device: torch.device) -> int:
    """Size of one example's output, from a forward pass on zeros (works for python modules too)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, *input_shape), device=device))  # (1, *out_shape)
    except Exception as exc:  # noqa: BLE001 - any layer may refuse the input shape
        raise BadRequest(
            message=f"model: the network fails on inputs of shape {input_shape}: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    finally:
        model.train(was)
    return int(np.prod(out.shape[1:]))


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise BadRequest(message="train.device is cuda, but this machine has no CUDA device; use auto or cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


@contextlib.contextmanager
def _threads(spec: TrainSpec) -> Iterator[None]:
    """Run with ``train.threads`` torch threads (default 1 for layer-list MLPs: more only contend)."""
    before = torch.get_num_threads()
    wanted = spec.train.threads
    if wanted is None:
        convolutional = any(isinstance(layer, dict) and "conv2d" in layer for layer in spec.model.layers or [])
        wanted = before if convolutional or spec.model.python else 1
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)
