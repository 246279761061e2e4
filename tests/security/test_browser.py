"""Browser attacks on a server on localhost: DNS rebinding (Host allowlist), drive-by cross-origin
requests (Origin policy, CORS), form and text/plain posts to JSON routes (415). The fast inference path
is served by the same edge, so each check is also made on ``/predict``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from modelport.api.app import create_app
from modelport.config import Settings
from tests.conftest import ADMIN_KEY, TrainedMnist, upload

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
UI = "https://ui.example.com"


@pytest.fixture
async def strict(settings: Settings, mnist_model: TrainedMnist) -> AsyncIterator[httpx.AsyncClient]:
    """The app with the DEFAULT Host allowlist and one CORS origin, and an uploaded model ``m``."""
    defaults = Settings(home=settings.home)
    app = create_app(settings.model_copy(update={"allowed_hosts": defaults.allowed_hosts, "cors_origins": [UI]}))
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000", headers=AUTH) as c:
        assert (await upload(c, "m", mnist_model.onnx_path, mnist_model.manifest)).status_code == 201
        yield c
    app.state.ctx.runtime.close()
    app.state.ctx.db.dispose()


def _one(model: TrainedMnist) -> dict[str, object]:
    return {"inputs": model.test_images[0].tolist()}


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/m/predict", "/healthz"])
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhostx"])
async def test_rebound_host_names_are_refused(strict: httpx.AsyncClient, host: str, path: str) -> None:
    method = "POST" if path.endswith("predict") else "GET"
    r = await strict.request(method, path, headers={"Host": host}, json={"inputs": [0.0]} if method == "POST" else None)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {
        "code": "bad_request",
        "message": "Host not allowed; add it to MODELPORT_ALLOWED_HOSTS",
        "details": {},
    }


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000", "localhost."])
async def test_loopback_names_are_answered(strict: httpx.AsyncClient, host: str, mnist_model: TrainedMnist) -> None:
    assert (await strict.get("/v1/models", headers={"Host": host})).status_code == 200
    assert (
        await strict.post("/v1/models/m/predict", headers={"Host": host}, json=_one(mnist_model))
    ).status_code == 200


async def test_configured_names_and_star(settings: Settings) -> None:
    for extra, host, status in [
        ({"allowed_hosts": ["models.example.com"]}, "models.example.com:443", 200),
        ({"allowed_hosts": ["models.example.com"]}, "localhost", 400),  # the list replaces the default
        ({"allowed_hosts": [], "host": "models.internal"}, "models.internal:8000", 200),  # the bound name is added
        ({"allowed_hosts": []}, "10.9.9.9:8000", 200),  # addresses are answered: rebinding needs a name
        ({"allowed_hosts": []}, "[fe80::1]", 200),
        ({"allowed_hosts": ["*"]}, "anything.example", 200),
    ]:
        app = create_app(settings.model_copy(update=extra))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:  # type: ignore[arg-type]
            assert (await c.get("/healthz", headers={"Host": host})).status_code == status, (extra, host)
        app.state.ctx.db.dispose()


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/models"), ("POST", "/v1/models"), ("POST", "/v1/models/m/predict")]
)
async def test_foreign_origins_are_refused(strict: httpx.AsyncClient, method: str, path: str) -> None:
    r = await strict.request(method, path, headers={"Origin": "https://evil.example"}, json={"name": "x"})
    assert r.status_code == 403
    assert "MODELPORT_CORS_ORIGINS" in r.json()["error"]["message"]
    assert "access-control-allow-origin" not in r.headers
    assert (await strict.get("/v1/models/x")).status_code == 404  # nothing was created


async def test_listed_origin_gets_exact_cors_headers_and_never_credentials(
    strict: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    pre = await strict.options(
        "/v1/models/m/predict",
        headers={
            "Origin": UI,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == UI
    assert "authorization" in pre.headers["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in pre.headers
    for r in [
        await strict.post("/v1/models/m/predict", headers={"Origin": UI}, json=_one(mnist_model)),
        await strict.get("/v1/models", headers={"Origin": UI}),
        await strict.get("/v1/models/ghost", headers={"Origin": UI}),  # errors are readable too
    ]:
        assert r.headers["access-control-allow-origin"] == UI, r.text
        assert "x-request-id" in r.headers["access-control-expose-headers"]
        assert "access-control-allow-credentials" not in r.headers
    assert (
        await strict.post("/v1/models/m/predict", headers={"Origin": UI}, json=_one(mnist_model))
    ).status_code == 200


async def test_preflights_from_unlisted_origins_and_without_cors_config_are_refused(
    client: httpx.AsyncClient, strict: httpx.AsyncClient
) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    r = await client.options("/v1/models", headers={"Origin": UI, **preflight})  # no origins configured
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    r = await strict.options("/v1/models/m/predict", headers={"Origin": "http://127.0.0.1:9999", **preflight})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


async def test_same_origin_requests_pass_without_cors_headers(strict: httpx.AsyncClient) -> None:
    r = await strict.get("/v1/models", headers={"Origin": "http://127.0.0.1:8000"})  # e.g. /docs on this server
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        ("/v1/models", "text/plain", b'{"name": "x"}'),
        ("/v1/models", "application/x-www-form-urlencoded", b"name=x"),
        (
            "/v1/models",
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n--b--\r\n',
        ),
        ("/v1/models", None, b'{"name": "x"}'),  # a no-cors fetch of an ArrayBuffer has no type
        ("/v1/jobs/abc/cancel", "text/plain", b""),  # a body-less route: an empty text/plain form post
        ("/v1/models/m/predict", "text/plain", b'{"inputs": [0]}'),
        ("/v1/models/m/predict", "application/x-www-form-urlencoded", b"inputs=0"),
        ("/v2/models/m/infer", "text/plain", b"{}"),
        ("/v1/models/m/versions", "application/json", b"{}"),
        ("/v1/datasets", "text/plain", b"x"),
    ],
)
async def test_form_and_text_posts_are_415_before_any_handler(
    strict: httpx.AsyncClient, path: str, content_type: str | None, body: bytes
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = await strict.post(path, content=body, headers=headers)
    assert r.status_code == 415, r.text
    error = r.json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert error["details"]["expected"] in error["message"]
    assert (await strict.get("/v1/models/x")).status_code == 404


async def test_accepted_media_types(strict: httpx.AsyncClient, mnist_model: TrainedMnist) -> None:
    r = await strict.post(
        "/v1/models", content=b'{"name": "a"}', headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert r.status_code == 201
    r = await strict.patch(
        "/v1/models/a", content=b'{"description": "d"}', headers={"Content-Type": "application/merge-patch+json"}
    )
    assert r.status_code == 200
    assert (await strict.post("/v1/models/m/unload")).status_code != 415  # no body, no type: fine
    x = mnist_model.test_images[:1].astype("float32")
    raw = {"Content-Type": "application/octet-stream", "X-Tensor-Shape": "1,784"}
    assert (await strict.post("/v1/models/m/predict", content=x.tobytes(), headers=raw)).status_code == 200
    untyped = b'{"inputs": ' + str(x[0].tolist()).encode() + b"}"
    assert (await strict.post("/v1/models/m/predict", content=untyped)).status_code == 200  # read as JSON, as before


async def test_draining_admits_nothing_new_but_health(app, client: httpx.AsyncClient) -> None:  # type: ignore[no-untyped-def]
    app.drain()
    r = await client.get("/v1/models")
    assert r.status_code == 503 and r.headers["connection"] == "close" and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "unavailable"
    assert (await client.post("/v1/models/m/predict", json={"inputs": [0.0]})).status_code == 503
    assert (await client.get("/healthz")).status_code == 200
    r = await client.get("/readyz")
    assert r.status_code == 503 and r.json()["error"]["details"]["checks"]["server"] == "draining"


def test_serving_on_all_interfaces_says_which_names_are_answered(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelport.cli.serve import _warn_if_public

    _warn_if_public(Settings(home=settings.home, host="0.0.0.0"))
    err = capsys.readouterr().err
    assert "MODELPORT_ALLOWED_HOSTS" in err and "localhost" in err and "plain HTTP" in err
    _warn_if_public(Settings(home=settings.home, host="127.0.0.1"))
    assert capsys.readouterr().err == ""
