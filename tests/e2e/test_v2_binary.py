"""The V2 binary tensor data extension on the real server: what tritonclient sends by default
(``InferInput.set_data_from_numpy(x)`` puts the bytes after the JSON, and ``infer()`` with no outputs
asks ``binary_data_output``), through the edge and then the protocol lane."""

from __future__ import annotations

import numpy as np
import orjson

from modelport.config import Settings
from tests.conftest import TrainedMnist
from tests.e2e.test_http_lane import _headers, _lane_count, _request, _setup
from tests.e2e.test_http_wire import _connect, _responses
from tests.security.live import served

INFER = "/v2/models/digits/infer"


def triton_style(x: np.ndarray, **request: object) -> tuple[bytes, bytes]:
    """(body, Inference-Header-Content-Length header) as tritonclient 2.73 builds them."""
    head = {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
        ],
        **request,
    }
    header = orjson.dumps(head)
    return header + x.tobytes(), b"Inference-Header-Content-Length: %d" % len(header)


def split(head: bytes, answer: bytes) -> tuple[dict[str, object], bytes]:
    length = int(_headers(head)[b"inference-header-content-length"])
    return orjson.loads(answer[:length]), answer[length:]


async def test_binary_inputs_and_outputs_as_tritonclient_sends_them(
    settings: Settings, mnist_model: TrainedMnist
) -> None:
    x = mnist_model.test_images[:3].astype(np.float32)
    with served(settings) as url:
        key = await _setup(url, mnist_model)
        body, length = triton_style(x, parameters={"binary_data_output": True})
        before = _lane_count(url)
        with _connect(url) as sock:
            for media in (b"application/octet-stream", b"application/octet-stream", b"application/json"):
                sock.sendall(_request(INFER, body, key, length, media=media))
                ((head, answer),) = _responses(sock, 1)
                assert head.startswith(b"HTTP/1.1 200"), answer
                assert _headers(head)[b"content-type"] == b"application/octet-stream"
                meta, data = split(head, answer)
                (out,) = meta["outputs"]  # type: ignore[misc]
                assert out == {
                    "name": "probabilities",
                    "shape": [3, 10],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 120},
                }
                probs = np.frombuffer(data, dtype="<f4").reshape(3, 10)
                np.testing.assert_allclose(probs, mnist_model.torch_probs[:3], atol=1e-5)
            # binary in, JSON out (an output asked for by name, without binary_data)
            body, length = triton_style(x[:1], outputs=[{"name": "probabilities"}])
            sock.sendall(_request(INFER, body, key, length, media=b"application/octet-stream"))
            ((head, answer),) = _responses(sock, 1)
            assert head.startswith(b"HTTP/1.1 200") and _headers(head)[b"content-type"] == b"application/json"
            (out,) = orjson.loads(answer)["outputs"]
            np.testing.assert_allclose(out["data"], mnist_model.torch_probs[0], atol=1e-5)
        assert _lane_count(url) - before >= 2  # after the first of each Content-Type, the lane answers


async def test_binary_requests_that_do_not_add_up_are_a_400(settings: Settings, mnist_model: TrainedMnist) -> None:
    x = mnist_model.test_images[:2].astype(np.float32)
    body, length = triton_style(x)
    header_len = int(length.split(b": ")[1])
    as_bytes = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]}
    )
    cases = [
        (body[:-4], length, "bytes of binary data, but shape [2, 784] of FP32 needs 6272"),
        (body + b"xxxx", length, "4 bytes after the inputs' binary data"),
        (body, b"Inference-Header-Content-Length: %d" % (len(body) + 1), "Inference-Header-Content-Length must be"),
        (body, b"Inference-Header-Content-Length: -5", "Inference-Header-Content-Length must be"),
        (body, b"Inference-Header-Content-Length: %d" % (header_len - 1), "not valid JSON"),
        (as_bytes + b"abcd", b"Inference-Header-Content-Length: %d" % len(as_bytes), "BYTES tensors are taken as JSON"),
    ]
    with served(settings) as url:
        key = await _setup(url, mnist_model)
        with _connect(url) as sock:
            for request_body, header, message in cases:
                sock.sendall(_request(INFER, request_body, key, header, media=b"application/octet-stream"))
                ((head, answer),) = _responses(sock, 1)
                assert head.startswith(b"HTTP/1.1 400"), (message, answer)
                refusal = orjson.loads(answer)  # the V2 protocol's error shape
                assert refusal["code"] == "invalid_input" and message in refusal["error"], refusal
            # and the connection still serves a good one
            sock.sendall(_request(INFER, body, key, length, media=b"application/octet-stream"))
            ((head, _),) = _responses(sock, 1)
            assert head.startswith(b"HTTP/1.1 200")
