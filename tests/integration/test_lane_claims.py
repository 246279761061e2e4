"""What the inference lane takes from the edge (``api/lane.py::Lane.claim``): only requests the edge would
pass untouched, and only once the edge has seen their Host and Content-Type pass its checks. Everything
else must stay with the ASGI app, which refuses or answers it."""

from __future__ import annotations

import httpx

from modelport.api.app import ModelportApp
from modelport.api.lane import LANE_MAX_BODY, Lane

PATH = b"/v1/models/m/predict"


def _headers(**extra: bytes) -> list[tuple[bytes, bytes]]:
    base = {b"host": b"modelport.test", b"content-type": b"application/json", b"content-length": b"20"}
    base.update({k.replace("_", "-").encode(): v for k, v in extra.items()})
    return list(base.items())


async def test_the_lane_claims_only_what_the_edge_has_seen_pass(client: httpx.AsyncClient, app: ModelportApp) -> None:
    lane = app.lane
    assert isinstance(lane, Lane)
    assert lane.claim(PATH, _headers()) is None  # a Host and Content-Type the edge has not checked yet
    r = await client.post("/v1/models/m/predict", json={"inputs": [[1.0]]})  # the edge checks, passes, remembers
    assert r.status_code == 404
    claimed = lane.claim(PATH, _headers())
    assert claimed is not None and claimed.template == "/v1/models/{ref}/predict" and claimed.declared == 20
    assert lane.claim(b"/v2/models/m/versions/1/infer", _headers()) is not None

    refused = {
        "query string": (PATH + b"?x=1", _headers()),
        "escapes": (b"/v1/models/m%2Fx/predict", _headers()),
        "not ascii": ("/v1/models/é/predict".encode(), _headers()),
        "other route": (b"/v1/models/m", _headers()),
        "absolute form": (b"http://modelport.test" + PATH, _headers()),
        "origin": (PATH, _headers(origin=b"http://modelport.test")),
        "expect": (PATH, _headers(expect=b"100-continue")),
        "chunked": (PATH, _headers(transfer_encoding=b"chunked")),
        "empty": (PATH, _headers(content_length=b"0")),
        "bad length": (PATH, _headers(content_length=b"20x")),
        "huge length": (PATH, _headers(content_length=b"9" * 5000)),
        "over the lane's limit": (PATH, _headers(content_length=str(LANE_MAX_BODY + 1).encode())),
        "another host": (PATH, _headers(host=b"elsewhere.test")),
        "another type": (PATH, _headers(content_type=b"application/octet-stream")),
    }
    for why, (url, headers) in refused.items():
        assert lane.claim(url, headers) is None, why
    no_length = [(k, v) for k, v in _headers() if k != b"content-length"]
    assert lane.claim(PATH, no_length) is None

    app.drain()
    assert lane.claim(PATH, _headers()) is None  # the edge answers 503 to everyone while draining
