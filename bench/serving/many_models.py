"""RSW-1 with many models: request A spread over 20 copies of the MLP, against the same server serving
one, then again with a memory budget that fits only 5 of them (expected: slower, never failing).

    .venv/bin/python bench/serving/many_models.py [--work /tmp/serving-bench] [--seconds 10] [--rounds 3] [--json OUT]

One model and 20 are measured in alternating rounds on one server, and the floor is read from the
round with the median ratio: on this VM one setting's figure moves by 15-20% between runs minutes
apart (11.2-18.8k req/s for one model), more than the 20% the floor allows, and a single pair of
runs can land one setting in a fast moment and the other in a slow one.

Needs the harness's model and bodies (run bench/serving/run.sh once, or its train.py/make_bodies.py);
run.sh runs it after the harness and report.py checks its two floors from ``--json``'s file.
Server pinned to core 0, wrk to core 1, 64 connections, as in RSW-1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

KEY = "mp_many-models-benchmark-key-0123456789abcdefghij"
REPO = Path(__file__).resolve().parents[2]
LUA = """
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
local body = f:read("*a")
f:close()
local n = tonumber(os.getenv("MODELS"))
local i = 0
request = function()
  i = i + 1
  local path = "/v1/models/m" .. (i % n) .. "/predict"
  return wrk.format("POST", path, {["Content-Type"] = "application/json",
                                  ["Authorization"] = "Bearer " .. os.getenv("KEY")}, body)
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(home: Path, port: int, budget: int | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MODELPORT_HOME": str(home), "MODELPORT_ADMIN_KEY": KEY, "MODELPORT_JOB_WORKERS": "0"}
    if budget is not None:
        env["MODELPORT_MEMORY_BUDGET_BYTES"] = str(budget)
    cmd = [
        "taskset",
        "-c",
        "0",
        str(REPO / ".venv/bin/modelport"),
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return ready(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port)


def ready(proc: subprocess.Popen[bytes], port: int) -> subprocess.Popen[bytes]:
    """``proc`` once the server it runs answers /readyz on ``port`` (up to a minute); else it is killed
    and the script exits."""
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("server did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_totals(port: int) -> tuple[float, float]:
    """Examples and model calls so far, over every model (the batch-size histograms' sums and counts)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=60).text
    examples = sum(float(v) for v in re.findall(r"^modelport_batch_size_sum\{[^}]*\} (\S+)$", text, re.M))
    calls = sum(float(v) for v in re.findall(r"^modelport_batch_size_count\{[^}]*\} (\S+)$", text, re.M))
    return examples, calls


def wrk(port: int, models: int, body: Path, seconds: int, script: Path, pid: int) -> dict[str, float]:
    """wrk's figures, the server's CPU time per answered request (less noisy than req/s when
    something else steals the server's core now and then), and the examples per model call."""
    env = {**os.environ, "BODY_FILE": str(body), "MODELS": str(models), "KEY": KEY}
    examples_before, calls_before = batch_totals(port)
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            "-c64",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = cpu_seconds(pid) - cpu_before
    examples, calls = batch_totals(port)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)$", out, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)$", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    return {
        "rps": rps,
        "cpu_us": cpu / max(requests, 1) * 1e6,
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
        "per_call": (examples - examples_before) / max(calls - calls_before, 1.0),
        "p50_ms": _ms(p50),
        "p99_ms": _ms(p99),
    }


def _ms(match: re.Match[str] | None) -> float:
    """A wrk latency figure ("812.00us", "5.01ms", "1.20s") in milliseconds."""
    if match is None:
        return float("nan")
    return float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("WORK", "/tmp/serving-bench")))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternating 1-model / N-model rounds (median kept)")
    parser.add_argument("--json", type=Path, help="also write the figures here (report.py reads them)")
    args = parser.parse_args()
    onnx = (args.work / "models" / "mlp.onnx").read_bytes()
    body = args.work / "bodies" / "inputs_A.json"
    tmp = Path(tempfile.mkdtemp())
    script = tmp / "many.lua"
    script.write_text(LUA)
    home = tmp / "home"
    port = free_port()
    proc = start(home, port, None)
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as c:
        for i in range(args.models):
            c.post("/v1/models", json={"name": f"m{i}"})
            c.post(f"/v1/models/m{i}/versions", files=[("file", ("mlp.onnx", onnx, "application/octet-stream"))])
    rounds = []
    for _ in range(args.rounds):  # alternating, so that a slow moment of the VM hits both settings
        pair = {}
        for label, n in (("1 model", 1), (f"{args.models} models", args.models)):
            wrk(port, n, body, 2, script, proc.pid)  # warm-up (loads the models)
            pair[label] = wrk(port, n, body, args.seconds, script, proc.pid)
        rounds.append(pair)
    proc.terminate()
    proc.wait()
    per_model = 2 * len(onnx)  # the runtime's estimate for one version: twice its files
    budget = 5 * per_model + per_model // 2
    proc = start(home, port, budget)
    wrk(port, args.models, body, 2, script, proc.pid)
    budget_run = wrk(port, args.models, body, args.seconds, script, proc.pid)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as c:
        loaded = len(c.get("/v1/runtime", timeout=120).json()["loaded"])
    proc.terminate()
    proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)
    ratios = [pair[f"{args.models} models"]["rps"] / pair["1 model"]["rps"] for pair in rounds]
    median = sorted(range(len(rounds)), key=lambda i: ratios[i])[len(rounds) // 2]
    results = {**rounds[median], f"{args.models} models, budget fits 5": budget_run}
    one = results["1 model"]["rps"]
    one_cpu = results["1 model"]["cpu_us"]
    print(
        "| setting | req/s | vs 1 model | CPU us/request | vs 1 model | examples/call | p50 / p99 ms | non-2xx "
        "| socket errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in results.items():
        print(
            f"| {label} | {r['rps']:,.0f} | {r['rps'] / one:.2f} | {r['cpu_us']:.0f} | {one_cpu / r['cpu_us']:.2f} "
            f"| {r['per_call']:.2f} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} | {r['non2xx']:.0f} "
            f"| {r['socket_errors']:.0f} |"
        )
    print(f"\nloaded at the end with the budget: {loaded} versions (budget {budget} bytes)")
    print(f"{args.models} models / 1 model, round by round: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"(the table shows round {median + 1}, the median)")
    many = results[f"{args.models} models"]["rps"]
    print(f"floor: {args.models} models within 20% of one: {'PASS' if many >= 0.8 * one else 'FAIL'}")
    failed = budget_run["non2xx"] + budget_run["socket_errors"]
    print(f"floor: budget run has no failed request: {'PASS' if failed == 0 else 'FAIL'}")
    if args.json is not None:
        figures = {
            "models": args.models,
            "budget_bytes": budget,
            "loaded_with_budget": loaded,
            "one": results["1 model"],
            "many": results[f"{args.models} models"],
            "budget": budget_run,
            "ratios": ratios,
        }
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
