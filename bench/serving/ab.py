"""Interleaved A/B of server builds or settings on RSW-1 cells, for a VM whose speed drifts by minutes.

Starts every variant's ``modelport serve`` at once (all pinned to core 0, idle but one at a time), then
drives them in turns: each round runs every cell against every variant for ``--seconds`` (wrk on core
1), in an order that rotates per round, so a slow minute lands on all variants alike. Prints, per cell
and variant, the CPU microseconds a request (the server's own, from /proc: what throughput is made of),
requests/s and p50, as medians over rounds, and each variant's median per-round ratio to the first.

    .venv/bin/python bench/serving/ab.py --variant base:PYTHONPATH=/tmp/base/src --variant new: \\
        --variant poll:MODELPORT_IDLE_POLL_US=200 --cells A1,A64,R64 --rounds 8 --seconds 2

A variant is ``NAME:ENV=VALUE[,ENV=VALUE...]`` (``PYTHONPATH=<checkout>/src`` runs another checkout's code).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
from pathlib import Path

from quick import CELLS, VENV_BIN, cell_url, free_port, headers_file, prepare, server_run, wait_port

Runs = dict[tuple[str, str], list[dict[str, float]]]


def start(variants: list[str], work: Path) -> dict[str, tuple[subprocess.Popen[bytes], int]]:
    """Every variant's server, pinned to core 0, ready: name -> (process, port)."""
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    for spec in variants:
        name, _, pairs = spec.partition(":")
        env = {**os.environ, "MODELPORT_HOME": str(work / "home"), "MODELPORT_JOB_WORKERS": "0"}
        env |= dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
        port = free_port()
        cmd = [str(VENV_BIN / "modelport"), "serve", "--port", str(port), "--log-level", "warning"]
        procs[name] = (subprocess.Popen(["taskset", "-c", "0", *cmd], env=env, stdout=subprocess.DEVNULL), port)
        wait_port(port, procs[name][0])
    return procs


def drive(
    procs: dict[str, tuple[subprocess.Popen[bytes], int]],
    cells: list[str],
    work: Path,
    key: str,
    rounds: int,
    seconds: int,
) -> Runs:
    """``rounds`` rounds (after one uncounted warm-up round), each cell against every variant in an
    order that rotates per round."""
    names = list(procs)
    headers = {cell: headers_file(work, cell, key) for cell in cells}
    results: Runs = {}
    for r in range(rounds + 1):
        for cell in cells:
            which, conns = CELLS[cell]
            for name in names[r % len(names) :] + names[: r % len(names)]:
                proc, port = procs[name]
                url = cell_url(port, cell)
                out = server_run(proc.pid, url, work / f"{which}.json", headers[cell], conns, seconds, work / "lua")
                if r:
                    results.setdefault((cell, name), []).append(out)
    return results


def report(results: Runs, cells: list[str], names: list[str]) -> None:
    print(f"medians over rounds; ratio: the median of per-round ratios to {names[0]}")
    print("| cell | variant | CPU us/request | ratio | req/s | ratio | p50 ms | ratio | errors |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for cell in cells:
        base = results[(cell, names[0])]
        for name in names:
            runs = results[(cell, name)]
            row = [f"| {cell} | {name}"]
            for field in ("cpu_us", "rps", "p50"):
                med = statistics.median(x[field] for x in runs)
                ratio = statistics.median(x[field] / b[field] for x, b in zip(runs, base, strict=True))
                row += [f"{med / 1000:.3f}" if field == "p50" else f"{med:,.0f}", f"{ratio:.3f}"]
            row.append(str(sum(int(x["errors"] + x["non2xx"]) for x in runs)))
            print(" | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--cells", default="A1,A64,R64")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=2)
    args = parser.parse_args()
    cells = args.cells.split(",")
    work = Path(tempfile.mkdtemp(prefix="mp-ab-"))
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        key = prepare(work)
        procs = start(args.variant, work)
        report(drive(procs, cells, work, key, args.rounds, args.seconds), cells, list(procs))
    finally:
        for proc, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs.values():
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
