"""`modelport serve --workers 2`: a key's rate limit holds for the server, not per process. Many fresh
connections (the kernel spreads them over both processes) get no more than the key's rate plus its
burst; the shared table lives under <home>/run/ while the server runs and is gone after."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from onnx import TensorProto, helper, numpy_helper, save_model

from tests.security.live import HEADERS, serve_process

RPS = 5.0
HAMMER_S = 3.0


def ident_model(folder: Path) -> Path:
    """y = x * 1 on [N, 4]."""
    one = numpy_helper.from_array(np.ones((1, 4), dtype=np.float32), name="one")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "one"], ["y"])], "ident", [x], [y], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "ident.onnx"
    save_model(model, str(path))
    return path


def test_a_key_limited_to_5_rps_gets_5_rps_from_two_processes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with serve_process(home, "--workers", "2") as (url, _):
        assert len(list((home / "run").glob("rate-limits-*"))) == 1
        assert httpx.post(f"{url}/v1/models", json={"name": "ident"}, headers=HEADERS).status_code == 201
        files = {"file": ("ident.onnx", ident_model(tmp_path).read_bytes(), "application/octet-stream")}
        r = httpx.post(f"{url}/v1/models/ident/versions", files=files, headers=HEADERS, timeout=60)
        assert r.status_code == 201, r.text
        r = httpx.post(f"{url}/v1/keys", json={"name": "admin", "rate_limit_rps": RPS}, headers=HEADERS)
        limited = {"Authorization": f"Bearer {r.json()['key']}"}
        body = {"inputs": [[1.0, 2.0, 3.0, 4.0]]}

        def hammer(_: int) -> list[tuple[int, str]]:
            answers = []
            end = time.monotonic() + HAMMER_S
            with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as fresh:
                while time.monotonic() < end:  # a new connection for every request
                    r = fresh.post(f"{url}/v1/models/ident/predict", json=body, headers=limited)
                    answers.append((r.status_code, r.headers["x-request-id"][:8]))
            return answers

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            answers = [a for part in pool.map(hammer, range(8)) for a in part]
        elapsed = time.monotonic() - started
    statuses = [status for status, _ in answers]
    assert set(statuses) == {200, 429}, set(statuses)
    assert len({process for _, process in answers}) == 2  # request ids carry a per-process prefix
    ok = statuses.count(200)
    assert ok <= RPS + RPS * elapsed + 1, (ok, elapsed, len(answers))  # burst (1 s worth) + rate x time
    assert ok >= RPS * HAMMER_S / 2, (ok, elapsed)
    assert not list((home / "run").glob("rate-limits-*"))  # removed when the server stopped
