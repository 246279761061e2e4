"""Scoped keys and listings: a job or an audit row about a model outside the key's patterns is absent
from listings, and a job outside them is the same 404 as an unknown id (get, events, logs, cancel)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import TrainedMnist, upload
from tests.security.test_scoped_keys import bearer, new_key

SCOPE = ["team-a-*", "team_b-*", "solo"]


def train(name: str, register: str | None = None, key: str = "register") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "data": {"source": "builtin", "name": "digits", "preprocess": [{"scale": 0.0625}]},
        "model": {"layers": [{"dense": 4, "activation": "relu"}, {"dense": 10, "activation": "softmax"}]},
        "train": {"epochs": 1},
    }
    if register is not None:
        spec[key] = {"model": register}
    return spec


def sweep(name: str) -> dict[str, Any]:
    return {"base": train(name), "parameters": {"train.epochs": [1, 2]}}


def optimize(source: str, register: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"source": source, "steps": ["export"]}
    if register is not None:
        spec["register"] = {"model": register}
    return spec


# (kind, spec, visible to a key scoped to SCOPE)
JOBS: list[tuple[str, dict[str, Any], bool]] = [
    ("train", train("team-a-mlp"), True),
    ("train", train("secret-mlp"), False),
    ("train", train("secret-mlp", register="team-a-reg"), True),  # the registered model counts
    ("train", train("team-a-x", register="secret-reg"), False),
    ("train", train("team-a-y", register="team-a-z", key="registration"), True),
    ("train", train("team-ab"), False),  # "team-a-*" is a prefix
    ("train", train("team_b-1"), True),
    ("train", train("teamxb-1"), False),  # "_" is no wildcard
    ("train", train("solo"), True),
    ("train", train("solo2"), False),  # an exact pattern is no prefix
    ("sweep", sweep("team-a-sweep"), True),  # with its two trials
    ("sweep", sweep("secret-sweep"), False),  # and its two trials
    ("optimize", optimize("team-a-digits:1"), True),
    ("optimize", optimize("team-a-digits@production", register="solo"), True),
    ("optimize", optimize("team-a-digits:1", register="secret-opt"), False),
    ("optimize", optimize("secret:1", register="team-a-opt"), False),  # it reads a model outside
    ("optimize", optimize("solo:1"), True),
]


async def _setup(client: httpx.AsyncClient, mnist: TrainedMnist) -> tuple[dict[str, str], dict[str, str]]:
    """Models team-a-digits, secret and solo owned by ann; ann's wide and narrow keys; JOBS as ann."""
    for name in ("team-a-digits", "secret", "solo"):
        assert (await upload(client, name, mnist.onnx_path, mnist.manifest)).status_code == 201
        assert (await client.put(f"/v1/models/{name}/permissions/ann", json={"role": "owner"})).status_code == 200
        await client.put(f"/v1/models/{name}/aliases/production", json={"version": 1})
    wide = bearer((await new_key(client, "ann"))["key"])
    narrow = bearer((await new_key(client, "ann", scopes={"models": SCOPE}))["key"])
    return wide, narrow


async def _submit_all(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, tuple[str, bool]]:
    """Submit JOBS; return job id -> (kind, inside SCOPE) for every job, a sweep's trials included."""
    made: dict[str, tuple[str, bool]] = {}
    for kind, spec, visible in JOBS:
        r = await client.post("/v1/jobs", json={"kind": kind, "spec": spec}, headers=headers)
        assert r.status_code == 201, (spec, r.text)
        made[r.json()["id"]] = (kind, visible)
        if kind == "sweep":
            trials = (await client.get("/v1/jobs", params={"parent": r.json()["id"]}, headers=headers)).json()
            assert trials["total"] == 2
            made |= {t["id"]: ("train", visible) for t in trials["items"]}
    return made


async def _all_pages(client: httpx.AsyncClient, headers: dict[str, str], limit: int) -> tuple[list[str], int]:
    seen: list[str] = []
    totals = set()
    for offset in range(0, 100, limit):
        page = (await client.get("/v1/jobs", params={"limit": limit, "offset": offset}, headers=headers)).json()
        totals.add(page["total"])
        seen += [j["id"] for j in page["items"]]
        if len(page["items"]) < limit:
            break
    assert len(totals) == 1
    return seen, totals.pop()


def _error(r: httpx.Response, job_id: str) -> str:
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert error["code"] == "job_not_found"
    return repr(error).replace(job_id, "<id>")


async def test_a_scoped_key_lists_and_reaches_only_jobs_about_its_models(
    client: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    wide, narrow = await _setup(client, mnist_model)
    made = await _submit_all(client, wide)
    inside = {i for i, (_, visible) in made.items() if visible}
    outside = set(made) - inside
    assert len(inside) == 11 and len(outside) == 10

    for limit in (1, 3, 500):  # every page full until the last; the total counts what the key sees
        seen, total = await _all_pages(client, narrow, limit)
        assert len(seen) == len(set(seen)) and set(seen) == inside and total == len(inside), limit
    assert set((await _all_pages(client, wide, 4))[0]) == set(made)
    for kind in ("train", "sweep", "optimize"):
        page = (await client.get("/v1/jobs", params={"kind": kind}, headers=narrow)).json()
        want = {i for i in inside if made[i][0] == kind}
        assert {j["id"] for j in page["items"]} == want and page["total"] == len(want)
    for sweep_id in (i for i, (kind, _) in made.items() if kind == "sweep"):
        trials = (await client.get("/v1/jobs", params={"parent": sweep_id}, headers=narrow)).json()
        assert trials["total"] == (2 if sweep_id in inside else 0)

    missing = str(uuid.uuid4())
    for job_id in sorted(outside):
        for method, suffix in [("GET", ""), ("GET", "/events"), ("GET", "/logs"), ("POST", "/cancel")]:
            hidden = await client.request(method, f"/v1/jobs/{job_id}{suffix}", headers=narrow)
            absent = await client.request(method, f"/v1/jobs/{missing}{suffix}", headers=narrow)
            assert _error(hidden, job_id) == _error(absent, missing), (job_id, suffix)
        assert (await client.get(f"/v1/jobs/{job_id}", headers=wide)).json()["status"] in ("queued", "running")
    for job_id in sorted(inside):
        assert (await client.get(f"/v1/jobs/{job_id}", headers=narrow)).status_code == 200
        logs = await client.get(f"/v1/jobs/{job_id}/logs", headers=narrow)
        assert logs.status_code == 200 and " status status=" in logs.text, logs.text
    one = next(i for i in sorted(inside) if made[i][0] == "optimize")
    assert (await client.post(f"/v1/jobs/{one}/cancel", headers=narrow)).json()["status"] == "cancelled"
    stream = await client.get(f"/v1/jobs/{one}/events", headers=narrow)  # ends: the job has ended
    assert stream.status_code == 200 and '"cancelled"' in stream.text


async def test_a_scoped_admin_key_sees_only_audit_rows_about_its_models(
    client: httpx.AsyncClient, mnist_model: TrainedMnist
) -> None:
    wide, _ = await _setup(client, mnist_model)
    made = await _submit_all(client, wide)
    inside = {i for i, (_, visible) in made.items() if visible}
    await new_key(client, "bob")  # a row about no model
    admin = bearer((await new_key(client, "admin", role="admin", scopes={"models": SCOPE}))["key"])

    everything = (await client.get("/v1/audit", params={"limit": 1000})).json()["items"]
    expected = [row["id"] for row in everything if _about_scope(row, inside)]
    assert {r["action"].split(".")[0] for r in everything} - {"model", "version", "alias", "permission", "job"}
    assert len(expected) < len(everything)

    got = (await client.get("/v1/audit", params={"limit": 1000}, headers=admin)).json()["items"]
    assert [row["id"] for row in got] == expected
    paged: list[int] = []
    before: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"before_id": before} if before else {})
        page = (await client.get("/v1/audit", params=params, headers=admin)).json()["items"]
        paged += [row["id"] for row in page]
        if len(page) < 3:
            break
        before = page[-1]["id"]
    assert paged == expected  # full pages until the end, nothing skipped
    jobs_rows = (await client.get("/v1/audit", params={"action": "job."}, headers=admin)).json()["items"]
    assert {row["target"] for row in jobs_rows} == {f"job:{i}" for i in inside if _submitted(i, everything)}
    assert not any(row["target"].removeprefix("job:") in set(made) - inside for row in got)
    unscoped = bearer((await new_key(client, "admin", role="admin"))["key"])
    assert len((await client.get("/v1/audit", params={"limit": 1000}, headers=unscoped)).json()["items"]) > len(got)


def _submitted(job_id: str, rows: list[dict[str, Any]]) -> bool:
    return any(r["target"] == f"job:{job_id}" for r in rows)


def _about_scope(row: dict[str, Any], jobs_inside: set[str]) -> bool:
    """The rule, written out by hand for the rows this test makes."""
    kind, target = row["action"].split(".")[0], row["target"]
    if kind == "job":
        return target.removeprefix("job:") in jobs_inside
    if kind not in ("model", "version", "alias", "deployment", "permission"):
        return False
    name = target.split(":")[0].split("@")[0]
    return name.startswith(("team-a-", "team_b-")) or name == "solo"


@pytest.mark.parametrize("suffix", ["", "/events", "/logs", "/cancel"])
async def test_an_unscoped_key_still_reaches_every_job_of_its_principal(
    client: httpx.AsyncClient, mnist_model: TrainedMnist, suffix: str
) -> None:
    wide, _ = await _setup(client, mnist_model)
    job = (await client.post("/v1/jobs", json={"kind": "train", "spec": train("secret-mlp")}, headers=wide)).json()
    star = bearer((await new_key(client, "ann", scopes={"models": ["*"]}))["key"])
    if suffix == "/events":
        await client.post(f"/v1/jobs/{job['id']}/cancel", headers=wide)  # so its stream ends
    for headers in (wide, star):
        method = "POST" if suffix == "/cancel" else "GET"
        r = await client.request(method, f"/v1/jobs/{job['id']}{suffix}", headers=headers)
        assert r.status_code == 200, r.text
