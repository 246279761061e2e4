"""Jobs over the real app: submit and validation, tenants, listing, cancel, claims, reaping, SSE, logs,
and real (tiny) training runs and a sweep on an in-process worker."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from modelport.api.app import create_app
from modelport.auth.principals import Principal
from modelport.config import Settings
from modelport.jobs import events, queue
from modelport.jobs.tables import Job
from modelport.jobs.worker import Worker
from modelport.registry.db import Database
from modelport.registry.tables import utcnow
from tests.conftest import ADMIN_KEY, member_key

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

ALICE = Principal(name="alice", role="member")


def digits_spec(name: str = "digits-mlp", **train: Any) -> dict[str, Any]:
    """A real, tiny training run: sklearn's 8x8 digits, a 64-16-10 MLP, one epoch (about a second)."""
    return {
        "name": name,
        "data": {"source": "builtin", "name": "digits", "preprocess": [{"scale": 0.0625}]},
        "model": {"layers": [{"dense": 16, "activation": "relu"}, {"dense": 10, "activation": "softmax"}]},
        "train": {"epochs": 1, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.01}, **train},
    }


def sse(text: str) -> list[dict[str, Any]]:
    """Parse a whole event stream into ``{"id", "event", "data"}`` frames (comments skipped)."""
    frames = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            frames.append({"id": int(fields["id"]), "event": fields["event"], "data": orjson.loads(fields["data"])})
    return frames


def ctx_of(app: FastAPI) -> Any:
    return app.state.ctx


async def as_member(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {await member_key(client, name)}"}


async def test_submit_queues_a_validated_job_and_audits_it(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/jobs", json={"kind": "train", "spec": digits_spec()})
    assert r.status_code == 201, r.text
    job = r.json()
    assert uuid.UUID(job["id"]).version == 4
    assert (job["kind"], job["status"], job["owner"], job["attempts"]) == ("train", "queued", "admin", 0)
    assert job["spec"]["name"] == "digits-mlp" and job["result"] is None
    got = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert got["status"] == "queued" and got["progress"] == {}
    audit = (await client.get("/v1/audit", params={"action": "job."})).json()["items"]
    assert audit[0]["action"] == "job.submit" and audit[0]["target"] == f"job:{job['id']}"
    assert audit[0]["details"]["model"] == "digits-mlp"


@pytest.mark.parametrize(
    ("spec", "code", "words"),
    [
        ({**digits_spec(), "train": {"optimizer": {"name": "adamm"}}}, "invalid_spec", "train.optimizer.name"),
        ({**digits_spec(), "data": {"source": "builtin", "name": "nope"}}, "invalid_spec", "data"),
        ({**digits_spec(), "extra": 1}, "invalid_spec", "extra: unknown field"),
        ({**digits_spec(), "register": {"model": "Bad Name"}}, "invalid_name", "Bad Name"),
        ({**digits_spec(), "data": {"source": "dataset", "name": "X!"}}, "invalid_name", "invalid dataset name"),
    ],
)
async def test_an_invalid_train_spec_is_a_400_naming_the_field(
    client: httpx.AsyncClient, spec: dict[str, Any], code: str, words: str
) -> None:
    r = await client.post("/v1/jobs", json={"kind": "train", "spec": spec})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code and words in r.json()["error"]["message"]
    assert (await client.get("/v1/jobs")).json()["total"] == 0


async def test_an_invalid_sweep_is_a_400_naming_the_field(client: httpx.AsyncClient) -> None:
    base = digits_spec()
    cases = [
        ({"base": base, "parameters": {"train.lr": [1]}, "bogus": 1}, "bogus"),
        ({"base": base, "parameters": {"../x": [1]}}, "parameters"),
        ({"base": base, "parameters": {"train.epochs": [1]}, "search": "random"}, "trials"),
        ({"base": {**base, "train": {"optimizer": {"name": "x"}}}, "parameters": {"train.epochs": [1]}}, "base"),
        ({"base": base, "parameters": {"train.optimizer.momentum": [0.5]}}, "trial 1"),
        (
            {"base": base, "parameters": {"train.batch_size": list(range(1, 20)), "train.epochs": list(range(1, 10))}},
            "at most",
        ),
    ]
    for spec, words in cases:
        r = await client.post("/v1/jobs", json={"kind": "sweep", "spec": spec})
        assert r.status_code == 400, (spec, r.text)
        assert words in r.json()["error"]["message"], r.text
    r = await client.post("/v1/jobs", json={"kind": "deploy", "spec": {}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed"


async def test_another_principals_job_is_a_404_everywhere(client: httpx.AsyncClient) -> None:
    alice, bob = await as_member(client, "alice"), await as_member(client, "bob")
    job = (await client.post("/v1/jobs", json={"kind": "train", "spec": digits_spec()}, headers=alice)).json()
    assert job["owner"] == "alice"
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
        ("GET", f"/v1/jobs/{job['id']}/logs"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", "/v1/jobs/not-a-uuid"),
        ("GET", f"/v1/jobs/{uuid.uuid4()}"),
    ]:
        r = await client.request(method, path, headers=bob)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["code"] == "job_not_found"
    assert (await client.get("/v1/jobs", headers=bob)).json()["total"] == 0
    assert (await client.get("/v1/jobs", headers=alice)).json()["total"] == 1
    assert (await client.get(f"/v1/jobs/{job['id']}")).status_code == 200  # admins see every job
    anonymous = await client.get("/v1/jobs", headers={"Authorization": ""})
    assert anonymous.status_code == 401


async def test_members_may_not_reach_outside_their_models_and_data(client: httpx.AsyncClient, tmp_path: Any) -> None:
    alice, bob = await as_member(client, "alice"), await as_member(client, "bob")
    assert (await client.post("/v1/models", json={"name": "alices"}, headers=alice)).status_code == 201
    take = {**digits_spec(), "register": {"model": "alices"}}
    r = await client.post("/v1/jobs", json={"kind": "train", "spec": take}, headers=bob)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    await client.put("/v1/models/alices/permissions/bob", json={"role": "reader"})
    r = await client.post("/v1/jobs", json={"kind": "train", "spec": take}, headers=bob)
    assert r.status_code == 403
    files = {**digits_spec(), "data": {"source": "npz", "path": str(tmp_path / "x.npz")}}
    r = await client.post("/v1/jobs", json={"kind": "train", "spec": files}, headers=bob)
    assert r.status_code == 403 and "job_data_dirs" in r.json()["error"]["message"]
    code = {**digits_spec(), "model": {"python": "torch.nn:Linear", "kwargs": {"in_features": 64, "out_features": 10}}}
    r = await client.post(
        "/v1/jobs", json={"kind": "train", "spec": {**code, "register": {"model": "alices"}}}, headers=bob
    )
    assert r.status_code == 403  # a python module, like any job, needs write permission on the target
    r = await client.post(
        "/v1/jobs", json={"kind": "train", "spec": {**code, "register": {"model": "bobs"}}}, headers=bob
    )
    assert r.status_code == 201  # writers (here: the owner-to-be) may, by default


async def test_python_modules_can_be_limited_to_admins(settings: Settings, tmp_path: Any) -> None:
    strict = create_app(Settings(**{**settings.model_dump(), "job_python_modules": "admins"}))
    transport = httpx.ASGITransport(app=strict)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=ADMIN) as admin_client:
        bob = await as_member(admin_client, "bob")
        code = {
            **digits_spec(),
            "model": {"python": "torch.nn:Linear", "kwargs": {"in_features": 64, "out_features": 10}},
        }
        r = await admin_client.post("/v1/jobs", json={"kind": "train", "spec": code}, headers=bob)
        assert r.status_code == 403 and "admins only" in r.json()["error"]["message"]
    strict.state.ctx.runtime.close()
    strict.state.ctx.db.dispose()


async def test_list_filters_and_pages(client: httpx.AsyncClient, app: FastAPI) -> None:
    ids = [
        (await client.post("/v1/jobs", json={"kind": "train", "spec": digits_spec()})).json()["id"] for _ in range(3)
    ]
    ctx = ctx_of(app)
    claimed = queue.claim(ctx.db, "w1")
    assert claimed is not None and claimed.id == ids[0]  # oldest first
    page = (await client.get("/v1/jobs", params={"limit": 2})).json()
    assert page["total"] == 3 and [j["id"] for j in page["items"]] == [ids[2], ids[1]]  # newest first
    assert [j["id"] for j in (await client.get("/v1/jobs", params={"limit": 2, "offset": 2})).json()["items"]] == [
        ids[0]
    ]
    running = (await client.get("/v1/jobs", params={"status": "running"})).json()
    assert [j["id"] for j in running["items"]] == [ids[0]]
    assert (await client.get("/v1/jobs", params={"kind": "sweep"})).json()["total"] == 0
    assert (await client.get("/v1/jobs", params={"status": "lost"})).status_code == 400


async def test_cancel_a_queued_job_at_once_and_a_running_one_by_request(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    ctx = ctx_of(app)
    first = (await client.post("/v1/jobs", json={"kind": "train", "spec": digits_spec()})).json()
    second = (await client.post("/v1/jobs", json={"kind": "train", "spec": digits_spec()})).json()
    claimed = queue.claim(ctx.db, "w1")
    assert claimed is not None and claimed.id == first["id"]

    r = await client.post(f"/v1/jobs/{second['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert (await client.post(f"/v1/jobs/{second['id']}/cancel")).json()["status"] == "cancelled"  # idempotent
    assert queue.claim(ctx.db, "w2") is None  # a cancelled job is never claimed

    r = await client.post(f"/v1/jobs/{first['id']}/cancel")
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    assert queue.heartbeat(ctx.db, first["id"], "w1") == (True, True)  # the worker learns it at its next beat
    assert queue.finish(ctx.db, first["id"], "w1", "cancelled")
    r = await client.post(f"/v1/jobs/{first['id']}/cancel")
    assert r.json()["status"] == "cancelled"
    third = (await client.post("/v1/jobs", json={"kind": "train", "spec": digits_spec()})).json()
    assert (claimed := queue.claim(ctx.db, "w1")) is not None
    queue.finish(ctx.db, third["id"], "w1", "succeeded", result={"model": "m", "version": 1})
    r = await client.post(f"/v1/jobs/{third['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"
    audit = (await client.get("/v1/audit", params={"action": "job.cancel"})).json()["items"]
    assert [a["action"] for a in audit] == ["job.cancelled", "job.cancel", "job.cancel"]  # the worker's end, 2 asks


def test_two_claimers_never_get_the_same_job(app: FastAPI) -> None:
    ctx = ctx_of(app)
    submitted = {queue.submit(ctx.db, ctx.settings, ALICE, "train", digits_spec()).id for _ in range(16)}
    got: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def claimer(i: int) -> None:
        db = Database(ctx.settings)  # its own engine and connections, like another worker process
        try:
            barrier.wait()
            while (job := queue.claim(db, f"worker-{i}")) is not None:
                got[i].append(job.id)
        finally:
            db.dispose()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == sorted(submitted)


def test_a_lost_worker_is_noticed_then_the_job_retried_then_failed(app: FastAPI) -> None:
    ctx = ctx_of(app)
    job = queue.submit(ctx.db, ctx.settings, ALICE, "train", digits_spec())
    assert job.max_attempts == 3

    def stale() -> None:
        with ctx.db.write() as s:
            s.execute(update(Job).values(heartbeat_at=utcnow().replace(year=2000)))

    for attempt in (1, 2, 3):
        claimed = queue.claim(ctx.db, f"w{attempt}")
        assert claimed is not None and claimed.attempt == attempt
        assert queue.reap(ctx.db, 15.0) == []  # heartbeat is fresh
        stale()
        assert queue.reap(ctx.db, 15.0) == [job.id]
        assert not events.record(ctx.db, job.id, f"w{attempt}", "log", {"message": "late"})  # fenced out
    got = queue.get_job(ctx.db, ALICE, job.id)
    assert got.status == "failed" and "stopped responding (attempt 3 of 3)" in (got.error or "")
    statuses = [
        (e.data["status"], e.data.get("reason", "")) for e in events.since(ctx.db, job.id, 0) if e.type == "status"
    ]
    assert [s for s, _ in statuses] == ["queued", "running", "queued", "running", "queued", "running", "failed"]
    assert "stopped responding" in statuses[2][1]


async def test_events_stream_as_sse_and_resume_after_last_event_id(client: httpx.AsyncClient, app: FastAPI) -> None:
    ctx = ctx_of(app)
    job = (await client.post("/v1/jobs", json={"kind": "train", "spec": digits_spec()})).json()
    assert queue.claim(ctx.db, "w1") is not None
    sink = events.EventSink(ctx.db, job["id"], "w1", on_lost=lambda: None, every_s=3600)
    sink({"type": "started", "epochs": 2})
    sink({"type": "progress", "epoch": 1, "epochs": 2, "step": 5, "loss": 0.9, "eta_s": 3.0})
    sink({"type": "progress", "epoch": 1, "epochs": 2, "step": 9, "loss": 0.5, "throughput": 100.0})  # held back
    sink({"type": "epoch", "epoch": 1, "epochs": 2, "train": {"loss": 0.4}, "validation": {"accuracy": 0.9}})
    progress = (await client.get(f"/v1/jobs/{job['id']}")).json()["progress"]
    assert progress["step"] == 9 and progress["throughput"] == 100.0 and progress["eta_s"] == 3.0
    assert progress["metrics"] == {"loss": 0.4, "val_accuracy": 0.9}
    assert queue.finish(ctx.db, job["id"], "w1", "succeeded", result={"model": "digits-mlp", "version": 1})

    r = await client.get(f"/v1/jobs/{job['id']}/events")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.text.startswith("retry: ")
    frames = sse(r.text)
    assert [f["id"] for f in frames] == [1, 2, 3, 4, 5, 6]
    assert [f["event"] for f in frames] == ["status", "status", "started", "progress", "epoch", "status"]
    assert all(f["data"]["seq"] == f["id"] and f["data"]["type"] == f["event"] for f in frames)
    assert frames[-1]["data"]["status"] == "succeeded" and frames[-1]["data"]["result"]["version"] == 1
    again = sse((await client.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "4"})).text)
    assert [f["id"] for f in again] == [5, 6]
    assert sse((await client.get(f"/v1/jobs/{job['id']}/events", params={"after": 6})).text) == []
    logs = (await client.get(f"/v1/jobs/{job['id']}/logs")).text.splitlines()
    assert len(logs) == 6 and "epoch" in logs[4] and "val_accuracy=0.9" in logs[4]
    assert (await client.get(f"/v1/jobs/{job['id']}/logs", params={"tail": 2})).text.count("\n") == 2


async def test_a_real_training_job_registers_a_version_with_lineage(client: httpx.AsyncClient, app: FastAPI) -> None:
    spec = {**digits_spec("digits-a"), "register": {"model": "digits-a", "alias": "staging"}}
    headers = await as_member(client, "alice")
    job = (await client.post("/v1/jobs", json={"kind": "train", "spec": spec}, headers=headers)).json()
    worker = Worker(ctx_of(app).settings)
    try:
        assert worker.step()
    finally:
        worker.close()
    done = (await client.get(f"/v1/jobs/{job['id']}", headers=headers)).json()
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["model"] == "digits-a" and done["result"]["version"] == 1
    assert done["result"]["metrics"]["val_accuracy"] > 0.5
    model = (await client.get("/v1/models/digits-a", headers=headers)).json()
    assert model["owner"] == "alice" and model["aliases"] == {"staging": 1}
    version = (await client.get("/v1/models/digits-a/versions/1", headers=headers)).json()
    assert version["manifest"]["lineage"]["job"] == job["id"] and version["created_by"] == "alice"
    answer = await client.post("/v1/models/digits-a@staging/predict", json={"inputs": [[0.0] * 64]}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert not (ctx_of(app).settings.jobs_dir / job["id"]).exists()  # checkpoints removed after success
    kinds = [f["event"] for f in sse((await client.get(f"/v1/jobs/{job['id']}/events", headers=headers)).text)]
    assert kinds[:3] == ["status", "status", "started"] and "epoch" in kinds and kinds[-1] == "status"


async def test_a_sweep_runs_its_trials_and_registers_only_the_best(client: httpx.AsyncClient, app: FastAPI) -> None:
    spec = {
        "base": digits_spec("digits-sweep"),
        "parameters": {"train.optimizer.lr": [0.00001, 0.02]},
        "metric": "val_accuracy",
        "mode": "max",
    }
    sweep = (await client.post("/v1/jobs", json={"kind": "sweep", "spec": spec})).json()
    assert sweep["status"] == "running" and sweep["progress"] == {"trials": 2, "trials_done": 0}
    trials = (await client.get("/v1/jobs", params={"parent": sweep["id"]})).json()["items"]
    assert sorted(t["trial"]["params"]["train.optimizer.lr"] for t in trials) == [0.00001, 0.02]
    worker = Worker(ctx_of(app).settings)
    try:
        for _ in range(3):  # two trials, then the sweep itself ranks and registers
            assert worker.step()
        assert not worker.step()
    finally:
        worker.close()
    done = (await client.get(f"/v1/jobs/{sweep['id']}")).json()
    assert done["status"] == "succeeded", done["error"]
    table = done["result"]["trials"]
    assert [row["rank"] for row in table] == [1, 2]
    assert table[0]["params"] == {"train.optimizer.lr": 0.02} and table[0]["val_accuracy"] > table[1]["val_accuracy"]
    assert done["result"]["version"] == 1
    versions = (await client.get("/v1/models/digits-sweep/versions")).json()
    assert versions["total"] == 1
    lineage = versions["items"][0]["manifest"]["lineage"]
    assert lineage["job"] == table[0]["job"] and lineage["transform"]["sweep"] == sweep["id"]
    kinds = [f["event"] for f in sse((await client.get(f"/v1/jobs/{sweep['id']}/events")).text)]
    assert kinds.count("trial") == 2 and kinds[-1] == "status"
    assert not any((ctx_of(app).settings.jobs_dir / row["job"]).exists() for row in table)
