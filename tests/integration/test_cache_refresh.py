"""The hot path's one-second caches (keys, references and permissions) are looked up again in the
background once half their life is gone, so under traffic no request waits for the database, and a
change made by another process (here: straight in the database, which no cache of this process hears
of) is seen at that refresh, within the second."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, event, update

from modelport.auth import keys
from modelport.registry import changes
from modelport.registry.tables import ApiKey, Permission
from modelport.serving import router
from modelport.serving.singleflight import SingleFlight
from tests.conftest import TrainedMnist, member_key, upload


class Clock:
    """time.monotonic for the caches: stands still, and moves when the test says (so a slow test
    machine cannot age an entry by itself)."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    for module in (router, keys, changes):  # their own view of `time` (only the caches read it), not the event loop's
        monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=clock))
    return clock


@pytest.fixture
async def member(client: httpx.AsyncClient, mnist_model: TrainedMnist) -> dict[str, str]:
    r = await upload(client, "mnist", mnist_model.onnx_path, mnist_model.manifest)
    assert r.status_code == 201, r.text
    key = await member_key(client, "reader")
    r = await client.put("/v1/models/mnist/permissions/reader", json={"role": "reader"})
    assert r.status_code in (200, 201), r.text
    return {"Authorization": f"Bearer {key}"}


async def predict(client: httpx.AsyncClient, headers: dict[str, str], image: list[int]) -> httpx.Response:
    return await client.post("/v1/models/mnist/predict", json={"inputs": image}, headers=headers)


async def settle(app: Any) -> None:
    """Let the background lookups (in worker threads) finish."""
    pending = [app.state.ctx.inference._routes._background, app.edge.fast._keys._background]
    for _ in range(500):
        await asyncio.sleep(0.01)
        if not any(pending):
            return
    raise AssertionError("the background lookups did not finish")


REVOCATIONS = {
    "permission": (delete(Permission).where(Permission.principal == "reader"), 404),
    "key": (update(ApiKey).where(ApiKey.principal == "reader").values(revoked_at=ApiKey.created_at), 401),
}


@pytest.mark.parametrize("revoked", list(REVOCATIONS))
async def test_a_revocation_takes_effect_at_the_refresh_without_a_request_waiting(
    app: Any, client: httpx.AsyncClient, member: dict[str, str], mnist_model: TrainedMnist, clock: Clock, revoked: str
) -> None:
    change, status = REVOCATIONS[revoked]
    image = mnist_model.test_images[0].astype(int).tolist()
    assert (await predict(client, member, image)).status_code == 200  # caches filled
    with app.state.ctx.db.write() as s:  # another process's change: this one's caches are not told
        s.execute(change)
    assert (await predict(client, member, image)).status_code == 200  # a fresh answer is still used
    clock.now += 0.6  # past half the entries' life: served from the cache, refreshed behind it
    assert (await predict(client, member, image)).status_code == 200
    await settle(app)
    r = await predict(client, member, image)  # still inside the second: the refresh saw the change
    assert r.status_code == status, r.text


async def test_past_the_second_the_answer_is_never_used(
    app: Any, client: httpx.AsyncClient, member: dict[str, str], mnist_model: TrainedMnist, clock: Clock
) -> None:
    image = mnist_model.test_images[0].astype(int).tolist()
    assert (await predict(client, member, image)).status_code == 200
    with app.state.ctx.db.write() as s:
        s.execute(delete(Permission).where(Permission.principal == "reader"))
    clock.now += 1.1  # no request came in the refresh window: the first one after it waits for the lookup
    r = await predict(client, member, image)
    assert r.status_code == 404, r.text


async def test_while_nothing_changes_only_the_change_counter_is_read(
    app: Any, client: httpx.AsyncClient, member: dict[str, str], mnist_model: TrainedMnist, clock: Clock
) -> None:
    image = mnist_model.test_images[0].astype(int).tolist()
    assert (await predict(client, member, image)).status_code == 200  # caches filled
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = app.state.ctx.db.read_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        for _ in range(10):  # six seconds of steady traffic, each answer past half its life
            clock.now += 0.6
            assert (await predict(client, member, image)).status_code == 200
            await settle(app)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    queries = [q for q in statements if q.lstrip().upper().startswith("SELECT")]
    assert queries, "the counter was never read"
    assert all("registry_changes" in q for q in queries), queries  # no key, reference or permission lookup
    assert len(queries) <= 10  # one read for every cache at each refresh, not one per entry
    with app.state.ctx.db.write() as s:  # now a change: the next refresh looks the answers up again
        s.execute(delete(Permission).where(Permission.principal == "reader"))
    clock.now += 0.6
    assert (await predict(client, member, image)).status_code == 200
    await settle(app)
    assert (await predict(client, member, image)).status_code == 404


async def test_a_background_lookup_is_shared_and_its_failure_dropped() -> None:
    flight: SingleFlight[int] = SingleFlight()
    calls: list[int] = []

    def lookup() -> int:
        calls.append(1)
        time.sleep(0.05)
        return 7

    flight.start("k", lookup)
    flight.start("k", lookup)
    await asyncio.sleep(0.01)
    assert await flight.run("k", lookup) == 7  # joins the lookup in flight
    assert calls == [1]

    def broken() -> int:
        raise RuntimeError("database down")

    flight.start("k", broken)
    await asyncio.sleep(0.1)
    assert not flight._background  # finished, its error dropped; the next caller gets it itself
    with pytest.raises(RuntimeError, match="database down"):
        await flight.run("k", broken)
