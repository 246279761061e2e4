"""The training loop: :func:`fit` reads top-down in the order of a training step (nanoGPT style).

Everything a step needs (network, loss, optimizer, schedule, penalty, hooks) is built before the
loop by run.py, so the loop only sequences it: set the rate; honour a stop request or a periodic
checkpoint; forward and loss; backward, clip, step, zero_grad; log. At the end of an epoch the
callbacks run in a fixed order: evaluate, record, plateau, early stopping, checkpoint, report.

Speed matters here (the bench holds ``fit`` to 1.1x a hand-written loop): the data is one
contiguous tensor indexed by a permutation, running sums stay on the device, and the only syncs are
throttled progress events and checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from modelport.errors import BadRequest
from modelport.training.callbacks import EarlyStopping, ProgressEvents, Report
from modelport.training.losses import Objective
from modelport.training.schedules import LrFn, ReduceOnPlateau, apply_lr, batch_size_at

EVAL_BATCH = 4096


class TrainingCancelled(Exception):
    """``should_stop`` asked the run to stop; a checkpoint of the current position was saved."""


@dataclass
class Position:
    """Where training is and what it has measured: the JSON half of a checkpoint."""

    epoch: int = 0
    step: int = 0
    """Batches done in the current epoch."""
    global_step: int = 0
    loss_sum: float = 0.0
    score_sum: float = 0.0
    seen: int = 0
    lr_scale: float = 1.0
    history: dict[str, list[float]] = field(default_factory=dict)
    train_seconds: float = 0.0
    stopped_early: bool = False
    plateau: dict[str, Any] | None = None
    stopping: dict[str, Any] | None = None
    live: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    """The running sums while an epoch runs: device tensors, read only when a checkpoint is saved."""

    def state(self) -> dict[str, Any]:
        """JSON-ready state; reads the running sums (a sync) if an epoch is in progress."""
        if self.live is not None:
            self.loss_sum, self.score_sum = float(self.live[0].item()), float(self.live[1].item())
        return {k: v for k, v in asdict(self).items() if k != "live"}


@dataclass(frozen=True)
class Data:
    """Tensors on the training device: x (N, *input_shape) float32; y (N,) int64 or (N, k) float32."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None


@dataclass
class Plan:
    """What :func:`fit` runs, built before the loop by run.py."""

    model: nn.Module
    """The whole network (what is exported); its parameters are the ones optimized."""
    head: nn.Module
    """What the loss sees: the network, without a final softmax/sigmoid, maybe wrapped in DDP."""
    objective: Objective
    optimizer: torch.optim.Optimizer
    lr_at: LrFn
    epochs: int
    batch_size: int | dict[int, int]
    seed: int
    penalty: Callable[[], torch.Tensor] | None = None
    clip_norm: float | None = None
    plateau: ReduceOnPlateau | None = None
    plateau_metric: str = "val_loss"
    stopping: EarlyStopping | None = None
    shard: tuple[int, int] = (0, 1)
    """(rank, world size): this process takes its slice of every batch (data parallelism)."""
    all_reduce: Callable[[torch.Tensor], None] | None = None
    """Sums a tensor over the processes in place (data parallelism: epoch metrics cover every shard)."""


@dataclass
class Hooks:
    """The loop's side effects: checkpoints, stop requests, events. One object, a fixed call order."""

    report: Report
    should_stop: Callable[[], bool]
    save: Callable[[Plan, Position], None]
    every_steps: int | None = None
    progress: ProgressEvents | None = None
    best_weights: dict[str, torch.Tensor] | None = None
    last_saved: int = -1
    """Global step of the newest checkpoint, so the same position is never written twice."""

    def before_step(self, plan: Plan, pos: Position) -> None:
        """Stop (after saving) when asked; save every N steps. Runs before the weights change."""
        if self.should_stop():
            self.checkpoint(plan, pos)
            raise TrainingCancelled
        if self.every_steps and pos.global_step % self.every_steps == 0:
            self.checkpoint(plan, pos)

    def checkpoint(self, plan: Plan, pos: Position) -> None:
        if pos.global_step != self.last_saved:
            self.save(plan, pos)
            self.last_saved = pos.global_step
            self.report({"type": "checkpoint", "epoch": pos.epoch, "step": pos.global_step})


def fit(plan: Plan, data: Data, pos: Position, hooks: Hooks) -> Position:
    """Train from ``pos`` until ``plan.epochs`` or early stopping; returns the final position."""
    device = data.x_train.device
    running_loss = torch.tensor(pos.loss_sum, dtype=torch.float32, device=device)
    running_score = torch.tensor(pos.score_sum, dtype=torch.float32, device=device)
    pos.live = (running_loss, running_score)
    while pos.epoch < plan.epochs and not pos.stopped_early:
        batches = epoch_batches(data.x_train.shape[0], plan, pos.epoch, device)
        steps = len(batches)
        plan.head.train()
        started = time.perf_counter()
        lr = plan.lr_at(pos.epoch) * pos.lr_scale  # the rate reported if no step is left in this epoch
        if hooks.progress:
            hooks.progress.start_epoch(pos.step)
        for step in range(pos.step, steps):
            # 1. learning rate at this position, in fractional epochs
            lr = apply_lr(plan.optimizer, plan.lr_at(pos.epoch + step / steps) * pos.lr_scale)
            # 2. stop request or periodic checkpoint, before the weights change
            hooks.before_step(plan, pos)
            # 3. forward and loss: (B, *input_shape) -> (B, outputs)
            idx = batches[step]
            xb, yb = data.x_train[idx], data.y_train[idx]
            out = plan.head(xb)
            loss = plan.objective.loss(out, yb)
            total = loss + plan.penalty() if plan.penalty is not None else loss
            # 4. backward, clip, step, zero_grad
            torch.autograd.backward(total)
            if plan.clip_norm is not None:
                nn.utils.clip_grad_norm_(plan.model.parameters(), plan.clip_norm)
            plan.optimizer.step()
            plan.optimizer.zero_grad(set_to_none=True)
            # 5. log: sums stay on the device (no sync); events are throttled
            batch = idx.shape[0]
            running_loss.add_(loss.detach(), alpha=batch)
            running_score.add_(plan.objective.score(out.detach(), yb))
            pos.seen += batch
            pos.step, pos.global_step = step + 1, pos.global_step + 1
            if hooks.progress:
                hooks.progress.step(epoch=pos.epoch, step=step + 1, steps=steps, loss=loss, lr=lr, batch=batch)
        pos.train_seconds += time.perf_counter() - started
        totals = torch.stack([running_loss, running_score, torch.tensor(float(pos.seen), device=device)]).double()
        if plan.all_reduce is not None:
            plan.all_reduce(totals)
        loss_sum, score_sum, seen = totals.tolist()
        train = {"loss": loss_sum / max(seen, 1), plan.objective.metric: score_sum / max(seen, 1)}
        running_loss.zero_()
        running_score.zero_()
        end_epoch(plan, data, pos, hooks, train=train, lr=lr, seconds=time.perf_counter() - started)
    pos.live = None
    return pos


def end_epoch(
    plan: Plan, data: Data, pos: Position, hooks: Hooks, *, train: dict[str, float], lr: float, seconds: float
) -> None:
    """The epoch-end callbacks, in order: evaluate, record, plateau, early stopping, checkpoint, report."""
    validation = {}
    if data.x_val is not None and data.y_val is not None:
        validation = evaluate(plan.head, plan.objective, data.x_val, data.y_val)
    metrics = {**train, **{f"val_{k}": v for k, v in validation.items()}, "lr": lr}
    for key, value in metrics.items():
        pos.history.setdefault(key, []).append(value)
    if plan.plateau is not None:
        pos.lr_scale = plan.plateau.update(measured(metrics, plan.plateau_metric, "train.schedule.metric"))
        pos.plateau = plan.plateau.state()
    if plan.stopping is not None:
        measured(metrics, plan.stopping.metric, "train.early_stopping.metric")
        improved, stop = plan.stopping.update(pos.epoch, metrics)
        if improved:
            hooks.best_weights = {k: v.detach().clone() for k, v in plan.model.state_dict().items()}
        pos.stopped_early = stop
        pos.stopping = plan.stopping.state()
    pos.epoch, pos.step, pos.loss_sum, pos.score_sum, pos.seen = pos.epoch + 1, 0, 0.0, 0.0, 0
    hooks.checkpoint(plan, pos)
    hooks.report(
        {
            "type": "epoch",
            "epoch": pos.epoch,
            "epochs": plan.epochs,
            "train": train,
            "validation": validation,
            "lr": lr,
            "seconds": seconds,
        }
    )


def measured(metrics: dict[str, float], name: str, field: str) -> float:
    """``metrics[name]``, or a BadRequest naming what this run measures (e.g. no accuracy for regression)."""
    if name not in metrics:
        known = ", ".join(k for k in metrics if k != "lr")
        raise BadRequest(message=f"{field}: {name!r} is not measured by this run (it measures {known})")
    return metrics[name]


def epoch_batches(n: int, plan: Plan, epoch: int, device: torch.device) -> list[torch.Tensor]:
    """This process's index batches for ``epoch``: a permutation that depends only on (seed, epoch).

    Deriving each epoch's order from the seed, not from a generator carried along, is what lets a
    run resumed mid-epoch see exactly the batches the interrupted run would have seen.
    """
    size = min(batch_size_at(epoch, plan.batch_size), n)
    generator = torch.Generator().manual_seed(plan.seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator).to(device)
    batches = list(torch.split(order, size))
    rank, world = plan.shard
    if world > 1:
        batches = [b.tensor_split(world)[rank] for b in batches if b.shape[0] >= world]
    return batches


@torch.no_grad()
def evaluate(net: nn.Module, objective: Objective, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Mean loss and accuracy (or mae) over ``x`` in eval mode, in large batches."""
    was_training = net.training
    net.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    score_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], EVAL_BATCH):
        xb, yb = x[start : start + EVAL_BATCH], y[start : start + EVAL_BATCH]
        out = net(xb)
        loss_sum += objective.loss(out, yb).double() * xb.shape[0]
        score_sum += objective.score(out, yb).double()
    net.train(was_training)
    n = max(x.shape[0], 1)
    return {"loss": loss_sum.item() / n, objective.metric: score_sum.item() / n}


@torch.no_grad()
def confusion_matrix(
    head: nn.Module, objective: Objective, x: torch.Tensor, y: torch.Tensor, classes: int
) -> list[list[int]]:
    """rows: true class, columns: predicted class (argmax; threshold 0.5 for one binary output)."""
    head.eval()
    out = torch.cat([head(x[i : i + 4096]) for i in range(0, x.shape[0], 4096)])
    if out.shape[-1] == 1:
        threshold = 0.0 if objective.outputs == "logits" or objective.strip_final else 0.5
        predicted = (out[:, 0] > threshold).long()
    else:
        predicted = out.argmax(dim=-1)
    truth = y.argmax(dim=-1) if y.dim() > 1 and y.shape[-1] > 1 else y.reshape(-1).long()
    matrix = torch.bincount(truth * classes + predicted, minlength=classes * classes).reshape(classes, classes)
    return [[int(v) for v in row] for row in matrix.cpu().tolist()]
