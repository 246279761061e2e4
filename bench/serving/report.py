"""Print RSW-1 results with Modelport beside the floors and the peers, and check the issue's floors.

    python bench/serving/report.py RESULTS_DIR [PEER_RESULTS_DIR]

Floors and Modelport come from RESULTS_DIR (one run), the 20-model floors from its many_models.json
(``many_models.py --json``, which run.sh runs after the harness). Peers come from RESULTS_DIR when they ran in the
same run, else from PEER_RESULTS_DIR (the shared harness's published run on this machine kind), and the
table says which. RESULTS_DIR keeps what earlier runs wrote there: with ``RUN_STARTED`` (epoch seconds,
set by run.sh) a result written before it is labelled "earlier run HH:MM UTC", not "this run".
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PEERS = [
    "mlflow",
    "bentoml",
    "bentoml_batch",
    "litserve",
    "litserve_batch",
    "ray",
    "ray_batch",
    "mlserver",
    "mlserver_batch",
    "torchserve",
    "torchserve_batch",
]
OURS = ["modelport", "modelport_raw", "modelport_v2"]
FLOORS = ["floor", "floor_orjson", "floor_raw"]


def load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data if data.get("ok") else None


def source(path: Path, started: float) -> str:
    """Say "this run", or, for a file older than the run, when an earlier run wrote it (UTC)."""
    written = path.stat().st_mtime
    if written >= started:
        return "this run"
    return "earlier run " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(written))


def cell(result: dict[str, Any] | None, workload: str, conns: int, *, clean: bool = False) -> dict[str, Any] | None:
    """One measured cell; with ``clean`` only a cell without failed requests counts (a peer that
    answered 503s to part of the load does not set the bar)."""
    if result is None:
        return None
    for run in result["runs"]:
        if run.get("workload") == workload and run.get("conns") == conns and "rps" in run:
            if clean and run["non2xx"] + run["socket_errors"] > 0:
                return None
            return run  # type: ignore[no-any-return]
    return None


def table(results: dict[str, tuple[dict[str, Any], str]]) -> None:
    print("| system | source | req | conns | req/s | images/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name, (result, source) in results.items():
        for run in result["runs"]:
            if "rps" not in run:
                continue
            errors = run["non2xx"] + run["socket_errors"]
            print(
                f"| {name} | {source} | {run['workload']} | {run['conns']} | {run['rps']:,.0f} | "
                f"{run['ips']:,.0f} | {run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {errors} |"
            )


def check(name: str, value: float, bound: float, ok: bool) -> bool:
    print(f"| {name} | {value:,.2f} | {bound:,.2f} | {'PASS' if ok else 'FAIL'} |")
    return ok


def many_models_rows(run_dir: Path) -> list[tuple[str, float, float, bool] | str]:
    """The two floors of ``many_models.py`` (run.sh writes its figures beside the harness's)."""
    path = run_dir / "many_models.json"
    if not path.exists():
        return ["20 models (many_models.py did not run)"]
    data = json.loads(path.read_text())
    one, many, budget = data["one"], data["many"], data["budget"]
    n = data["models"]
    failed = budget["non2xx"] + budget["socket_errors"]
    return [
        (
            f"{n} models A@64 req/s >= 80% of one model's",
            many["rps"],
            0.8 * one["rps"],
            many["rps"] >= 0.8 * one["rps"],
        ),
        (f"{n} models, budget fits 5: failed requests", failed, 0, failed == 0),
    ]


def floors(results: dict[str, tuple[dict[str, Any], str]], run_dir: Path) -> bool:
    get = lambda n: results.get(n, ({}, ""))[0] or None  # noqa: E731
    mp, mp_raw, orj, raw_floor = get("modelport"), get("modelport_raw"), get("floor_orjson"), get("floor_raw")
    best_a = max((cell(get(p), "A", 64, clean=True) or {"rps": 0})["rps"] for p in PEERS)
    best_b = max((cell(get(p), "B", 64, clean=True) or {"ips": 0})["ips"] for p in PEERS)
    print("\n| floor (issue 5) | measured | bound | verdict |")
    print("|---|---:|---:|---|")
    a64, a1 = cell(mp, "A", 64), cell(mp, "A", 1)
    b64, raw64 = cell(mp, "B", 64), cell(mp_raw, "B", 64)
    o_a64, o_a1, o_b64, f_raw = cell(orj, "A", 64), cell(orj, "A", 1), cell(orj, "B", 64), cell(raw_floor, "B", 64)
    rows: list[tuple[str, float, float, bool] | str] = []
    if a64 and o_a64:
        rows += [
            ("A@64 req/s >= 50% of orjson floor", a64["rps"], 0.5 * o_a64["rps"], a64["rps"] >= 0.5 * o_a64["rps"]),
            ("A@64 req/s >= 3x best peer", a64["rps"], 3 * best_a, a64["rps"] >= 3 * best_a),
            ("A@64 p99 <= 4x p50 (ms)", a64["p99_ms"], 4 * a64["p50_ms"], a64["p99_ms"] <= 4 * a64["p50_ms"]),
        ]
    else:
        rows.append("A@64 (modelport or floor_orjson did not run)")
    if b64 and o_b64:
        rows += [
            ("B@64 images/s >= 50% of orjson floor", b64["ips"], 0.5 * o_b64["ips"], b64["ips"] >= 0.5 * o_b64["ips"]),
            ("B@64 images/s >= 3x best peer", b64["ips"], 3 * best_b, b64["ips"] >= 3 * best_b),
        ]
    else:
        rows.append("B@64 (modelport or floor_orjson did not run)")
    if raw64 and f_raw:
        rows.append(
            (
                "B raw@64 images/s >= 70% of raw floor",
                raw64["ips"],
                0.7 * f_raw["ips"],
                raw64["ips"] >= 0.7 * f_raw["ips"],
            )
        )
    else:
        rows.append("B raw@64 (modelport_raw or floor_raw did not run)")
    if a1 and o_a1:
        rows.append(
            (
                "A@1 p50 <= 2x orjson floor p50 (ms)",
                a1["p50_ms"],
                2 * o_a1["p50_ms"],
                a1["p50_ms"] <= 2 * o_a1["p50_ms"],
            )
        )
    else:
        rows.append("A@1 (modelport or floor_orjson did not run)")
    rows += many_models_rows(run_dir)
    ok = True
    for row in rows:
        if isinstance(row, str):
            print(f"| {row} | - | - | NOT MEASURED |")
            ok = False
        else:
            ok &= check(*row)
    return ok


def main() -> None:
    run_dir = Path(sys.argv[1])
    peer_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    results: dict[str, tuple[dict[str, Any], str]] = {}
    started = float(os.environ.get("RUN_STARTED", "0"))
    for name in FLOORS + OURS + PEERS:
        here = load(run_dir, name)
        if here is not None:
            results[name] = (here, source(run_dir / f"{name}.json", started))
        elif name in PEERS and peer_dir is not None and (published := load(peer_dir, name)) is not None:
            results[name] = (published, f"published {peer_dir.name}")
    table(results)
    verdict = floors(results, run_dir)
    print(f"\nall floors hold: {verdict}")


if __name__ == "__main__":
    main()
