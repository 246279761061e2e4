"""Training benchmark: Modelport's ``run_training`` against a plain hand-written PyTorch loop on MNIST.

    .venv/bin/python bench/train_mnist.py [--data ../shared/data/mnist] [--epochs 10] [--optimizers]

Both train the mission's example (784 -> dense 64 relu -> dense 10 softmax, Adam 1e-3, batch 32,
inputs / 255) on the 60,000 training images, one thread, and are tested on the 10,000 test images.
The plain loop is what one would write by hand: one float32 tensor, a ``randperm`` per epoch, logits
with ``F.cross_entropy``, ``zero_grad/backward/step``. Runs alternate (plain, Modelport, plain, ...)
so that drift of the machine hits both. ``--optimizers`` adds the 10-epoch test accuracy of every
optimizer with its default learning rate (SGD with momentum 0.9). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from modelport.training.data.idx import load_mnist
from modelport.training.optimizers import DEFAULT_LR
from modelport.training.run import run_training
from modelport.training.spec import load_spec

OPTIMIZERS: list[dict[str, Any]] = [
    {"name": "sgd", "momentum": 0.9},
    {"name": "adagrad"},
    {"name": "adadelta"},
    {"name": "rmsprop"},
    {"name": "adam"},
    {"name": "adamw"},
]


def plain_loop(data: Path, epochs: int, seed: int) -> tuple[list[float], float]:
    """(seconds per epoch, test accuracy) of the hand-written baseline."""
    torch.manual_seed(seed)
    x, y = load_mnist(data, "train")
    xt, yt = load_mnist(data, "test")
    xs = torch.from_numpy(x.reshape(-1, 784).astype(np.float32) / 255.0)  # (60000, 784)
    ys = torch.from_numpy(y.astype(np.int64))
    model = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))  # logits; softmax at serving
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        for idx in torch.randperm(len(xs), generator=generator).split(32):
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - started)
    with torch.no_grad():
        logits = model(torch.from_numpy(xt.reshape(-1, 784).astype(np.float32) / 255.0))
    accuracy = float((logits.argmax(1) == torch.from_numpy(yt.astype(np.int64))).float().mean())
    return times, accuracy


def modelport_run(
    data: Path, epochs: int, seed: int, optimizer: dict[str, Any], parallel: dict[str, Any] | None = None
) -> tuple[list[float], float]:
    """(seconds per epoch, test accuracy) of ``run_training`` on the mission's spec."""
    spec = load_spec(
        {
            "name": "mnist-mlp",
            "data": {"source": "mnist", "path": str(data), "validation_split": 0.0, "preprocess": [{"scale": 1 / 255}]},
            "model": {"layers": [{"dense": 64, "activation": "relu"}, {"dense": 10, "activation": "softmax"}]},
            "train": {
                "optimizer": optimizer,
                "batch_size": 32,
                "epochs": epochs,
                "seed": seed,
                "device": "cpu",
                **({"parallel": parallel} if parallel else {}),
            },
        }
    )
    times: list[float] = []

    def report(event: dict[str, Any]) -> None:
        if event["type"] == "epoch":
            times.append(event["seconds"])

    with tempfile.TemporaryDirectory() as workdir:
        outcome = run_training(spec, workdir=Path(workdir), report=report)
    return times, float(outcome.metrics["test_accuracy"])


def speed_table(data: Path, epochs: int, repeats: int) -> list[str]:
    plain_times: list[float] = []
    ours_times: list[float] = []
    rows = []
    for seed in range(repeats):
        p_times, p_acc = plain_loop(data, epochs, seed)
        m_times, m_acc = modelport_run(data, epochs, seed, {"name": "adam", "lr": 1e-3})
        plain_times += p_times
        ours_times += m_times
        rows.append(
            f"| {seed} | {p_acc:.2%} | {m_acc:.2%} | {statistics.median(p_times):.3f} | "
            f"{statistics.median(m_times):.3f} | {statistics.median(m_times) / statistics.median(p_times):.3f} |"
        )
    ratio = statistics.median(ours_times) / statistics.median(plain_times)
    return [
        f"Adam 1e-3, batch 32, {epochs} epochs, 60,000 training / 10,000 test images, torch threads 1.",
        "",
        "| seed | plain loop test acc | Modelport test acc | plain s/epoch (median) | Modelport s/epoch | ratio |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Median epoch time over all runs: plain {statistics.median(plain_times):.3f} s, Modelport "
        f"{statistics.median(ours_times):.3f} s, ratio **{ratio:.3f}** (target <= 1.10).",
    ]


def parallel_table(data: Path, epochs: int) -> list[str]:
    """The same spec through DDP with 2 worker processes, against one process, in the same run."""
    single_times, single_acc = modelport_run(data, epochs, 0, {"name": "adam", "lr": 1e-3})
    ddp_times, ddp_acc = modelport_run(
        data, epochs, 0, {"name": "adam", "lr": 1e-3}, {"strategy": "data", "workers": 2}
    )
    single, ddp = statistics.median(single_times), statistics.median(ddp_times)
    return [
        "| run | test accuracy | s/epoch (median) | ratio to one process |",
        "| --- | --- | --- | --- |",
        f"| one process | {single_acc:.2%} | {single:.3f} | 1.000 |",
        f"| data parallel, 2 workers (gloo) | {ddp_acc:.2%} | {ddp:.3f} | {ddp / single:.3f} |",
    ]


def optimizer_table(data: Path, epochs: int) -> list[str]:
    rows = ["| optimizer | default lr | test accuracy | s/epoch |", "| --- | --- | --- | --- |"]
    for optimizer in OPTIMIZERS:
        times, accuracy = modelport_run(data, epochs, 0, optimizer)
        label = optimizer["name"] + (" (momentum 0.9)" if "momentum" in optimizer else "")
        rows.append(
            f"| {label} | {DEFAULT_LR[optimizer['name']]:g} | {accuracy:.2%} | {statistics.median(times):.3f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mnist"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="seeds for the speed comparison")
    parser.add_argument("--optimizers", action="store_true", help="also the per-optimizer accuracy table")
    parser.add_argument("--parallel", action="store_true", help="also DDP with 2 workers against one process")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same for both; run_training picks 1 for small MLPs too
    print("## Training\n")
    print("\n".join(speed_table(args.data, args.epochs, args.repeats)))
    if args.parallel:
        print(f"\nThe same spec through `parallel: {{strategy: data, workers: 2}}` ({args.epochs} epochs):\n")
        print("\n".join(parallel_table(args.data, args.epochs)))
    if args.optimizers:
        print(f"\nEach optimizer with only its name given ({args.epochs} epochs, batch 32, seed 0):\n")
        print("\n".join(optimizer_table(args.data, args.epochs)))


if __name__ == "__main__":
    main()
