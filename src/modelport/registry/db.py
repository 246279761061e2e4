"""Database engine, sessions and migrations, built from Settings.

SQLite and PostgreSQL are both first-class. On SQLite every write transaction starts with
``BEGIN IMMEDIATE`` so that two writers queue on the busy timeout instead of failing with "database is
locked" when a read lock would have to be upgraded; reads use a second engine with plain ``BEGIN``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from modelport.config import Settings
from modelport.registry import changes

log = logging.getLogger(__name__)


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=10)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """Owns the engines; ``read()`` and ``write()`` give sessions that commit or roll back on exit."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.db_url
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            settings.home.mkdir(parents=True, exist_ok=True)
            self.write_engine = _sqlite_engine(self.url, immediate=True)
            self.read_engine = _sqlite_engine(self.url, immediate=False)
        else:
            self.write_engine = create_engine(self.url, pool_size=10, max_overflow=20, pool_pre_ping=True)
            self.read_engine = self.write_engine
        self._write = sessionmaker(self.write_engine, expire_on_commit=False)
        self._read = sessionmaker(self.read_engine, expire_on_commit=False)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session in one transaction, committed on normal exit and rolled back on any error."""
        with self._write() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    def ping(self) -> None:
        with self.read_engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def migrate(self) -> None:
        """Apply every Alembic migration not yet applied (idempotent), then make sure the change
        counter's row and triggers are all there (``registry/changes.py``)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(resources.files("modelport.registry") / "migrations"))
        with self.write_engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            if conn.in_transaction():
                conn.commit()
            with conn.begin():
                gone = changes.ensure(conn)
        if gone:
            log.warning("registry_changes: put back what was missing: %s", ", ".join(gone))

    def dispose(self) -> None:
        """Close the pools, for good: nothing is kept open after this.

        Work can still be under way at shutdown (a lookup finishing in a worker thread), or start just
        after it (an audit record written once its response has gone, a route refreshed in the
        background). A connection it holds is closed when it comes back to its old pool, which nobody
        uses again; one it opens from the engine's new pool is closed when it comes back too. Kept open
        instead, it would be found by the collector, at whatever moment a collection runs (psycopg warns
        then, and under ``filterwarnings = error`` that fails whichever test is running)."""
        engines = (
            [self.write_engine] if self.read_engine is self.write_engine else [self.write_engine, self.read_engine]
        )
        for engine in engines:
            old = engine.pool
            engine.dispose()
            event.listen(old, "checkin", _close_returned)
            event.listen(engine.pool, "checkin", _close_returned)


def _close_returned(dbapi_conn: Any, record: Any) -> None:
    """A connection checked in after ``Database.dispose``: closed, its pool entry left to reconnect if
    it is ever used again."""
    if dbapi_conn is not None:
        record.invalidate()
