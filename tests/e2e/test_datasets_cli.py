"""``modelport datasets`` as a real subprocess against a real server: upload, list --json, get, delete."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.e2e.test_cli import Server, cli, cli_json, expect_error


def test_datasets_upload_list_get_delete(live_server: Server, tmp_path: Path) -> None:
    path = tmp_path / "tiny.npz"
    np.savez(path, x=np.arange(12, dtype=np.float32).reshape(6, 2), y=np.arange(6, dtype=np.int64) % 2)
    uploaded = cli_json(live_server, "datasets", "upload", "cli-tiny", str(path), "-d", "six rows")
    assert (uploaded["name"], uploaded["format"], uploaded["filename"]) == ("cli-tiny", "npz", "tiny.npz")
    assert uploaded["size_bytes"] == path.stat().st_size and uploaded["description"] == "six rows"

    page = cli_json(live_server, "datasets", "list")
    assert "cli-tiny" in [d["name"] for d in page["items"]]
    assert cli_json(live_server, "datasets", "get", "cli-tiny")["sha256"] == uploaded["sha256"]
    shown = cli(live_server, "datasets", "list")
    assert shown.returncode == 0 and "cli-tiny" in shown.stdout

    expect_error(cli(live_server, "datasets", "upload", "cli-tiny", str(path)), 5, "already exists")
    assert cli(live_server, "datasets", "delete", "cli-tiny").returncode == 0
    expect_error(cli(live_server, "datasets", "get", "cli-tiny"), 4, "'cli-tiny' not found")
