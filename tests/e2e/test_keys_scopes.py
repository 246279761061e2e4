"""Scoped keys, service accounts and rotation through the CLI and the SDK, against a real server."""

from __future__ import annotations

import pytest

from modelport import AsyncClient, Client
from modelport.errors import PermissionDenied
from tests.e2e.test_cli import Server, cli, cli_json, expect_error


def test_cli_creates_a_scoped_service_account_key_and_rotates_it(live_server: Server) -> None:
    created = cli_json(
        live_server,
        "keys",
        "create",
        "cli-ci",
        "--scope-actions",
        "infer,read",
        "--scope-models",
        "cli-team-a-*",
        "--service-account",
        "--rate-limit-rps",
        "50",
    )
    assert created["scopes"] == {"actions": ["infer", "read"], "models": ["cli-team-a-*"]}
    assert (created["service_account"], created["rate_limit_rps"]) == (True, 50)
    me = cli_json(live_server, "whoami", key=created["key"])
    assert me["principal"] == "cli-ci" and me["scopes"]["models"] == ["cli-team-a-*"]
    expect_error(cli(live_server, "keys", "list", key=created["key"]), 3, "permission denied")

    rotated = cli_json(live_server, "keys", "rotate", created["id"], "--grace", "600")
    assert rotated["replaces"] == created["id"] and rotated["scopes"] == created["scopes"]
    assert cli_json(live_server, "whoami", key=created["key"])["principal"] == "cli-ci"  # within the grace
    assert cli_json(live_server, "whoami", key=rotated["key"])["principal"] == "cli-ci"
    shown = cli(live_server, "keys", "rotate", rotated["id"], "--grace", "0")
    assert "API key (shown once, store it now): mp_" in shown.stdout
    expect_error(cli(live_server, "whoami", key=rotated["key"]), 3, "expired")
    expect_error(cli(live_server, "keys", "create", "x", "--scope-actions", "fly"), 2, "should be 'infer'")


def test_sdk_scopes_and_rotation(admin: Client, live_server: Server) -> None:
    created = admin.create_key("sdk-ci", scopes={"actions": ["infer"]}, service_account=True, rate_limit_rps=5)
    assert created["scopes"] == {"actions": ["infer"], "models": None} and created["service_account"] is True
    with Client(live_server[0], created["key"]) as ci:
        with pytest.raises(PermissionDenied, match="wider"):
            ci.create_key("sdk-ci", scopes={"actions": ["infer", "read"]})
        mine = ci.rotate_key(created["id"], grace_s=60)
    assert mine["replaces"] == created["id"] and mine["rate_limit_rps"] == 5


async def test_async_sdk_rotates(live_server: Server) -> None:
    async with AsyncClient(*live_server) as mp:
        created = await mp.create_key("sdk-async", max_concurrent_jobs=2)
        rotated = await mp.rotate_key(created["id"], grace_s=0)
    assert rotated["max_concurrent_jobs"] == 2 and rotated["name"] == "sdk-async"
