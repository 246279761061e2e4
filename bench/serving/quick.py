"""A quick RSW-1 subset for development: Modelport and the orjson/raw floors, same conditions, ~1 minute.

Not the report (``run.sh`` is): it starts ``modelport serve`` (auth on, a member key reading the model)
and the two floors one after another, each pinned to core 0, drives each with wrk pinned to core 1 (1
thread; 2 s warm-up, ``--seconds`` measured), and prints req/s, p50/p99 and Modelport's ratio to the
floor. Bodies are the real RSW-1 ones: the first 32 MNIST test images as pixel/255.

    .venv/bin/python bench/serving/quick.py [--seconds 5] [--cells A64,A1,B64,R64]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = REPO.parent / "shared"
VENV_BIN = Path(sys.executable).parent
ORJSON_FLOOR = SHARED / "bench" / "serving" / "servers"
LUA = """
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
for line in io.lines(os.getenv("HEADERS_FILE")) do
  local k, v = line:match("^([^:]+):%s*(.*)$")
  if k then wrk.headers[k] = v end
end
done = function(summary, latency, requests)
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50":%d,"p99":%d}\\n',
    summary.requests, summary.duration, summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, summary.errors.status, latency:percentile(50), latency:percentile(99)))
end
"""
CELLS = {
    "A64": ("A", 64),
    "A1": ("A", 1),
    "B64": ("B", 64),
    "RA1": ("RA", 1),
    "RA16": ("RA", 16),
    "RA64": ("RA", 64),
    "R1": ("R", 1),
    "R16": ("R", 16),
    "R64": ("R", 64),
    "VA64": ("VA", 64),
    "VB64": ("VB", 64),
}
"""cell -> (body, connections); R and RA are B and A as raw float32 tensors (the raw floor's cells); VA/VB
are A and B as V2 infer requests (no floor: Modelport only). Cells run in the order given, on one server:
``RA1,RA16,RA64,R1,R16,R64`` is the harness's order for ``modelport_raw``."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("server did not start")


def mnist_rows(n: int) -> np.ndarray:
    sys.path.insert(0, str(REPO / "src"))
    from modelport.training.data.idx import read_idx

    images = read_idx(SHARED / "data" / "mnist" / "t10k-images-idx3-ubyte.gz")[:n]
    return (images.reshape(n, 784).astype(np.float32) / 255.0).astype(np.float32)


def prepare(work: Path) -> str:
    """The home (model ``mlp`` v1, a member key reading it) and the bodies; returns the member key."""
    sys.path.insert(0, str(HERE.parent))
    import asyncio

    import httpx
    from fastpath_keys import ADMIN, serve_mlp

    from modelport.api.app import create_app
    from modelport.config import Settings

    async def setup() -> str:
        app = create_app(Settings(home=work / "home", admin_key=ADMIN))
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        auth = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=auth) as c:
            member = await serve_mlp(c, work)
        app.state.ctx.runtime.close()
        app.state.ctx.db.dispose()
        return member

    key = asyncio.run(setup())
    x = mnist_rows(32)
    for name, n in (("A", 1), ("B", 32)):
        rows = x[:n].astype(np.float64).tolist()
        (work / f"{name}.json").write_text(json.dumps({"inputs": rows}, separators=(",", ":")))
        tensor = {"name": "input", "shape": [n, 784], "datatype": "FP32", "data": [v for row in rows for v in row]}
        (work / f"V{name}.json").write_text(json.dumps({"inputs": [tensor]}, separators=(",", ":")))
    (work / "R.json").write_bytes(x.tobytes())
    (work / "RA.json").write_bytes(x[:1].tobytes())
    (work / "lua").write_text(LUA)
    return key


def wrk(url: str, body: Path, headers: Path, conns: int, seconds: int, lua: Path) -> dict[str, float]:
    env = {**os.environ, "BODY_FILE": str(body), "HEADERS_FILE": str(headers)}
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(lua), url]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    found = re.search(r"WRKJSON (\{.*\})", out)
    assert found is not None, out
    data = json.loads(found.group(1))
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    return data


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its children so far: cost per request under noise."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def minor_faults(pid: int) -> int:
    """Minor page faults of ``pid`` (all its threads) so far: fresh memory touched, e.g. large buffers
    the allocator maps and unmaps per request."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def cell_url(port: int, cell: str, path: str = "/v1/models/mlp/predict") -> str:
    """Where ``cell``'s requests go: V2 bodies to the V2 infer route, the others to ``path``."""
    which, _ = CELLS[cell]
    return f"http://127.0.0.1:{port}{'/v2/models/mlp/infer' if which.startswith('V') else path}"


def headers_file(work: Path, cell: str, key: str) -> Path:
    """The request headers of ``cell`` for wrk's script (the key; raw cells' media type and shape)."""
    which, _ = CELLS[cell]
    lines = [f"Authorization: Bearer {key}", "Content-Type: application/json"]
    if which in ("R", "RA"):
        shape = "32,784" if which == "R" else "1,784"
        lines = [lines[0], "Content-Type: application/octet-stream", f"X-Tensor-Shape: {shape}"]
    path = work / f"{cell}.headers"
    path.write_text("\n".join(lines) + "\n")
    return path


def server_run(pid: int, url: str, body: Path, headers: Path, conns: int, seconds: int, lua: Path) -> dict[str, float]:
    """One wrk run, with the server's (``pid``) CPU microseconds and minor page faults a request."""
    cpu, faults = cpu_s(pid), minor_faults(pid)
    result = wrk(url, body, headers, conns, seconds, lua)
    requests = max(1, result["requests"])
    result["cpu_us"] = (cpu_s(pid) - cpu) / requests * 1e6
    result["faults"] = (minor_faults(pid) - faults) / requests
    return result


def measure(
    cmd: list[str], port: int, path: str, cells: list[str], work: Path, seconds: int, env: dict[str, str], key: str
) -> dict[str, dict[str, float]]:
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], env=env, stdout=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        results = {}
        for cell in cells:
            which, conns = CELLS[cell]
            url = cell_url(port, cell, path)
            headers = headers_file(work, cell, key)
            wrk(url, work / f"{which}.json", headers, conns, 2, work / "lua")  # warm-up
            results[cell] = server_run(proc.pid, url, work / f"{which}.json", headers, conns, seconds, work / "lua")
        return results
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--cells", default="A64,A1,B64,R64")
    parser.add_argument("--no-floor", action="store_true")
    args = parser.parse_args()
    cells = args.cells.split(",")
    work = Path(tempfile.mkdtemp(prefix="mp-quick-"))
    try:
        key = prepare(work)
        env = {**os.environ, "MODELPORT_HOME": str(work / "home"), "MODELPORT_JOB_WORKERS": "0"}
        port = free_port()
        serve = [str(VENV_BIN / "modelport"), "serve", "--port", str(port), "--log-level", "warning"]
        ours = measure(serve, port, "/v1/models/mlp/predict", cells, work, args.seconds, env, key)
        floors: dict[str, dict[str, float]] = {}
        if not args.no_floor:
            for floor_cells, module, folder in (
                ([c for c in cells if c in ("A64", "A1", "B64")], "floor_orjson_app:app", ORJSON_FLOOR),
                ([c for c in cells if c.startswith("R")], "floor_raw_app:app", HERE),
            ):
                if floor_cells:
                    port = free_port()
                    cmd = [str(VENV_BIN / "uvicorn"), module, "--port", str(port), "--log-level", "warning"]
                    cmd += ["--no-access-log", "--app-dir", str(folder)]
                    floors |= measure(cmd, port, "/predict", floor_cells, work, args.seconds, env, key)
        print(
            "| cell | Modelport req/s | p50 ms | p99 ms | errors | floor req/s | floor p50 ms | ratio "
            "| CPU us/req (floor) | page faults/req (floor) |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for cell in cells:
            r, f = ours[cell], floors.get(cell)
            ratio = f"{r['rps'] / f['rps']:.2f}" if f else "-"
            frps = f"{f['rps']:,.0f}" if f else "-"
            fp50 = f"{f['p50'] / 1000:.3f}" if f else "-"
            cpu = f"{r['cpu_us']:.0f} ({f['cpu_us'] if f else 0:.0f})"
            faults = f"{r['faults']:.2f} ({f['faults'] if f else 0:.2f})"
            print(
                f"| {cell} | {r['rps']:,.0f} | {r['p50'] / 1000:.3f} | {r['p99'] / 1000:.2f} | "
                f"{r['errors'] + r['non2xx']} | {frps} | {fp50} | {ratio} | {cpu} | {faults} |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
