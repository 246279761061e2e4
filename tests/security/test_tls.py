"""``modelport serve --tls-cert --tls-key``: HTTPS with a certificate made here, alone and with
``--workers``; plain HTTP to the TLS port gets nothing."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.security.live import HEADERS, serve_process

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (P-256: quick to make)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key)]
    names = ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    subprocess.run(
        ["openssl", "req", "-x509", *new_key, "-out", str(cert), "-days", "1", *names], check=True, capture_output=True
    )
    return cert, key


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "two-workers"])
def test_https_works_and_plain_http_to_the_tls_port_fails(
    tmp_path: Path, certificate: tuple[Path, Path], workers: list[str]
) -> None:
    cert, key = certificate
    trust = ssl.create_default_context(cafile=str(cert))
    args = ["--tls-cert", str(cert), "--tls-key", str(key), *workers]
    with serve_process(tmp_path / "home", *args, scheme="https", verify=trust) as (url, proc):
        assert httpx.get(f"{url}/healthz", verify=trust).json() == {"status": "ok"}
        assert httpx.get(f"{url}/v1/models", headers=HEADERS, verify=trust).status_code == 200
        with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused by a verifying client
            httpx.get(f"{url}/healthz")
        with pytest.raises(httpx.TransportError):
            httpx.get(url.replace("https://", "http://") + "/healthz", timeout=5)
        proc.terminate()
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "listening on https://127.0.0.1:" in output, output


def test_tls_needs_both_files(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, _ = certificate
    for args in (["--tls-cert", str(cert)], ["--tls-cert", str(cert), "--tls-key", str(tmp_path / "missing.pem")]):
        result = subprocess.run(
            [sys.executable, "-m", "modelport", "serve", "--home", str(tmp_path / "home"), "--port", "0", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert "TLS" in result.stderr and "Traceback" not in result.stderr
