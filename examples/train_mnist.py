"""Train the mission's network (784 -> Dense 64 relu -> Dense 10 softmax) for one epoch and save ONNX.

    python examples/train_mnist.py [--data ../shared/data/mnist] [--out examples/out] [--epochs 1]

Reads MNIST from the IDX files when the folder exists, else scikit-learn's 8x8 digits (upscaled to
28x28, so the same network and the same upload commands work anywhere). Writes:
  out/mnist-mlp.onnx       the model, inputs (N, 784) float32 in [0, 1], outputs softmax probabilities
  out/manifest.json        what to upload with it: raw pixels are scaled by 1/255, argmax -> label
  out/sample.json          {"inputs": [784 raw pixels]} of one test image, and its true label
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelport.training.data.idx import load_mnist


def load_data(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Raw pixels 0..255 as float32 (N, 784) and int64 labels, for train and test."""
    if folder.is_dir():
        xtr, ytr = load_mnist(folder, "train")
        xte, yte = load_mnist(folder, "test")
        source = "mnist"
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        # 8x8 images with values 0..16 -> 28x28 with 0..255 (nearest-neighbour upscale, padded).
        img = digits.images * (255.0 / 16.0)
        big = np.kron(img, np.ones((3, 3)))  # (N, 24, 24)
        big = np.pad(big, ((0, 0), (2, 2), (2, 2)))
        rng = np.random.default_rng(0)
        order = rng.permutation(len(big))
        big, y = big[order], digits.target[order]
        cut = int(0.8 * len(big))
        xtr, ytr, xte, yte = big[:cut], y[:cut], big[cut:], y[cut:]
        source = "sklearn-digits"
    flat = lambda a: a.reshape(len(a), 784).astype(np.float32)  # noqa: E731
    return flat(xtr), ytr.astype(np.int64), flat(xte), yte.astype(np.int64), source


def build() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10), nn.Softmax(dim=-1))


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xs, ys = torch.from_numpy(x / 255.0), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(xs), generator=gen).split(32):
            probs = model(xs[idx])  # (B, 10), softmax outputs as in the mission's Keras model
            loss = nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mnist"))
    parser.add_argument("--out", type=Path, default=Path("examples/out"))
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a 784-64-10 MLP is far too small to gain from threads; they only contend
    xtr, ytr, xte, yte, source = load_data(args.data)
    model = build()
    started = time.perf_counter()
    train(model, xtr, ytr, args.epochs)
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(xte / 255.0)).argmax(1).numpy() == yte).mean())
    args.out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (torch.zeros(1, 784),),
        str(args.out / "mnist-mlp.onnx"),
        dynamo=False,
        input_names=["input"],
        output_names=["probabilities"],
        dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
    )
    manifest = {
        "description": f"784-64-10 MLP, {args.epochs} epoch(s) of Adam on {source}",
        "preprocess": [{"scale": 1 / 255}],
        "postprocess": [{"argmax": True}],
        "labels": [str(i) for i in range(10)],
        "metrics": {"test_accuracy": round(acc, 4), "dataset": source},
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    sample = {"inputs": xte[0].astype(int).tolist()}
    (args.out / "sample.json").write_text(json.dumps(sample))
    print(
        f"trained on {source} ({len(xtr)} images) in {time.perf_counter() - started:.1f}s; "
        f"test accuracy {acc:.4f}; true label of sample.json: {int(yte[0])}"
    )
    print(f"wrote {args.out / 'mnist-mlp.onnx'}, {args.out / 'manifest.json'}, {args.out / 'sample.json'}")


if __name__ == "__main__":
    main()
