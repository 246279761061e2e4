"""A job's code cannot reach the server's secrets or other tenants' data, by construction.

Through the real worker and real job processes: a ``model.python`` network that, while it is built,
tries to read the master key, open the SQLite file, list the blobs, write in the home, reach PostgreSQL,
read the worker's environment and the fork server's memory, signal the worker and connect to the fork
server's socket; every attempt fails while the training succeeds. A job that sends the worker a pickle,
bytes that are not JSON, a request naming another owner or half a message, or that never reads its
answers, is failed, nothing is unpickled, and the worker runs the next job. And the worker's checks of
the requests themselves, one by one.
"""

from __future__ import annotations

import json
import os
import pickle
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelport.config import Settings
from modelport.jobs import events, process, queue, rpc, sandbox
from modelport.jobs.rpc import ProtocolError
from modelport.jobs.services import LocalServices
from modelport.jobs.worker import Worker
from tests.integration.test_datasets_api import digits_npz, put

LANDLOCK_ABI, NO_LANDLOCK = sandbox.landlock_abi()

SANDBOXED = (
    "read master.key",
    "open the sqlite file",
    "list blobs",
    "write in the home",
    "read another job's folder",
    "connect to 127.0.0.1:5432",
    "read the worker's environ",
    "read the fork server's memory",
    "connect to the fork server's socket",
)
"""What Landlock (files, TCP, ptrace) and the seccomp filter (UNIX sockets) refuse."""


def digits(name: str, model: dict[str, Any], **train: Any) -> dict[str, Any]:
    return {
        "name": name,
        "data": {"source": "builtin", "name": "digits", "preprocess": [{"scale": 0.0625}]},
        "model": model,
        "train": {"epochs": 1, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.01}, **train},
    }


async def run_one(client: httpx.AsyncClient, worker: Worker, spec: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/v1/jobs", json={"kind": "train", "spec": spec})
    assert r.status_code == 201, r.text
    assert worker.step()
    done: dict[str, Any] = (await client.get(f"/v1/jobs/{r.json()['id']}")).json()
    return done


def probe_record(app: FastAPI, job_id: str) -> dict[str, Any]:
    for event in events.since(app.state.ctx.db, job_id, 0):
        message = str(event.data.get("message", ""))
        if event.type == "log" and message.startswith("probe "):
            found: dict[str, Any] = json.loads(message.removeprefix("probe "))
            return found
    raise AssertionError("the probe recorded nothing")


async def test_a_job_reaches_no_secret_and_no_other_tenant_yet_trains(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings
) -> None:
    home = settings.home.resolve()
    assert (home / "secrets" / "master.key").is_file()  # a new home gets its key: there is one to steal
    process.start_forkserver()  # running, so its socket exists to be tried
    address = forkserver._forkserver._forkserver_address  # type: ignore[attr-defined]
    worker = Worker(settings)
    other = (settings.jobs_dir / "someone-elses-job").resolve()
    other.mkdir(parents=True)
    try:
        kwargs = {"home": str(home), "worker_pid": os.getpid(), "forkserver_socket": str(address)}
        model = {"python": "tests.security._isolation_probe:EscapeProbe", "kwargs": kwargs}
        done = await run_one(client, worker, digits("escape", model))
    finally:
        worker.close()
    assert done["status"] == "succeeded", done["error"]
    assert (await client.get("/v1/models/escape/versions/1")).status_code == 200  # registered by the worker
    record = probe_record(app, done["id"])
    # what holds with or without Landlock: the job's process has no database, no store, no key
    assert record["objects in memory"] == [] and record["open files in the home"] == []
    assert record["secret variables"] == []
    assert not (home / "planted").exists()
    if not LANDLOCK_ABI:
        pytest.skip(f"the Landlock part needs a kernel with Landlock: {NO_LANDLOCK}")
    for attempt in SANDBOXED:
        assert record[attempt].startswith("refused"), (attempt, record[attempt])
    if LANDLOCK_ABI >= 6:  # scope SIGNAL
        assert record["signal the worker"].startswith("refused")


@pytest.mark.parametrize("how", ["pickle", "not-json", "another-owner", "half-a-message", "unread-answers"])
async def test_a_job_abusing_the_services_channel_is_failed_and_the_worker_goes_on(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    tmp_path: Path,
    how: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(process, "IO_TIMEOUT_S", 2.0)  # how long a half message or an unread answer may wait
    marker = tmp_path / "unpickled"
    worker = Worker(settings)
    try:
        model = {"python": "tests.security._isolation_probe:PipeAbuse", "kwargs": {"how": how, "marker": str(marker)}}
        abuse = await run_one(client, worker, digits(f"abuse-{how}", model))
        assert abuse["status"] == "failed"
        assert abuse["error"].startswith("the job's process broke the services protocol")
        assert not marker.exists()  # the worker never unpickled what the job sent
        after = await run_one(client, worker, digits("after", {"layers": [{"dense": 10, "activation": "softmax"}]}))
        assert after["status"] == "succeeded", after["error"]
    finally:
        worker.close()
    assert (await client.get(f"/v1/models/abuse-{how}")).status_code == 404  # nothing registered for it


async def test_a_parallel_job_trains_in_the_sandbox(client: httpx.AsyncClient, settings: Settings) -> None:
    """gloo's ranks meet through a file store and talk over ephemeral ports, which the sandbox allows."""
    worker = Worker(settings.model_copy(update={"job_sandbox": "required" if LANDLOCK_ABI else "best-effort"}))
    try:
        spec = digits("ddp", {"layers": [{"dense": 16, "activation": "relu"}, {"dense": 10, "activation": "softmax"}]})
        spec["train"]["parallel"] = {"strategy": "data", "workers": 2}
        done = await run_one(client, worker, spec)
    finally:
        worker.close()
    assert done["status"] == "succeeded", done["error"]


# -- the worker's checks of each request ---------------------------------------------------------------
@pytest.fixture
async def services(client: httpx.AsyncClient, app: FastAPI, settings: Settings) -> LocalServices:
    r = await client.post("/v1/jobs", json={"kind": "train", "spec": digits("checked", {"layers": [{"dense": 10}]})})
    assert r.status_code == 201, r.text
    ctx = app.state.ctx
    job = queue.claim(ctx.db, "w-test")
    assert job is not None
    found = LocalServices(ctx.db, ctx.store, settings, job, "w-test", on_lost=lambda: None)
    found.workdir.mkdir(parents=True)
    return found


def call(method: str, **args: Any) -> bytes:
    return json.dumps({"call": method, "args": args}).encode()


def answer(services: LocalServices, raw: bytes) -> dict[str, Any]:
    reply = rpc.receive(services, raw)
    assert isinstance(reply, bytes)
    decoded: dict[str, Any] = json.loads(reply)
    return decoded


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (pickle.dumps({"call": "trials", "args": {}}), "not JSON"),
        (b"[1, 2]", "one of"),
        (call("drop_table", name="api_keys"), "unknown method"),
        (call("set_alias", alias="prod", version=1, owner="admin"), "exactly the arguments"),
        (call("set_alias", alias="prod", version=1, job="another-job"), "exactly the arguments"),
        (call("set_alias", alias="prod", version="1"), "wrong type"),
        (call("fetch_dataset", name="x" * 300), "wrong type or size"),
        (json.dumps({"outcome": {"status": "succeeded", "result": "pwned"}}).encode(), "an outcome"),
    ],
)
async def test_malformed_requests_are_protocol_errors(services: LocalServices, raw: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        rpc.receive(services, raw)


async def test_paths_outside_the_jobs_folder_are_refused(services: LocalServices, settings: Settings) -> None:
    manifest = {"format": "onnx"}
    for bundle in ("/etc", "../someone-else", str(settings.home / "secrets"), "bundle/../../x"):
        got = answer(
            services, call("register", bundle=bundle, manifest=manifest, alias=None, transform=None, report=None)
        )
        assert "outside the job's folder" in got["error"]["message"], (bundle, got)
    got = answer(services, call("fetch_version", model="checked", version=1, folder="/tmp/elsewhere"))
    assert "outside the job's folder" in got["error"]["message"]
    assert answer(services, call("trials")) == {"ok": []}


async def test_links_in_the_jobs_folder_are_never_followed(
    client: httpx.AsyncClient, services: LocalServices, settings: Settings, tmp_path: Path
) -> None:
    key = settings.home.resolve() / "secrets" / "master.key"
    bundle = services.workdir / "bundle"
    bundle.mkdir()
    (bundle / "model.onnx").symlink_to(key)  # the worker would upload the key as a model file
    got = answer(services, call("register", bundle="bundle", manifest={}, alias=None, transform=None, report=None))
    assert "not a regular file" in got["error"]["message"]
    assert (await client.get("/v1/models/checked")).status_code == 404

    assert (await put(client, "digits-npz", "digits.npz", digits_npz())).status_code == 201
    outside = tmp_path / "outside"
    outside.mkdir()
    (services.workdir / "datasets").symlink_to(outside)  # the worker would write where the link points
    got = answer(services, call("fetch_dataset", name="digits-npz"))
    assert "not a folder of the job's" in got["error"]["message"]
    assert list(outside.iterdir()) == []
    (services.workdir / "datasets").unlink()
    got = answer(services, call("fetch_dataset", name="digits-npz"))
    assert Path(got["ok"]).read_bytes() == digits_npz()  # the same request, without the link, works


async def test_a_sweep_registers_only_its_own_trials(services: LocalServices) -> None:
    got = answer(services, call("register_trial", trial=services.job.id, alias=None, transform=None))
    assert "not a succeeded trial of this sweep" in got["error"]["message"]


def test_the_job_process_gets_no_key_and_no_database_url(tmp_path: Path) -> None:
    full = Settings(
        home=tmp_path,
        admin_key="mp_secret-admin",
        master_key="00" * 32,
        database_url="postgresql+psycopg://user:secret@db/x",
        job_data_dirs=[tmp_path / "data"],
    )
    given = process.job_settings(full)
    assert given.admin_key is None and given.master_key is None and given.database_url is None
    assert given.home == full.home and given.job_data_dirs == full.job_data_dirs
    assert "secret" not in repr(given.model_dump())
