"""Models that misbehave on input their signature accepts.

- A model that raises: the caller gets a 422 ``model_failed`` with the framework's reason (never a
  bare 500 "internal error"), and nothing else is lost. The model here is a real ONNX graph with a
  batch size of one built into it (a Reshape to ``[1, 4]``), which its signature, ``[-1, 4]``, does
  not tell: one example runs, two cannot.
- A model whose outputs do not follow its batch (a sum over it): merged with other callers' requests
  it would answer each with their inputs mixed in, so it is run one request at a time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import torch
from onnx import TensorProto, helper

from modelport.config import Settings
from modelport.errors import ModelFailed
from modelport.serving.pipeline import model_failed
from tests.conftest import ADMIN_KEY, error_of, upload
from tests.e2e.test_http_lane import _request
from tests.e2e.test_http_wire import _connect, _responses
from tests.security.live import served

ONE = [[1.0, 2.0, 3.0, 4.0]]
TWO = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
CONNECTIONS = 24


def _onnx(folder: Path, node: Any, y_shape: list[Any], *initializers: Any) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)
    graph = helper.make_graph([node], "g", [x], [y], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def write_batch_of_one(folder: Path) -> Path:
    """The ONNX model with a batch size of one inside: ``model.onnx`` in ``folder``."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 4])
    return _onnx(folder, helper.make_node("Reshape", ["x", "shape"], ["y"]), ["n", 4], shape)


@pytest.fixture
def batch_of_one(tmp_path: Path) -> Path:
    return write_batch_of_one(tmp_path)


def _assert_told(answer: httpx.Response) -> None:
    assert answer.status_code == 422, answer.text
    error = error_of(answer)
    assert error["code"] == "model_failed"
    assert "cannot be reshaped to the requested shape" in error["message"]
    assert "Input shape:{2,4}" in error["details"]["reason"]
    # onnxruntime's own message names its C++ source file and function: none of that reaches the caller
    for noise in ("onnxruntime_src", ".h:", "ReshapeHelper::", "/", "<path>"):
        assert noise not in error["message"], noise


async def test_a_model_that_fails_on_valid_input_answers_422_with_its_reason(
    client: httpx.AsyncClient, batch_of_one: Path
) -> None:
    assert (await upload(client, "one", batch_of_one)).status_code == 201
    r = await client.post("/v1/models/one/predict", json={"inputs": ONE})
    assert r.status_code == 200 and r.json()["outputs"] == ONE
    _assert_told(await client.post("/v1/models/one/predict", json={"inputs": TWO}))
    v2 = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [v for row in TWO for v in row]}]}
    _assert_told(await client.post("/v2/models/one/infer", json=v2))
    r = await client.post("/v1/models/one/predict", json={"inputs": ONE})
    assert r.status_code == 200 and r.json()["outputs"] == ONE


async def test_over_the_wire_requests_that_would_fail_merged_are_each_answered(
    settings: Settings, batch_of_one: Path
) -> None:
    """Through the real server: the protocol lane gathers the requests that arrive in one turn of
    the loop into one model call, which fails here for any two; each request is then run again
    alone and answered by that call (so the model's call count is one per request). A request
    that fails alone gets its 422."""
    with served(settings) as url:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
            assert (await upload(c, "one", batch_of_one)).status_code == 201
        _each_gets_its_row(url, "one", waves=3)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
            _assert_told(await c.post("/v1/models/one/predict", json={"inputs": TWO}))
            metrics = (await c.get("/metrics")).text
        calls = re.search(r'^modelport_batch_size_count\{model="one",version="1"\} (\S+)$', metrics, re.M)
        assert calls is not None, metrics
        assert float(calls.group(1)) == 3 * CONNECTIONS, "every request answered by a call of its own"


def _each_gets_its_row(url: str, model: str, *, waves: int) -> None:
    """``waves`` times: one single-example predict on each of CONNECTIONS connections, all sent before
    any answer is read (so that the server reads them in one turn of its loop); each answer must be a
    200 holding the row it sent. The first request of a connection goes through the ASGI edge, the
    next ones through the lane."""
    socks = [_connect(url) for _ in range(CONNECTIONS)]
    try:
        for wave in range(waves):
            rows = [[float(wave), float(i), 2.0, 3.0] for i in range(CONNECTIONS)]
            for sock, row in zip(socks, rows, strict=True):
                sock.sendall(_request(f"/v1/models/{model}/predict", orjson.dumps({"inputs": [row]}), ADMIN_KEY))
            for sock, row in zip(socks, rows, strict=True):
                ((head, answer),) = _responses(sock, 1)
                assert head.startswith(b"HTTP/1.1 200"), answer
                assert orjson.loads(answer)["outputs"] == [row]
    finally:
        for sock in socks:
            sock.close()


async def test_a_model_whose_outputs_do_not_follow_the_batch_answers_each_caller_alone(
    settings: Settings, tmp_path: Path
) -> None:
    """A ReduceSum over the batch (output ``[1, 4]`` for any batch): through the real server, requests
    sent together would be merged into one call; each caller must still get its own row back, never
    a sum with the others' inputs in it."""
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)
    path = _onnx(tmp_path, node, [1, 4], helper.make_tensor("axes", TensorProto.INT64, [1], [0]))
    with served(settings) as url:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
            assert (await upload(c, "sum", path)).status_code == 201
        _each_gets_its_row(url, "sum", waves=4)


def test_a_torchscript_failure_is_told_by_its_last_line() -> None:
    """TorchScript's message carries a traceback whose frames name the uploader's and the server's
    files; the error itself is its last line."""

    class BatchOfOne(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(1, 4)

    module = torch.jit.script(BatchOfOne())
    with pytest.raises(RuntimeError) as raised:
        module(torch.zeros(2, 4))
    assert "Traceback of TorchScript" in str(raised.value) and "File" in str(raised.value)
    failed = model_failed(raised.value)
    assert isinstance(failed, ModelFailed)
    assert failed.details["reason"] == "RuntimeError: shape '[1, 4]' is invalid for input of size 8"
