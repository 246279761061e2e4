"""Jobs end to end: a real server, real worker processes and real (tiny) training runs.

The SDK and the CLI submit specs and follow the server-sent events; a worker is killed with SIGKILL in
the middle of training and the job resumes from its checkpoint on the next worker; ``modelport serve``
runs its workers without the server's keys and a job survives a restart of the server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml

from modelport.api.app import create_app
from modelport.client import AsyncClient, Client
from modelport.config import Settings
from tests.security.live import free_port, wait_ready

KEY = "mp_jobs-e2e-admin-key-0123456789abcdefghijk"
FAST = {"MODELPORT_JOB_HEARTBEAT_S": "0.5", "MODELPORT_JOB_HEARTBEAT_TIMEOUT_S": "3", "MODELPORT_JOB_POLL_S": "0.1"}
Server = tuple[str, Path]  # (url, home)


def digits(name: str, *, epochs: int = 1, batch: int = 64, units: int = 16, **train: Any) -> dict[str, Any]:
    """sklearn's 8x8 digits and a small MLP: a real run of a second or so (more with bigger numbers)."""
    return {
        "name": name,
        "data": {"source": "builtin", "name": "digits", "preprocess": [{"scale": 0.0625}]},
        "model": {"layers": [{"dense": units, "activation": "relu"}, {"dense": 10, "activation": "softmax"}]},
        "train": {"epochs": epochs, "batch_size": batch, "optimizer": {"name": "sgd", "lr": 0.05}, **train},
        "register": {"model": name, "alias": "staging"},
    }


def slow(name: str, epochs: int) -> dict[str, Any]:
    """About 0.1 s per epoch, with a checkpoint every 100 steps as well as after each epoch."""
    return digits(name, epochs=epochs, batch=4, units=128, checkpoint={"every_steps": 100})


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    return {**env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **extra}


@contextmanager
def api_server(home: Path) -> Iterator[str]:
    """The API (no workers) in a thread, on a free port, over ``home``."""
    settings = Settings(home=home, admin_key=KEY, port=0)
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="jobs-e2e-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=30.0)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def start_worker(home: Path, log: Path) -> subprocess.Popen[bytes]:
    env = clean_env(MODELPORT_HOME=str(home), **FAST)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "modelport", "worker"], env=env, stdout=out, stderr=out)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(MODELPORT_URL=server[0], MODELPORT_KEY=KEY)
    cmd = [sys.executable, "-m", "modelport", *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def write_spec(folder: Path, spec: dict[str, Any], name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An API server and one worker process sharing a home, for the whole module."""
    home = tmp_path_factory.mktemp("jobs-e2e") / "home"
    with api_server(home) as url:
        worker = start_worker(home, home.parent / "worker.log")
        try:
            yield url, home
        finally:
            assert stop(worker) == 0


def test_sdk_trains_follows_live_events_and_the_version_serves(jobs_server: Server) -> None:
    seen: list[dict[str, Any]] = []
    with Client(jobs_server[0], KEY) as mp:
        job = mp.train(digits("sdk-digits", epochs=2), follow=True, on_event=seen.append)
        assert job["status"] == "succeeded", job["error"]
        assert job["result"]["model"] == "sdk-digits" and job["result"]["version"] == 1
        assert job["progress"]["epoch"] == 2 and "val_accuracy" in job["progress"]["metrics"]
        kinds = [e["type"] for e in seen]
        assert kinds[:3] == ["status", "status", "started"] and kinds.count("epoch") == 2
        assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
        assert seen[-1]["status"] == "succeeded"
        answer = mp.predict("sdk-digits@staging", [[0.0] * 64])
        assert answer["version"] == 1
        assert mp.lineage("sdk-digits", 1)[0]["job"] == job["id"]
        assert "epoch" in mp.job_logs(job["id"])
        assert list(mp.job_events(job["id"], last_event_id=seen[-2]["seq"])) == [seen[-1]]


async def test_the_async_client_trains_and_follows(jobs_server: Server) -> None:
    async with AsyncClient(jobs_server[0], KEY) as mp:
        seen: list[dict[str, Any]] = []
        job = await mp.train(digits("async-digits"), follow=True, on_event=seen.append)
        assert job["status"] == "succeeded" and job["result"]["version"] == 1
        replay = [e async for e in mp.job_events(job["id"])]
        assert replay == seen and "status=succeeded" in await mp.job_logs(job["id"], tail=1)
        assert (await mp.list_jobs(status="succeeded"))["total"] >= 1
        assert (await mp.get_job(job["id"]))["id"] == job["id"]


def test_cli_train_detach_then_follow_list_and_logs(jobs_server: Server, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, digits("cli-digits", epochs=2))
    detached = cli(jobs_server, "train", str(spec), "--detach")
    assert detached.returncode == 0, detached.stderr
    job_id = detached.stdout.strip()
    assert len(job_id) == 36
    followed = cli(jobs_server, "jobs", "follow", job_id)
    assert followed.returncode == 0, followed.stderr
    assert "succeeded: registered cli-digits:1 (alias staging)" in followed.stdout
    assert "val_accuracy" in followed.stdout
    listed = json.loads(cli(jobs_server, "--json", "jobs", "list", "--status", "succeeded").stdout)
    assert job_id in [j["id"] for j in listed["items"]]
    table = cli(jobs_server, "jobs", "list", "--limit", "1")
    assert "epoch 2/2" in table.stdout and "cli-digits:1" in table.stdout
    logs = cli(jobs_server, "jobs", "logs", job_id)
    assert "started epochs=2" in logs.stdout and "status status=succeeded" in logs.stdout
    live = cli(jobs_server, "train", str(spec))  # the same spec again, followed with a progress bar
    assert live.returncode == 0, live.stderr
    assert "epoch 2/2" in live.stdout and "registered cli-digits:2" in live.stdout
    bad = write_spec(tmp_path, {**digits("x"), "train": {"optimizer": {"name": "adamm"}}}, "bad.yaml")
    refused = cli(jobs_server, "train", str(bad))
    assert refused.returncode == 2 and "train.optimizer.name" in refused.stderr


def test_cancel_a_running_job_from_the_cli(jobs_server: Server, tmp_path: Path) -> None:
    with Client(jobs_server[0], KEY) as mp:
        job = mp.submit_job("train", slow("cancel-me", epochs=500))
        for event in mp.job_events(job["id"]):
            if event["type"] == "epoch":
                break
        cancelled = cli(jobs_server, "jobs", "cancel", job["id"])
        assert cancelled.returncode == 0 and "asked to stop" in cancelled.stdout
        followed = cli(jobs_server, "jobs", "follow", job["id"])
        assert followed.returncode == 1 and "cancelled" in followed.stderr
        final = mp.get_job(job["id"])
        assert final["status"] == "cancelled" and final["progress"]["epoch"] < 500
        assert not (jobs_server[1] / "jobs" / job["id"]).exists()


def test_sweep_cli_ranks_trials_and_registers_the_best(jobs_server: Server, tmp_path: Path) -> None:
    spec = {
        "base": digits("sweep-digits"),
        "search": "grid",
        "parameters": {"train.optimizer.lr": [0.0001, 0.1]},
        "metric": "val_accuracy",
        "mode": "max",
    }
    result = cli(jobs_server, "sweep", str(write_spec(tmp_path, spec)))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "trials by val_accuracy (max)" in out and "registered sweep-digits:1" in out
    assert out.count("trial 1 succeeded") + out.count("trial 2 succeeded") == 2
    with Client(jobs_server[0], KEY) as mp:
        assert mp.list_versions("sweep-digits")["total"] == 1
        sweep = mp.list_jobs(kind="sweep")["items"][0]
        assert sweep["result"]["best"]["params"] == {"train.optimizer.lr": 0.1}
        assert mp.list_jobs(parent=sweep["id"])["total"] == 2


def test_kill_9_mid_training_resumes_from_the_checkpoint_on_the_next_worker(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with api_server(home) as url, Client(url, KEY) as mp:
        first = start_worker(home, tmp_path / "w1.log")
        try:
            job = mp.submit_job("train", slow("resumed", epochs=40))
            for event in mp.job_events(job["id"]):
                if event["type"] == "checkpoint" and event["step"] >= 100:  # not the one at step 0
                    break
            first.send_signal(signal.SIGKILL)
            assert first.wait(timeout=10) == -signal.SIGKILL
        finally:
            if first.poll() is None:
                first.kill()
        assert mp.get_job(job["id"])["status"] == "running"  # nobody knows yet that its worker is gone
        second = start_worker(home, tmp_path / "w2.log")
        try:
            seen = list(mp.job_events(job["id"]))
        finally:
            assert stop(second) == 0
        final = mp.get_job(job["id"])
    assert final["status"] == "succeeded", final["error"]
    assert final["attempts"] == 2 and final["result"]["version"] == 1
    statuses = [(e["status"], e.get("attempt"), e.get("reason", "")) for e in seen if e["type"] == "status"]
    assert [s[:2] for s in statuses] == [
        ("queued", None),
        ("running", 1),
        ("queued", None),
        ("running", 2),
        ("succeeded", None),
    ]
    assert "stopped responding" in statuses[2][2]
    resumed = [e for e in seen if e["type"] == "log" and "resumed at" in e["message"]]
    assert len(resumed) == 1
    second = seen.index(next(e for e in seen if e["type"] == "status" and e.get("attempt") == 2))
    before = [e["step"] for e in seen[:second] if e["type"] == "checkpoint"]
    after = [e["step"] for e in seen[second:] if e["type"] == "checkpoint"]
    assert after[0] > max(before) >= 100  # went on from its checkpoint; a fresh start saves at step 0
    assert sum(e["type"] == "started" for e in seen) == 2


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _serve(home: Path, port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    env = clean_env(MODELPORT_HOME=str(home), MODELPORT_ADMIN_KEY=KEY, **FAST)
    cmd = [sys.executable, "-m", "modelport", "serve", "--port", str(port), "--job-workers", str(workers)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out)
    wait_ready(f"http://127.0.0.1:{port}", proc, timeout=30.0)
    return proc


def test_serve_runs_workers_without_keys_and_a_job_survives_a_restart(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    url = f"http://127.0.0.1:{port}"
    serve = _serve(home, port, 1, tmp_path / "serve.log")
    try:
        with Client(url, KEY) as mp:
            job = mp.submit_job("train", slow("survivor", epochs=30))
            for event in mp.job_events(job["id"]):
                if event["type"] == "checkpoint":
                    break
            workers = _children(serve.pid)
            assert len(workers) == 1
            environ = Path(f"/proc/{workers[0]}/environ").read_bytes()
            assert b"MODELPORT_ADMIN_KEY" not in environ and KEY.encode() not in environ
            assert b"worker" in Path(f"/proc/{workers[0]}/cmdline").read_bytes()
        assert stop(serve) == 0  # SIGTERM: the worker checkpoints and gives the job back
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
        serve = _serve(home, port, 1, tmp_path / "serve.log")
        with Client(url, KEY) as mp:
            seen = list(mp.job_events(job["id"]))
            final = mp.get_job(job["id"])
    finally:
        stop(serve)
    assert final["status"] == "succeeded", final["error"]
    assert final["attempts"] == 1  # a clean shutdown is not a failed attempt
    reasons = [e.get("reason", "") for e in seen if e["type"] == "status" and e["status"] == "queued"]
    assert any("shut down" in r for r in reasons)
    assert any(e["type"] == "log" and "resumed at" in e["message"] for e in seen)
    assert KEY not in (tmp_path / "serve.log").read_text()
