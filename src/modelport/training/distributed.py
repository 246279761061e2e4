"""Parallel training in worker processes: data parallelism (DDP) and a GPipe-style pipeline.

``parallel: {strategy: data, workers: N}`` starts N processes joined by torch.distributed (gloo on
CPU, NCCL on CUDA), meeting through a file store in the run's folder rather than a TCP port chosen
in advance (a job's sandbox lets its ranks bind ephemeral ports only: ``jobs/sandbox.py``). Each
builds the same network from the same seed, takes its slice of every batch (``Plan.shard``) and runs
the ordinary :func:`~modelport.training.loop.fit` around a ``DistributedDataParallel`` head, which
averages the gradients, so a step sees the whole batch as in one process. Rank 0 writes the
checkpoints and reports the events; a stop request is agreed on by all ranks (an all-reduce every 16
steps) so they stop at the same step. Resuming restores rank 0's checkpoint on every rank: weights,
optimizer and schedule exactly; the train loss/accuracy of an epoch interrupted mid-way count only
rank 0's share of the steps before the stop, and the dropout masks of all ranks follow rank 0's
generator from then on. Metrics match a single process within noise, not bit for bit (the batch is
split, so reductions run in another order).

``parallel: {strategy: model, stages: N}`` splits the layer list into N contiguous stages of about
equal parameter count, one per process. Each batch is cut into micro-batches that flow forward
through the stages (``send``/``recv`` of activations), then backward (gradients of activations),
then every stage steps its own optimizer: GPipe without re-materialization. Pipeline runs write
the final weights but no resumable checkpoints, and do not support early stopping or plateau
schedules (the spec is refused); l1/l2 apply per stage and clipping clips each stage's norm.

In both cases the parent process finishes the run exactly as a single-process run does (final
evaluation, ONNX export, manifest) from the weights the workers wrote. Workers receive the spec as
JSON and send events back over a multiprocessing queue; a dataset named by ``source: dataset`` is
resolved in the parent first, since the caller's callback cannot cross processes.
"""

from __future__ import annotations

import itertools
import json
import os
import queue as queue_module
import time
import uuid
from collections.abc import Callable, Sequence
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from modelport.errors import BadRequest, ModelportError
from modelport.training.callbacks import Event
from modelport.training.loop import Data, Plan, Position, TrainingCancelled, epoch_batches, fit
from modelport.training.losses import Objective
from modelport.training.optimizers import build_optimizer
from modelport.training.regularization import make_penalty
from modelport.training.schedules import apply_lr
from modelport.training.spec import TrainSpec

if TYPE_CHECKING:
    from modelport.training.run import TrainOutcome

STOP_POLL_STEPS = 16
_POLL_S = 0.1


def run_parallel(
    spec: TrainSpec,
    *,
    workdir: Path,
    report: Callable[[Event], None],
    should_stop: Callable[[], bool],
    resolve_dataset: Callable[[str], Path] | None,
) -> TrainOutcome:
    """Train ``spec`` in worker processes, then finish (evaluate, export) in this one."""
    from modelport.training import run

    spec = _resolved(spec, resolve_dataset)
    parallel = spec.train.parallel
    world = parallel.workers if parallel.strategy == "data" else parallel.stages
    with run._threads(spec):
        built = run.build(spec, None)  # spec, data and network problems surface here, before any process starts
        if parallel.strategy == "model":
            assert isinstance(built.head, nn.Sequential)
            partition(list(built.head), world)
        _spawn_and_supervise(spec, world, workdir, report, should_stop)
        plan = run.make_plan(built)
        if parallel.strategy == "data":
            pos, hooks = run.resume(plan, built, workdir, lambda e: None, lambda: False, save=False)
            return run.finish(built, plan, pos, hooks.best_weights, workdir, report)
        pos = _collect(built.model, workdir)
        return run.finish(built, plan, pos, None, workdir, report)


def _spawn_and_supervise(
    spec: TrainSpec, world: int, workdir: Path, report: Callable[[Event], None], should_stop: Callable[[], bool]
) -> None:
    """Start ``world`` worker processes and forward their events until they all exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    stop = ctx.Event()
    rendezvous = workdir / f"rendezvous-{uuid.uuid4().hex}"  # a file store: no fixed port to bind
    args = (world, str(rendezvous), spec.model_dump_json(by_alias=True), str(workdir), events, stop)
    procs = [ctx.Process(target=_worker, args=(rank, *args), daemon=True) for rank in range(world)]
    for proc in procs:
        proc.start()
    try:
        _supervise(procs, events, report, should_stop, stop)
    finally:
        rendezvous.unlink(missing_ok=True)


def _resolved(spec: TrainSpec, resolve_dataset: Callable[[str], Path] | None) -> TrainSpec:
    """The spec with a named dataset replaced by its path (workers cannot call the caller's callback)."""
    if spec.data.source != "dataset":
        return spec
    if resolve_dataset is None:
        raise BadRequest(message="this runner cannot resolve datasets by name; give data.path instead")
    path = resolve_dataset(str(spec.data.name))
    kind = spec.data.format or ("idx" if path.is_dir() else path.suffix.lower().lstrip(".").replace("pq", "parquet"))
    if kind not in ("idx", "npz", "csv", "parquet"):
        raise BadRequest(message=f"dataset {spec.data.name!r}: cannot tell its format; set data.format")
    data = spec.data.model_copy(update={"source": kind, "path": str(path), "name": None, "format": None})
    return spec.model_copy(update={"data": data})


def _supervise(
    procs: list[SpawnProcess], events: Any, report: Callable[[Event], None], should_stop: Callable[[], bool], stop: Any
) -> None:
    """Forward events until every worker exits; raise what the first failing worker reported."""
    outcome: dict[str, Any] = {}
    while True:
        got = _forward_one(events, report, stop, outcome)
        if not stop.is_set() and should_stop():
            stop.set()
        if not got and not any(p.is_alive() for p in procs):
            break
    for proc in procs:
        proc.join()
    if "failure" in outcome:
        raise BadRequest(message=str(outcome["failure"]))
    if outcome.get("cancelled"):
        raise TrainingCancelled
    codes = [p.exitcode for p in procs]
    if any(codes):
        raise BadRequest(message=f"a training worker died (exit codes {codes}); see the worker log")


def _forward_one(events: Any, report: Callable[[Event], None], stop: Any, outcome: dict[str, Any]) -> bool:
    """Handle one queued event (report it, or note a failure/cancellation); False when none came."""
    try:
        event = events.get(timeout=_POLL_S)
    except queue_module.Empty:
        return False
    if event["type"] == "_error":
        outcome.setdefault("failure", event["message"])
        stop.set()
    elif event["type"] == "_cancelled":
        outcome["cancelled"] = True
    else:
        report(event)
    return True


def _worker(rank: int, world: int, rendezvous: str, spec_json: str, workdir: str, events: Any, stop: Any) -> None:
    """One process of a parallel run: join the group, train, report through ``events``."""
    options = json.loads(spec_json)["train"]
    torch.set_num_threads(options.get("threads") or 1)  # N workers on the cores: one thread each by default
    cuda = torch.cuda.is_available() and options["device"] != "cpu"
    if cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        spec = TrainSpec.model_validate_json(spec_json)
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        if spec.train.parallel.strategy == "data":
            _data_parallel(spec, Path(workdir), rank, world, device, events, stop)
        else:
            _pipeline_stage(spec, Path(workdir), rank, world, device, events.put, _agreed(stop, device))
    except TrainingCancelled:
        if rank == 0:
            events.put({"type": "_cancelled"})
    except ModelportError as exc:
        events.put({"type": "_error", "message": exc.message})
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it as one error
        events.put({"type": "_error", "message": f"training worker {rank} failed: {type(exc).__name__}: {exc}"[:500]})
    finally:
        dist.destroy_process_group()


def _data_parallel(
    spec: TrainSpec, workdir: Path, rank: int, world: int, device: torch.device, events: Any, stop: Any
) -> None:
    from modelport.training import run

    built = run.build(spec, None, device=device)
    head = nn.parallel.DistributedDataParallel(built.head, device_ids=[device.index] if device.type == "cuda" else None)
    plan = run.make_plan(built, head=head, shard=(rank, world))
    plan.all_reduce = lambda t: dist.all_reduce(t)
    report: Callable[[Event], None] = events.put if rank == 0 else (lambda e: None)
    if rank == 0:
        report(
            {
                "type": "started",
                "epochs": spec.train.epochs,
                "device": str(device),
                "workers": world,
                "train_examples": int(built.data.x_train.shape[0]),
            }
        )
    pos, hooks = run.resume(plan, built, workdir, report, _agreed(stop, device), save=rank == 0)
    if pos.global_step == 0:
        torch.manual_seed(spec.train.seed + 7919 * rank)  # independent dropout masks per rank
    fit(plan, built.data, pos, hooks)
    dist.barrier()


def _agreed(stop: Any, device: torch.device) -> Callable[[], bool]:
    """A should_stop that every rank answers the same way at the same step (all-reduce every 16 steps)."""
    counter = itertools.count()

    def should_stop() -> bool:
        if next(counter) % STOP_POLL_STEPS:
            return False
        flag = torch.tensor([1.0 if stop.is_set() else 0.0], device=device)
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    return should_stop


def _pipeline_stage(
    spec: TrainSpec,
    workdir: Path,
    rank: int,
    world: int,
    device: torch.device,
    report: Callable[[Event], None],
    should_stop: Callable[[], bool],
) -> None:
    """Train this rank's stage of the layer list; the last rank measures and reports."""
    from modelport.training import run

    built = run.build(spec, None, device=device)
    assert isinstance(built.head, nn.Sequential)
    modules = list(built.head)
    bounds = partition(modules, world)
    stage = nn.Sequential(*modules[bounds[rank] : bounds[rank + 1]])
    shapes = _boundary_shapes(modules, bounds, built.input_shape, device)
    plan = run.make_plan(built)
    plan.model, plan.head = stage, stage
    plan.penalty = make_penalty(stage, l1=spec.train.regularization.l1, l2=spec.train.regularization.l2)
    params = list(stage.parameters())
    optimizer = build_optimizer(spec.train.optimizer, params) if params else None
    ring = _Ring(rank, world, shapes, device)
    history: dict[str, list[float]] = {}
    seconds = 0.0
    for epoch in range(spec.train.epochs):
        started = time.perf_counter()
        totals, lr = _stage_epoch(
            plan, optimizer, ring, built.data, epoch, should_stop, spec.train.parallel.micro_batches
        )
        seconds += time.perf_counter() - started
        metrics = _stage_epoch_metrics(ring, stage, built, totals, lr)
        for key, value in metrics.items():
            history.setdefault(key, []).append(value)
        if ring.last:
            validation = {k[4:]: v for k, v in metrics.items() if k.startswith("val_")}
            train = {k: v for k, v in metrics.items() if not k.startswith("val_") and k != "lr"}
            report(
                {
                    "type": "epoch",
                    "epoch": epoch + 1,
                    "epochs": spec.train.epochs,
                    "train": train,
                    "validation": validation,
                    "lr": lr,
                    "seconds": time.perf_counter() - started,
                }
            )
    _write_stage(stage, bounds[rank], workdir, rank, history if ring.last else None, seconds)
    dist.barrier()


def _stage_epoch(
    plan: Plan,
    optimizer: torch.optim.Optimizer | None,
    ring: _Ring,
    data: Data,
    epoch: int,
    should_stop: Callable[[], bool],
    micro_batches: int,
) -> tuple[torch.Tensor, float]:
    """One epoch of this stage: per batch, the rate, a stop check, the pipelined forward/backward, a step."""
    batches = epoch_batches(data.x_train.shape[0], plan, epoch, data.x_train.device)
    plan.head.train()
    totals = torch.zeros(3, dtype=torch.float64, device=data.x_train.device)  # loss sum, score sum, examples
    lr = 0.0
    for step, idx in enumerate(batches):
        if optimizer is not None:
            lr = apply_lr(optimizer, plan.lr_at(epoch + step / len(batches)))
        if should_stop():
            raise TrainingCancelled
        parts = torch.tensor_split(idx, min(micro_batches, idx.shape[0]))
        totals += ring.step(plan.head, parts, data, plan.objective)
        if plan.penalty is not None:
            torch.autograd.backward(plan.penalty())
        if optimizer is not None:
            if plan.clip_norm is not None:
                nn.utils.clip_grad_norm_(plan.head.parameters(), plan.clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return totals, lr


def partition(modules: Sequence[nn.Module], stages: int) -> list[int]:
    """Stage boundaries ``[0, b1, ..., len]``: contiguous, non-empty, about equal parameter counts.

    Each boundary is the cut whose parameter count before it is nearest ``k / stages`` of the total;
    on a tie the later cut wins, so an activation stays in the stage of the layer it follows.
    """
    if stages > len(modules):
        raise BadRequest(message=f"{stages} stages for a network of {len(modules)} modules; use fewer stages")
    before = list(itertools.accumulate((sum(p.numel() for p in m.parameters()) for m in modules), initial=0))
    bounds = [0]
    for k in range(1, stages):
        target = before[-1] * k / stages
        cuts = range(bounds[-1] + 1, len(modules) - (stages - k) + 1)
        bounds.append(min(cuts, key=lambda i: (abs(before[i] - target), -i)))
    return [*bounds, len(modules)]


def _boundary_shapes(
    modules: Sequence[nn.Module], bounds: list[int], input_shape: list[int], device: torch.device
) -> list[tuple[int, ...]]:
    """Per-example output shape of each stage (what crosses to the next process)."""
    shapes = []
    with torch.no_grad():
        h = torch.zeros((1, *input_shape), device=device)
        for start, end in itertools.pairwise(bounds):
            for module in modules[start:end]:
                h = module.eval()(h)
            shapes.append(tuple(h.shape[1:]))
    return shapes


class _Ring:
    """Blocking send/recv of activations (forward) and their gradients (backward) between stages.

    All forward traffic of a batch goes before all backward traffic, so a chain of blocking sends
    cannot wait on itself (GPipe's schedule).
    """

    def __init__(self, rank: int, world: int, shapes: list[tuple[int, ...]], device: torch.device) -> None:
        self.rank, self.world, self.shapes, self.device = rank, world, shapes, device
        self.first, self.last = rank == 0, rank == world - 1

    def forward(self, stage: nn.Module, x: torch.Tensor | None, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(stage input, stage output) for one micro-batch of ``n`` examples."""
        if x is None:
            x = torch.empty((n, *self.shapes[self.rank - 1]), device=self.device)
            dist.recv(x, src=self.rank - 1)
            x.requires_grad_()
        out = stage(x)
        if not self.last:
            dist.send(out.detach().contiguous(), dst=self.rank + 1)
        return x, out

    def step(self, stage: nn.Module, parts: Sequence[torch.Tensor], data: Data, objective: Objective) -> torch.Tensor:
        """Forward and backward of one batch; the last stage returns (loss sum, score sum, count)."""
        batch = sum(int(p.shape[0]) for p in parts)
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        flows = [self.forward(stage, data.x_train[p] if self.first else None, int(p.shape[0])) for p in parts]
        for (x, out), p in zip(flows, parts, strict=True):
            if self.last:
                loss = objective.loss(out, data.y_train[p])
                torch.autograd.backward(loss * (p.shape[0] / batch))
                totals += torch.stack(
                    [
                        loss.detach() * p.shape[0],
                        objective.score(out.detach(), data.y_train[p]),
                        torch.tensor(float(p.shape[0]), device=self.device),
                    ]
                ).double()
            else:
                grad = torch.empty_like(out)
                dist.recv(grad, src=self.rank + 1)
                torch.autograd.backward(out, grad)
            if not self.first:
                assert x.grad is not None
                dist.send(x.grad.contiguous(), dst=self.rank - 1)
        return totals

    @torch.no_grad()
    def evaluate(self, stage: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective) -> torch.Tensor:
        """(loss sum, score sum, count) over ``x``, forward only; valid on the last stage."""
        stage.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        for start in range(0, x.shape[0], 4096):
            n = min(4096, x.shape[0] - start)
            _, out = self.forward(stage, x[start : start + n] if self.first else None, n)
            if self.last:
                yb = y[start : start + n]
                totals += torch.stack(
                    [
                        objective.loss(out, yb).double() * n,
                        objective.score(out, yb).double(),
                        torch.tensor(float(n), dtype=torch.float64, device=self.device),
                    ]
                )
        stage.train()
        return totals


def _stage_epoch_metrics(
    ring: _Ring, stage: nn.Module, built: Any, totals: torch.Tensor, lr: float
) -> dict[str, float]:
    """Epoch metrics measured on the last stage and broadcast, so every rank records the same."""
    objective: Objective = built.objective
    values = [totals]
    if built.data.x_val is not None:
        values.append(ring.evaluate(stage, built.data.x_val, built.data.y_val, objective))
    stacked = torch.cat(values)
    dist.broadcast(stacked, src=ring.world - 1)
    loss, score, n = stacked[:3].tolist()
    metrics = {"loss": loss / max(n, 1), objective.metric: score / max(n, 1)}
    if stacked.shape[0] > 3:
        loss, score, n = stacked[3:].tolist()
        metrics.update({"val_loss": loss / max(n, 1), f"val_{objective.metric}": score / max(n, 1)})
    return {**metrics, "lr": lr}


def _write_stage(
    stage: nn.Module, offset: int, workdir: Path, rank: int, history: dict[str, list[float]] | None, seconds: float
) -> None:
    """Stage weights under the whole network's keys (``<module index>.<name>``), plus the history."""
    folder = workdir / "pipeline"
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in stage.state_dict().items():
        index, _, name = key.partition(".")
        state[f"{int(index) + offset}.{name}"] = value.detach().cpu().contiguous()
    safetensors.torch.save_file(state, str(folder / f"stage-{rank}.safetensors"))
    if history is not None:
        record = {"history": history, "train_seconds": seconds}
        (folder / "position.json").write_text(json.dumps(record), encoding="utf-8")


def _collect(model: nn.Module, workdir: Path) -> Position:
    """Load the stages' weights into the whole network; the position the last stage recorded."""
    folder = workdir / "pipeline"
    state: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("stage-*.safetensors")):
        state.update(safetensors.torch.load_file(str(path)))
    model.load_state_dict(state, strict=True)
    record = json.loads((folder / "position.json").read_text(encoding="utf-8"))
    epochs = len(record["history"].get("loss", []))
    return Position(epoch=epochs, history=record["history"], train_seconds=record["train_seconds"])
