"""Reproduce the optimization papers' MNIST tables with Modelport's own jobs, and check the floors.

Every figure comes from a real job on the real registry (train / optimize jobs submitted with
``jobs.queue.submit`` and run by an in-process ``Worker``), and every compared figure from the
version reports those jobs computed. Prints a markdown table with the published figure, the
measured one and the floor, and writes the raw reports as JSON.

    .venv/bin/python bench/paper_tables.py                      # all rows, full MNIST (~30 min, 2 cores)
    .venv/bin/python bench/paper_tables.py --rows int8,int4     # some rows
    .venv/bin/python bench/paper_tables.py --quick              # a smoke run on 5,000 images
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.api.app import create_app
from modelport.auth.principals import Principal
from modelport.config import Settings
from modelport.jobs import queue
from modelport.jobs.worker import Worker
from modelport.registry import versions

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
ADMIN = Principal(name="admin", role="admin")
LENET = [{"dense": 300, "activation": "relu"}, {"dense": 100, "activation": "relu"}, {"dense": 10}]
MISSION = [{"dense": 64, "activation": "relu"}, {"dense": 10, "activation": "softmax"}]
ROWS = ("int8", "int4", "han", "deep_compression", "mission", "hinton")


@dataclass
class Bench:
    app: Any
    worker: Worker
    quick: bool

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"source": "mnist", "path": str(MNIST), "validation_split": 0.0}
        if self.quick:
            data.update(max_samples=5000, max_test_samples=2000)
        return data

    def run(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        ctx = self.app.state.ctx
        job = queue.submit(ctx.db, ctx.settings, ADMIN, kind, spec)
        started = time.perf_counter()
        while self.worker.step():
            pass
        done = queue.get_job(ctx.db, ADMIN, job.id)
        if done.status != "succeeded":
            raise SystemExit(f"{kind} job failed: {done.error}")
        print(f"  {kind} job done in {time.perf_counter() - started:.0f}s: {_brief(done.result)}", flush=True)
        result: dict[str, Any] = done.result or {}
        return result

    def train(
        self,
        name: str,
        layers: list[Any],
        *,
        epochs: int,
        batch: int,
        dropout: float | None = None,
        weight_decay: float | None = None,
    ) -> str:
        if self.quick:
            epochs = min(epochs, 2)
        train: dict[str, Any] = {
            "epochs": epochs,
            "batch_size": batch,
            "optimizer": {"name": "adam", "lr": 0.001, **({"weight_decay": weight_decay} if weight_decay else {})},
            "seed": 0,
        }
        if dropout:
            train["regularization"] = {"dropout": dropout}
        spec = {
            "name": name,
            "data": {**self.data, "preprocess": [{"scale": 1 / 255}]},
            "model": {"layers": layers},
            "train": train,
            "register": {"model": name},
        }
        result = self.run("train", spec)
        return f"{result['model']}:{result['version']}"

    def optimize(self, source: str, steps: list[Any], model: str) -> list[dict[str, Any]]:
        spec = {"source": source, "data": self.data, "steps": steps, "register": {"model": model}}
        result = self.run("optimize", spec)
        ctx = self.app.state.ctx
        out = []
        for ref in result["versions"]:
            name, number = ref.split(":")
            out.append(versions.report_of(ctx.db, ADMIN, name, int(number)))
        return out


def _brief(result: Any) -> str:
    if not isinstance(result, dict):
        return ""
    if "versions" in result:
        return ", ".join(result["versions"])
    metrics = result.get("metrics") or {}
    return f"{result.get('model')}:{result.get('version')} test_accuracy {metrics.get('test_accuracy')}"


def _figure(report: dict[str, Any], key: str, field: str = "value") -> float:
    value = report["figures"][key][field]
    return float(value)


def _error_pct(report: dict[str, Any], field: str = "value") -> float:
    return 100.0 * (1.0 - _figure(report, "accuracy", field))


def _finetune(epochs: int, quick: bool) -> dict[str, Any]:
    """Adam from 5e-4 with weight decay (Han et al. retrain with L2 too) and a cosine decay.

    Measured with the same components outside the job system: a flat Adam 1e-4 left a 90%-pruned
    LeNet 0.28 point above its parent (1.88% -> 2.16%); Adam 1e-3 + cosine reached 1.80% at 90% and
    2.11% at 95%; this recipe on a parent trained with weight decay reached 1.69% and 1.59% (parent 1.90%).
    """
    options = {"name": "adam", "lr": 0.0005, "weight_decay": 0.0001}
    return {
        "finetune": {
            "epochs": min(epochs, 1) if quick else epochs,
            "optimizer": options,
            "schedule": {"name": "cosine"},
        }
    }


# -- the rows ----------------------------------------------------------------------------------------
def row_mission(b: Bench) -> dict[str, Any]:
    parent = b.train("mission-mlp", MISSION, epochs=10, batch=32)
    (quant,) = b.optimize(parent, [{"quantize": {"method": "int8_static"}}], "mission-mlp")
    accuracy = 100.0 * _figure(quant, "accuracy", "parent")
    delta = abs(quant["figures"]["accuracy"]["delta_points"])
    return {
        "reference": "The mission's example (784-64-10, Adam, batch 32, 10 epochs)",
        "published": "about 97%",
        "measured": f"{accuracy:.2f}% ({parent}); int8 child {100 * _figure(quant, 'accuracy'):.2f}% ({delta:.2f} pt)",
        "floor": ">= 97.3%; int8 child within 0.1 point",
        "met": accuracy >= 97.3 and delta <= 0.1,
        "reports": [quant],
    }


def lenet(b: Bench, cache: dict[str, str]) -> str:
    if "lenet" not in cache:
        cache["lenet"] = b.train("lenet-300-100", LENET, epochs=20, batch=128, weight_decay=0.0001)
    return cache["lenet"]


def row_han(b: Bench, cache: dict[str, str]) -> dict[str, Any]:
    parent = lenet(b, cache)
    steps = [
        {"prune": {"method": "magnitude", "sparsity": [0.5, 0.8, 0.9], "scope": "global", **_finetune(3, b.quick)}},
        _finetune(10, b.quick),
    ]
    pruned, tuned = b.optimize(parent, steps, "lenet-300-100")
    err = _error_pct(tuned)
    base_err = _error_pct(pruned, "parent")
    kept = _figure(tuned, "nonzero_parameters") / _figure(tuned, "parameters")
    return {
        "reference": 'Han et al. 2015, "Learning both Weights and Connections", Table 1',
        "published": "1.64% -> 1.59% error with 12x fewer weights",
        "measured": f"{base_err:.2f}% -> {err:.2f}% error with {1 / kept:.1f}x fewer weights",
        "floor": "magnitude-pruned to 90% + fine-tuned: error within 0.10 point of its dense parent",
        "met": err - base_err <= 0.10,
        "reports": [pruned, tuned],
    }


def row_deep_compression(b: Bench, cache: dict[str, str]) -> dict[str, Any]:
    parent = lenet(b, cache)
    steps = [
        {
            "prune": {
                "method": "magnitude",
                "sparsity": [0.5, 0.8, 0.9, 0.95],
                "scope": "global",
                **_finetune(3, b.quick),
            }
        },
        _finetune(10, b.quick),
        {"quantize": {"method": "int8_dynamic", "storage": "compressed"}},
    ]
    reports = b.optimize(parent, steps, "lenet-300-100")
    first, last = reports[0], reports[-1]
    parent_bytes = _figure(first, "model_bytes", "parent")
    size = _figure(last, "model_bytes")
    parent_err = _error_pct(first, "parent")
    err = _error_pct(last)
    return {
        "reference": 'Han, Mao, Dally 2016, "Deep Compression", Table 1',
        "published": "40x smaller (1070 KB -> 27 KB) at 1.58%",
        "measured": f"{parent_bytes / size:.1f}x smaller ({parent_bytes / 1000:.0f} KB -> {size / 1000:.1f} KB) at "
        f"{err:.2f}% (parent {parent_err:.2f}%)",
        "floor": ">= 30x smaller on disk than the fp32 parent, error <= parent + 0.3 point",
        "met": parent_bytes / size >= 30 and err <= parent_err + 0.3,
        "reports": reports,
    }


def row_hinton(b: Bench) -> dict[str, Any]:
    epochs = 2 if b.quick else 15
    teacher = b.train(
        "hinton-teacher",
        [{"dense": 1200, "activation": "relu"}] * 2 + [{"dense": 10}],
        epochs=epochs,
        batch=128,
        dropout=0.5,
    )
    student = [{"dense": 800, "activation": "relu"}, {"dense": 800, "activation": "relu"}, {"dense": 10}]
    step = {
        "distill": {
            "student": {"layers": student},
            "train": {"epochs": epochs, "batch_size": 128, "optimizer": {"name": "adam", "lr": 0.001}, "seed": 0},
            "temperature": 20.0,
            "alpha": 0.9,
            "control": True,
        }
    }
    (report,) = b.optimize(teacher, [step], "hinton-student")
    t, s, c = report["teacher"]["errors"], report["student"]["errors"], report["control"]["errors"]
    fewer = 1.0 - s / max(c, 1)
    return {
        "reference": "Hinton, Vinyals, Dean 2015, Sec. 3",
        "published": "student 784-800-800-10: 146 -> 74 errors with a 67-error teacher",
        "measured": f"student 784-800-800-10: {c} -> {s} errors ({fewer:.0%} fewer) with a {t}-error teacher",
        "floor": "distilled student: at least 20% fewer test errors than its hard-label control",
        "met": fewer >= 0.20,
        "reports": [report],
    }


def row_int8(b: Bench, cache: dict[str, str]) -> dict[str, Any]:
    parent = lenet(b, cache)
    (report,) = b.optimize(parent, [{"quantize": {"method": "int8_static"}}], "lenet-300-100")
    delta = abs(report["figures"]["accuracy"]["delta_points"])
    size = _figure(report, "model_bytes", "ratio")
    latency = _figure(report, "latency_ms_b256", "ratio")
    return {
        "reference": "int8 post-training quantization (PyTorch and ONNX Runtime docs)",
        "published": "no accuracy loss, 4x smaller, 2-4x faster",
        "measured": f"error {_error_pct(report, 'parent'):.2f}% -> {_error_pct(report):.2f}% ({delta:.2f} pt), "
        f"{size:.3f}x the size, batch-256 latency {latency:.2f}x",
        "floor": "error within 0.1 point, <= 0.27x the size, batch-256 latency <= 0.35x its fp32 parent",
        "met": delta <= 0.1 and size <= 0.27 and latency <= 0.35,
        "reports": [report],
    }


def row_int4(b: Bench, cache: dict[str, str]) -> dict[str, Any]:
    parent = lenet(b, cache)
    (report,) = b.optimize(parent, [{"quantize": {"method": "int4_weight"}}], "lenet-300-100")
    delta = abs(report["figures"]["accuracy"]["delta_points"])
    size = _figure(report, "model_bytes", "ratio")
    return {
        "reference": '4-bit weight-only ("sub-integer")',
        "published": "no authoritative MNIST figure",
        "measured": f"error {_error_pct(report, 'parent'):.2f}% -> {_error_pct(report):.2f}% ({delta:.2f} pt), "
        f"{size:.3f}x the size",
        "floor": "error within 0.1 point, <= 0.15x the size",
        "met": delta <= 0.1 and size <= 0.15,
        "reports": [report],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    parser.add_argument("--quick", action="store_true", help="5,000 training images, 1-2 epochs: a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "paper_tables.json")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    with tempfile.TemporaryDirectory(prefix="modelport-paper-") as home:
        settings = Settings(home=Path(home), admin_key=secrets.token_urlsafe(24), job_data_dirs=[MNIST])
        app = create_app(settings)
        bench = Bench(app, Worker(settings), args.quick)
        cache: dict[str, str] = {}
        runners: dict[str, Callable[[], dict[str, Any]]] = {
            "mission": lambda: row_mission(bench),
            "han": lambda: row_han(bench, cache),
            "deep_compression": lambda: row_deep_compression(bench, cache),
            "hinton": lambda: row_hinton(bench),
            "int8": lambda: row_int8(bench, cache),
            "int4": lambda: row_int4(bench, cache),
        }
        results = []
        for name in rows:
            print(f"== {name}", flush=True)
            started = time.perf_counter()
            results.append({"row": name, **runners[name](), "seconds": round(time.perf_counter() - started)})
        bench.worker.close()
        app.state.ctx.runtime.close()
        app.state.ctx.db.dispose()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print()
    print("| reference | published | measured by Modelport | floor | met |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['reference']} | {r['published']} | {r['measured']} | {r['floor']} | {'yes' if r['met'] else 'NO'} |"
        )
    print(f"\nreports: {args.out}" + ("  (quick run: not the published setting)" if args.quick else ""))


if __name__ == "__main__":
    main()
