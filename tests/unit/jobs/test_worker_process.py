"""What a worker process is given: no keys, the server's settings; what a caller reads of a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.config import Settings
from modelport.errors import BadRequest
from modelport.jobs.worker import public_message, worker_env


def test_worker_env_drops_the_keys_and_carries_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELPORT_ADMIN_KEY", "mp_secret-admin")
    monkeypatch.setenv("MODELPORT_KEY", "mp_secret-client")
    monkeypatch.setenv("OTHER", "kept")
    settings = Settings(home=tmp_path / "h", database_url="postgresql+psycopg://db/x", job_heartbeat_timeout_s=7)
    env = worker_env(settings)
    assert "MODELPORT_ADMIN_KEY" not in env and "MODELPORT_KEY" not in env
    assert not any("mp_secret" in v for v in env.values())
    assert env["OTHER"] == "kept" and env["MODELPORT_HOME"] == str((tmp_path / "h").resolve())
    assert env["MODELPORT_DATABASE_URL"] == "postgresql+psycopg://db/x"
    assert env["MODELPORT_JOB_HEARTBEAT_TIMEOUT_S"] == "7.0"
    for name, value in env.items():  # what the worker process reads back
        monkeypatch.setenv(name, value)
    back = Settings()
    assert back.job_heartbeat_timeout_s == 7.0 and back.home == (tmp_path / "h").resolve()


def test_failure_messages_never_show_the_server_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    inside = settings.home.resolve() / "jobs" / "x" / "model.onnx"
    assert (
        public_message(OSError(f"cannot open {inside}"), settings)
        == "OSError: cannot open $MODELPORT_HOME/jobs/x/model.onnx"
    )
    assert public_message(BadRequest(message="bad spec"), settings) == "bad spec"
    assert len(public_message(ValueError("x" * 5000), settings)) == 1000
