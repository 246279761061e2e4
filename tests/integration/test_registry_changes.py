"""The registry's change counter (``registry/changes.py``): the database bumps it on every write to the
tables serving caches, whoever writes (the API, or plain SQL from another tool), and a failed write
leaves it alone. Runs on SQLite and, under ``make pytest-postgres``, on PostgreSQL's triggers."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from modelport.registry import changes
from modelport.registry.tables import Model
from tests.conftest import PG_URL, TrainedMnist, member_key, upload


def counter(app: Any) -> int:
    with app.state.ctx.db.read() as s:
        return changes.read(s)


@pytest.fixture
async def filled(app: Any, client: httpx.AsyncClient, mnist_model: TrainedMnist) -> Any:
    """A row in every tracked table, each written through the API; the counter rises at each step."""
    seen = [counter(app)]
    assert (await upload(client, "counted", mnist_model.onnx_path, mnist_model.manifest)).status_code == 201
    seen.append(counter(app))
    await member_key(client, "someone")
    seen.append(counter(app))
    steps = [
        client.put("/v1/models/counted/permissions/someone", json={"role": "reader"}),
        client.put("/v1/models/counted/aliases/production", json={"version": 1}),
        client.put("/v1/models/counted/deployment", json={"routes": [{"version": 1, "weight": 1}]}),
    ]
    for step in steps:
        r = await step
        assert r.status_code in (200, 201), r.text
        seen.append(counter(app))
    assert all(a < b for a, b in itertools.pairwise(seen)), seen
    return app


@pytest.mark.parametrize("table", changes.TRACKED)
def test_plain_sql_on_every_tracked_table_bumps_the_counter(filled: Any, table: str) -> None:
    db = filled.state.ctx.db
    with db.read() as s:
        assert s.scalar(text(f"SELECT count(*) FROM {table}")), f"the fixture left {table} empty"
    before = counter(filled)
    with db.write() as s:  # as an operator's SQL would: no ORM, no Modelport code
        s.execute(text(f"UPDATE {table} SET {_column(table)} = {_column(table)}"))
    assert counter(filled) > before
    if table == "versions":  # the one reference without ON DELETE CASCADE
        with db.write() as s:
            s.execute(text("DELETE FROM aliases"))
    before = counter(filled)
    with db.write() as s:
        s.execute(text(f"DELETE FROM {table}"))
    assert counter(filled) > before


def test_a_rolled_back_write_leaves_the_counter_alone(filled: Any) -> None:
    db = filled.state.ctx.db
    before = counter(filled)

    def abandoned() -> None:
        with db.write() as s:
            s.execute(text("UPDATE models SET description = 'changed'"))
            raise RuntimeError("abandoned")

    with pytest.raises(RuntimeError, match="abandoned"):
        abandoned()
    assert counter(filled) == before
    with db.read() as s:
        assert s.scalar(text("SELECT description FROM models")) != "changed"


def test_a_start_puts_back_a_lost_trigger_and_row(app: Any) -> None:
    """A restore or a hand-made schema may lack them; an answer kept by a counter that no longer moves
    would outlive a revocation."""
    db = app.state.ctx.db
    dialect = "sqlite" if db.is_sqlite else "postgresql"
    lost = changes.trigger_names(dialect)[0]  # models, on insert (SQLite) / every row change (PostgreSQL)
    with db.write() as s:
        s.execute(text(f"DROP TRIGGER {lost}" if db.is_sqlite else f"DROP TRIGGER {lost} ON models"))
        s.execute(text("DELETE FROM registry_changes"))
    with db.write_engine.connect() as conn:
        assert set(changes.missing(conn)) == {lost, "row"}
    db.migrate()  # what every start runs
    with db.write_engine.connect() as conn:
        assert changes.missing(conn) == []
    before = counter(app)
    with db.write() as s:
        s.add(Model(name="restored", owner="admin"))
    assert counter(app) > before


def test_a_counter_that_cannot_be_read_confirms_nothing(app: Any) -> None:
    db = app.state.ctx.db
    watch = changes.ChangeWatch(db)
    with db.write() as s:
        s.execute(text("DELETE FROM registry_changes"))
    with db.read() as s:
        looked_up_under = changes.read(s)
    watch.check()
    assert watch.state[0] != looked_up_under  # so an answer is only as fresh as its own lookup
    assert watch.fresh_since(looked_up_at=5.0, counter=looked_up_under) == 5.0


@pytest.mark.skipif(not PG_URL, reason="SQLite serializes writers: none waits for another's rows")
def test_writers_that_wait_for_each_others_rows_do_not_deadlock_on_the_counter(filled: Any) -> None:
    """Each writer bumps the counter at its commit, so none holds the counter's lock while it waits for
    a row (with the bump at each statement, this interleaving deadlocked)."""
    engine = filled.state.ctx.db.write_engine
    before = counter(filled)
    failed: list[BaseException] = []
    with engine.connect() as first, engine.connect() as second:
        first.execute(text("SELECT id FROM models FOR UPDATE"))  # as an upload locks its model
        second.execute(text("UPDATE aliases SET version_id = version_id"))  # a tracked write first

        def then_the_model() -> None:
            try:
                second.execute(text("UPDATE models SET description = 'second'"))  # waits for `first`
                second.commit()
            except BaseException as e:  # noqa: BLE001 - reported by the assertion below
                failed.append(e)

        waiting = threading.Thread(target=then_the_model)
        waiting.start()
        time.sleep(0.3)
        first.execute(text("UPDATE models SET next_version = next_version"))  # a tracked write while waited on
        first.commit()
        waiting.join(timeout=10)
    assert not waiting.is_alive() and not failed, failed
    assert counter(filled) >= before + 2


def _column(table: str) -> str:
    """A column every tracked table has, to update to itself."""
    return {"deployments": "model_id", "api_keys": "id"}.get(table, "id")
