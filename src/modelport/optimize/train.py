"""Fine-tuning and distillation runs: the training package's loop, with an optimize step's options.

The loop (:func:`modelport.training.loop.fit`) is the one training jobs use, so progress events,
cancellation, throughput and checkpoints are the same: with a ``checkpoints`` folder, a checkpoint is
written after every epoch (and when the job is asked to stop), and a run started again after a crash
or a shutdown resumes from the newest one, as a training job does. A checkpoint of other options
(``fingerprint``) is ignored, never loaded into the wrong run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from modelport.training import checkpoint
from modelport.training.callbacks import Event, ProgressEvents
from modelport.training.loop import Data, Hooks, Plan, Position, fit
from modelport.training.losses import Objective
from modelport.training.optimizers import base_lr, build_optimizer
from modelport.training.regularization import make_penalty
from modelport.training.schedules import make_lr_fn
from modelport.training.spec import OptimizerSpec, ScheduleSpec


@dataclass(frozen=True)
class Run:
    """How long and with what to train."""

    epochs: int
    optimizer: OptimizerSpec
    batch_size: int | dict[int, int]
    seed: int
    schedule: ScheduleSpec | None = None
    l1: float = 0.0
    l2: float = 0.0
    clip_norm: float | None = None


def train(
    model: nn.Module,
    head: nn.Module,
    objective: Objective,
    data: Data,
    run: Run,
    *,
    report: Callable[[Event], None],
    should_stop: Callable[[], bool],
    checkpoints: Path | None = None,
    fingerprint: str = "",
) -> Position:
    """Train ``model`` in place (through ``head``, which the loss sees); raises TrainingCancelled."""
    torch.manual_seed(run.seed)
    plan = Plan(
        model=model,
        head=head,
        objective=objective,
        optimizer=build_optimizer(run.optimizer, model.parameters()),
        lr_at=make_lr_fn(run.schedule, base_lr=base_lr(run.optimizer), total=float(run.epochs)),
        epochs=run.epochs,
        batch_size=run.batch_size,
        seed=run.seed,
        penalty=make_penalty(model, l1=run.l1, l2=run.l2),
        clip_norm=run.clip_norm,
    )

    def save(plan: Plan, pos: Position) -> None:
        if checkpoints is not None:
            state = {"spec": fingerprint, "position": pos.state(), "rng": checkpoint.rng_state()}
            checkpoint.save(
                checkpoints, model=plan.model.state_dict(), optimizer=plan.optimizer.state_dict(), state=state
            )

    hooks = Hooks(report=report, should_stop=should_stop, save=save, progress=ProgressEvents(report, epochs=run.epochs))
    pos = _resume(plan, hooks, checkpoints, fingerprint, report)
    pos = fit(plan, data, pos, hooks)
    model.eval()
    return pos


def _resume(
    plan: Plan, hooks: Hooks, folder: Path | None, fingerprint: str, report: Callable[[Event], None]
) -> Position:
    """The position of the newest checkpoint of this run in ``folder`` (its weights loaded), else the start."""
    latest = checkpoint.latest(folder) if folder is not None else None
    if latest is None:
        return Position()
    record = checkpoint.load(latest)
    if record.state.get("spec") != fingerprint:
        report({"type": "log", "message": "a checkpoint of other options was left aside; starting over"})
        return Position()
    plan.model.load_state_dict(record.model, strict=True)
    plan.optimizer.load_state_dict(record.optimizer)
    checkpoint.set_rng_state(record.state["rng"])
    pos = Position(**record.state["position"])
    hooks.last_saved = pos.global_step
    report({"type": "log", "message": f"resumed at epoch {pos.epoch + 1}, step {pos.step}"})
    return pos


@dataclass(frozen=True)
class DistillObjective(Objective):
    """Targets are rows ``[label, teacher logits...]``: (B, 1 + classes) float32.

    loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, label); the T^2 keeps
    the soft term's gradients on the scale of the hard term's (Hinton et al. 2015, section 2).
    """

    temperature: float = 4.0
    alpha: float = 0.9

    def correct(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (out.argmax(dim=-1) == y[:, 0].long()).sum()  # (B, C) vs (B,)


def distill_objective(*, strip_final: bool, temperature: float, alpha: float) -> DistillObjective:
    t = temperature

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels, teacher = y[:, 0].long(), y[:, 1:]  # (B,), (B, C)
        soft = F.kl_div(
            F.log_softmax(out / t, dim=-1), F.log_softmax(teacher / t, dim=-1), reduction="batchmean", log_target=True
        )
        hard = F.cross_entropy(out, labels)
        return alpha * t * t * soft + (1.0 - alpha) * hard

    return DistillObjective(
        loss=loss,
        strip_final=strip_final,
        outputs="probabilities" if strip_final else "logits",
        targets="class_index",
        temperature=t,
        alpha=alpha,
    )
