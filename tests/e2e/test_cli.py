"""The ``modelport`` CLI as a real subprocess against a real server: exit codes, --json, --help."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import typer.main
from typer.testing import CliRunner

from modelport.cli.app import app
from modelport.client import Client

if TYPE_CHECKING:
    from tests.e2e.conftest import TinyOnnx

Server = tuple[str, str]


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any MODELPORT_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    return {**env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **extra}


def cli(
    server: Server, *args: str, key: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m modelport ARGS`` with MODELPORT_URL/MODELPORT_KEY pointing at ``server``."""
    env = clean_env(MODELPORT_URL=server[0], MODELPORT_KEY=key if key is not None else server[1])
    result = subprocess.run(
        [sys.executable, "-m", "modelport", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def cli_json(server: Server, *args: str, key: str | None = None, stdin: str | None = None) -> Any:
    result = cli(server, "--json", *args, key=key, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def expect_error(result: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert words in result.stderr
    assert result.stderr.startswith("error:")
    assert len(result.stderr.strip().splitlines()) == 1


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every (path, command) below ``command`` (typer ships its own click, so walk by attribute)."""
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found.extend(_commands(sub, (*path, name)))
    return found


def test_help_works_for_every_command_and_subcommand() -> None:
    commands = _commands(typer.main.get_command(app))
    paths = [path for path, _ in commands]
    assert ("models", "list") in paths
    assert ("serve",) in paths
    assert len(paths) >= 31  # root, 5 commands, 5 groups and their 20 subcommands
    runner = CliRunner()
    for path, command in commands:
        assert command.help, f"{path} has no docstring"
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "160"})
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output, path


def test_help_and_version_in_a_real_process(live_server: Server) -> None:
    result = cli(live_server, "--help")
    assert result.returncode == 0
    for group in ("models", "versions", "upload", "alias", "predict", "keys", "perms", "audit", "whoami", "serve"):
        assert group in result.stdout
    assert cli(live_server, "--version").stdout.startswith("modelport ")


def test_whoami(live_server: Server) -> None:
    me = cli_json(live_server, "whoami")
    assert (me["principal"], me["role"], me["url"]) == ("admin", "admin", live_server[0])
    table = cli(live_server, "whoami")
    assert table.returncode == 0
    assert "admin" in table.stdout


def test_errors_give_one_line_and_an_exit_code(live_server: Server, tmp_path: Path) -> None:
    expect_error(cli(live_server, "models", "get", "no-such"), 4, "not found")
    expect_error(cli(live_server, "models", "create", "Bad Name"), 2, "invalid model name")
    expect_error(cli(live_server, "whoami", key="mp_" + "z" * 40), 3, "invalid or revoked")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    expect_error(cli((dead, "k"), "whoami"), 1, f"cannot reach Modelport at {dead}")
    usage = cli(live_server, "models", "get")  # a missing argument is click's usage error
    assert usage.returncode == 2
    bad_json = cli(live_server, "predict", "x", "--input", "[1,")
    assert bad_json.returncode == 2
    assert "not valid JSON" in bad_json.stderr


def test_models_commands(live_server: Server) -> None:
    created = cli_json(live_server, "models", "create", "cli-crud", "-d", "first", "--tag", "a", "--tag", "b")
    assert (created["name"], created["tags"]) == ("cli-crud", ["a", "b"])
    expect_error(cli(live_server, "models", "create", "cli-crud"), 5, "already exists")

    page = cli_json(live_server, "models", "list", "--prefix", "cli-crud")
    assert [m["name"] for m in page["items"]] == ["cli-crud"]
    listed = cli(live_server, "models", "list", "--tag", "a")
    assert listed.returncode == 0
    assert "cli-crud" in listed.stdout

    updated = cli_json(live_server, "models", "update", "cli-crud", "-d", "second", "--clear-tags")
    assert (updated["description"], updated["tags"]) == ("second", [])
    shown = cli(live_server, "models", "get", "cli-crud")
    assert shown.returncode == 0
    assert "second" in shown.stdout
    assert cli_json(live_server, "models", "get", "cli-crud")["description"] == "second"

    assert cli(live_server, "models", "delete", "cli-crud").returncode == 0
    expect_error(cli(live_server, "models", "get", "cli-crud"), 4, "'cli-crud' not found")


def test_keys_perms_and_audit_commands(live_server: Server) -> None:
    created = cli_json(live_server, "keys", "create", "cli-dave", "--expires-in-days", "1")
    dave = created["key"]
    assert created["expires_at"] is not None
    shown = cli(live_server, "keys", "create", "cli-erin", "--role", "member")
    assert "API key (shown once, store it now): mp_" in shown.stdout
    assert created["id"] in {k["id"] for k in cli_json(live_server, "keys", "list")}

    assert cli(live_server, "models", "create", "cli-secret").returncode == 0
    expect_error(cli(live_server, "models", "get", "cli-secret", key=dave), 4, "not found")
    expect_error(cli(live_server, "keys", "list", key=dave), 3, "permission denied")
    perms = cli_json(live_server, "perms", "set", "cli-secret", "cli-dave", "reader")
    assert perms["permissions"]["cli-dave"] == "reader"
    assert {"principal": "cli-dave", "role": "reader"} in cli_json(live_server, "perms", "list", "cli-secret")
    assert cli_json(live_server, "models", "get", "cli-secret", key=dave)["your_role"] == "reader"
    expect_error(cli(live_server, "models", "update", "cli-secret", "-d", "x", key=dave), 3, "permission denied")
    assert cli(live_server, "perms", "delete", "cli-secret", "cli-dave").returncode == 0
    expect_error(cli(live_server, "models", "get", "cli-secret", key=dave), 4, "not found")

    audit = cli_json(live_server, "audit", "--action", "permission.", "--target", "cli-secret")
    assert [e["action"] for e in audit] == ["permission.delete", "permission.set"]
    assert cli(live_server, "audit", "--limit", "3").returncode == 0

    revoked = cli_json(live_server, "keys", "revoke", created["id"])
    assert revoked["revoked_at"] is not None
    expect_error(cli(live_server, "whoami", key=dave), 3, "revoked")


def test_upload_alias_predict_versions_commands(live_server: Server, tiny_onnx: TinyOnnx, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"labels": ["x", "y", "z"], "description": "from the file"}))
    args = ["upload", "cli-mlp", str(tiny_onnx.path), "--manifest", str(manifest)]
    v1 = cli_json(live_server, *args, "--labels", "a,b,c", "--softmax", "--argmax", "--alias", "production")
    assert (v1["version"], v1["aliases"]) == (1, ["production"])
    assert v1["manifest"]["labels"] == ["a", "b", "c"]  # flags win over the file
    assert v1["manifest"]["description"] == "from the file"
    plain = cli(live_server, "upload", "cli-mlp", str(tiny_onnx.path), "-d", "raw logits")
    assert plain.returncode == 0
    assert "uploaded cli-mlp version 2" in plain.stdout

    inputs = json.dumps(tiny_onnx.inputs.tolist())
    expected = [["a", "b", "c"][i] for i in tiny_onnx.logits.argmax(axis=1)]
    answer = cli_json(live_server, "predict", "cli-mlp", "--input", inputs)
    assert answer["version"] == 1
    assert [p["label"] for p in answer["predictions"]] == expected
    (tmp_path / "in.json").write_text(json.dumps({"inputs": tiny_onnx.inputs[:2].tolist()}))
    from_file = cli_json(live_server, "predict", "cli-mlp@production", "--file", str(tmp_path / "in.json"))
    assert [p["label"] for p in from_file["predictions"]] == expected[:2]
    table = cli(live_server, "predict", "cli-mlp:1", stdin=inputs)
    assert table.returncode == 0
    assert "cli-mlp version 1" in table.stdout
    assert expected[0] in table.stdout

    assert cli(live_server, "alias", "set", "cli-mlp", "staging", "2").returncode == 0
    aliases = {a["alias"]: a["version"] for a in cli_json(live_server, "alias", "list", "cli-mlp")}
    assert aliases == {"production": 1, "staging": 2}
    assert "outputs" in cli_json(live_server, "predict", "cli-mlp@staging", stdin=inputs)
    assert cli(live_server, "alias", "delete", "cli-mlp", "staging").returncode == 0
    expect_error(cli(live_server, "alias", "delete", "cli-mlp", "staging"), 4, "no alias")

    # Deleting: a version no request has loaded (see test_sdk.py, the stale-cache server bug).
    assert cli(live_server, "upload", "cli-mlp", str(tiny_onnx.path), "--alias", "canary").returncode == 0
    expect_error(cli(live_server, "versions", "delete", "cli-mlp", "3"), 5, "canary")
    assert cli(live_server, "alias", "delete", "cli-mlp", "canary").returncode == 0
    assert cli(live_server, "versions", "delete", "cli-mlp", "3").returncode == 0
    expect_error(cli(live_server, "versions", "get", "cli-mlp", "3"), 4, "no version 3")

    versions = cli_json(live_server, "versions", "list", "cli-mlp")
    assert [v["version"] for v in versions["items"]] == [2, 1]
    assert cli(live_server, "versions", "list", "cli-mlp").returncode == 0
    assert cli_json(live_server, "versions", "get", "cli-mlp", "2")["description"] == "raw logits"
    assert "mlp.onnx" in cli(live_server, "versions", "get", "cli-mlp", "1").stdout
    updated = cli_json(live_server, "versions", "update", "cli-mlp", "2", "--status", "archived")
    assert updated["status"] == "archived"
    assert cli_json(live_server, "versions", "lineage", "cli-mlp", "1")[0]["version"] == 1

    out = tmp_path / "download"
    files = cli_json(live_server, "versions", "download", "cli-mlp", "1", "--dest", str(out))
    assert [Path(f["path"]).name for f in files] == ["mlp.onnx"]
    assert (out / "mlp.onnx").read_bytes() == tiny_onnx.path.read_bytes()


def _read_lines(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def _wait_for(lines: queue.Queue[str], prefix: str, deadline: float) -> str:
    while True:
        line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        if line.startswith(prefix):
            return line.strip()


def test_serve_prints_a_one_time_admin_key_and_stops_on_sigterm(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = clean_env(MODELPORT_HOME=str(tmp_path / "home"))
    cmd = [sys.executable, "-m", "modelport", "serve", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        key = _wait_for(lines, "Admin API key (shown once, store it now): ", deadline).rsplit(" ", 1)[1]
        url = f"http://127.0.0.1:{port}"
        assert _wait_for(lines, "Modelport listening on ", deadline) == f"Modelport listening on {url}"
        with Client(url, key) as mp:
            assert mp.whoami()["role"] == "admin"
            assert mp.ready()["status"] == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_serve_rejects_a_bad_log_level(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modelport", "serve", "--log-level", "loud", "--home", str(tmp_path)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--log-level" in result.stderr


@pytest.mark.parametrize("args", [["keys", "create", "x", "--role", "king"], ["perms", "set", "m", "p", "boss"]])
def test_bad_choices_are_usage_errors(live_server: Server, args: list[str]) -> None:
    assert cli(live_server, *args).returncode == 2
