"""Disposing the database closes, for good, what work still under way or started afterwards (a lookup
finishing in a worker thread at shutdown, an audit record written after its response) uses: each
connection when it comes back, instead of leaving it open for the garbage collector (psycopg then
warns, and under ``filterwarnings = error`` that fails whichever test runs). Runs on SQLite and,
under ``make pytest-postgres``, on PostgreSQL."""

from __future__ import annotations

import gc
import sqlite3
import warnings
from typing import Any

from sqlalchemy import text

from modelport.config import Settings
from modelport.registry.db import Database


def closed(raw: Any) -> bool:
    if isinstance(raw, sqlite3.Connection):
        try:
            raw.execute("SELECT 1")
        except sqlite3.ProgrammingError:
            return True
        return False
    return bool(raw.closed)


def test_a_connection_in_use_at_dispose_is_closed_when_it_comes_back(settings: Settings) -> None:
    db = Database(settings)
    with db.read() as session:
        session.execute(text("SELECT 1"))
        raw = session.connection().connection.dbapi_connection
        db.dispose()  # shutdown, while this lookup is still running
        assert not closed(raw)  # the lookup finishes on its connection
        session.execute(text("SELECT 1"))
    assert closed(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gc.collect()


def test_the_database_still_serves_after_dispose_and_keeps_nothing_open(settings: Settings) -> None:
    """An audit record written after its response has gone, or a route refreshed in the background,
    can reach the database after shutdown disposed it: it works, and its connection is closed when it
    comes back, so nothing is left for the collector."""
    db = Database(settings)
    db.ping()
    db.dispose()
    for _ in range(2):
        with db.read() as session:
            raw = session.connection().connection.dbapi_connection
            assert session.execute(text("SELECT 1")).scalar() == 1
        assert closed(raw)
    with db.write() as session:
        raw = session.connection().connection.dbapi_connection
        session.execute(text("SELECT 1"))
    assert closed(raw)
    del db, session
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gc.collect()
