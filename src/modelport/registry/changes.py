"""The registry's change counter: one row that every write to what serving caches bumps, and a watch
that reads it so a process can keep its cached answers while nothing changed.

The hot path caches keys, references and permissions for a second (``auth/keys.py``,
``serving/router.py``). Looking each one up again every second costs ~1.7 ms of ORM work per reference;
with 20 models that is 40 lookups a second, a measurable share of one core. Instead, a cached answer
records the counter it was looked up under, and a single read of the counter (one tiny query per
process, at most every ``CHECK_EVERY_S``) confirms every answer taken under the value it returns.

Why this is safe:

- Database triggers (migration 0006) bump the counter in the same transaction as the change, on every
  insert, update and delete of ``TRACKED`` tables, whoever writes: this process, another worker, or an
  operator's SQL. A change and its bump are committed together or not at all.
- A lookup reads the counter *before* anything else, so its answer holds every change up to the value
  it records (on PostgreSQL's read committed a later statement may see more, never less).
- A read of the counter that started at ``t`` and returned ``n`` proves that no change beyond ``n``
  had been committed at ``t``; so an answer recorded under ``n`` is as fresh as ``t``.

The counter is a row, not a sequence: a sequence's value is taken before the commit, so a reader could
see it ahead of the change it stands for. On PostgreSQL the triggers are deferred to the commit, so
the row's lock is the last one a writer takes (taken mid-transaction, two writers each waiting for a
row the other held deadlocked).

Every start checks that the row and every trigger are there and puts back what is missing
(``ensure``): a restore, a hand-made schema or a later SQLite table rebuild may have lost them, and an
answer kept by a counter that no longer moves would outlive a revocation. A counter that cannot be
read (its row deleted while serving) confirms nothing: the caches fall back to their one-second life.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy import Connection, select, text
from sqlalchemy.orm import Session

from modelport.registry.tables import RegistryChanges

if TYPE_CHECKING:
    from modelport.registry.db import Database

TRACKED = ("models", "versions", "aliases", "permissions", "api_keys", "deployments")
"""The tables whose rows the hot path's caches are built from."""
CHECK_EVERY_S = 0.1
"""A read of the counter this recent is reused by every cache that asks (one query per process)."""


BUMP = "UPDATE registry_changes SET counter = counter + 1 WHERE id = 1"
_unreadable = itertools.count(-2, -1)
"""Values for a counter that is not there: each differs from every other, so none confirms an answer."""


def read(session: Session) -> int:
    """The counter as this session sees it; read it first in a lookup (see the module docstring)."""
    counter = session.scalar(select(RegistryChanges.counter).where(RegistryChanges.id == 1))
    return next(_unreadable) if counter is None else counter


def trigger_names(dialect: str) -> list[str]:
    if dialect == "sqlite":
        return [f"registry_changes_{t}_{e}" for t in TRACKED for e in ("insert", "update", "delete")]
    return [f"registry_changes_{t}{suffix}" for t in TRACKED for suffix in ("", "_truncate")]


def install(conn: Connection, tables: tuple[str, ...] = TRACKED) -> None:
    """(Re)create the counter's row and the triggers on ``tables`` (idempotent; migration 0006 and
    ``ensure`` call it)."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        conn.execute(text("INSERT OR IGNORE INTO registry_changes (id, counter) VALUES (1, 0)"))
        for table in tables:
            for event in ("INSERT", "UPDATE", "DELETE"):
                name = f"registry_changes_{table}_{event.lower()}"
                conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
                conn.execute(text(f"CREATE TRIGGER {name} AFTER {event} ON {table} BEGIN {BUMP}; END"))
        return
    conn.execute(text("INSERT INTO registry_changes (id, counter) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"))
    conn.execute(
        text(
            "CREATE OR REPLACE FUNCTION registry_changes_bump() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {BUMP}; RETURN NULL; END $$"
        )
    )
    for table in tables:
        conn.execute(text(f"DROP TRIGGER IF EXISTS registry_changes_{table} ON {table}"))
        conn.execute(
            text(
                f"CREATE CONSTRAINT TRIGGER registry_changes_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION registry_changes_bump()"
            )
        )
        conn.execute(text(f"DROP TRIGGER IF EXISTS registry_changes_{table}_truncate ON {table}"))
        conn.execute(
            text(
                f"CREATE TRIGGER registry_changes_{table}_truncate AFTER TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION registry_changes_bump()"
            )
        )


def missing(conn: Connection) -> list[str]:
    """The triggers (and ``row``, for the counter's row) that are not there."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        present = set(conn.scalars(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")))
    else:
        present = set(conn.scalars(text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")))
    gone = [name for name in trigger_names(dialect) if name not in present]
    if conn.scalar(text("SELECT count(*) FROM registry_changes WHERE id = 1")) != 1:
        gone.append("row")
    return gone


def ensure(conn: Connection) -> list[str]:
    """Put back a missing row or trigger (at every start, after the migrations); returns what was
    missing. Checking costs two catalog reads; only a damaged schema pays for the DDL, under a lock on
    PostgreSQL so that workers starting together do not race on it."""
    if not missing(conn):
        return []
    if conn.dialect.name != "sqlite":
        conn.execute(text("SELECT pg_advisory_xact_lock(7245001)"))  # held to the commit
    gone = missing(conn)  # again, under the lock: another worker may have just put them back
    if gone:
        install(conn)
    return gone


class ChangeWatch:
    """This process's latest read of the counter, shared by the caches of one app."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.state: tuple[int, float] = (-1, float("-inf"))
        """(counter, when the read that returned it started); one tuple, so a reader without the lock
        never sees one half new and the other old."""
        self._lock = threading.Lock()

    def fresh_since(self, looked_up_at: float, counter: int) -> float:
        """How fresh an answer looked up at ``looked_up_at`` under ``counter`` is: the later of that
        time and the latest read that found the counter unchanged."""
        seen, read_at = self.state
        return read_at if counter == seen and read_at > looked_up_at else looked_up_at

    def fresh(self, looked_up_at: float, counter: int, max_age: float) -> bool:
        """Whether an answer is at most ``max_age`` old; past it, the counter is read (``check``: from a
        worker thread) and may prove it still current."""
        if time.monotonic() - self.fresh_since(looked_up_at, counter) <= max_age:
            return True
        self.check()
        return time.monotonic() - self.fresh_since(looked_up_at, counter) <= max_age

    def check(self) -> None:
        """Read the counter (in a worker thread: it queries the database), unless a read that started
        within ``CHECK_EVERY_S`` already did; callers that arrive meanwhile wait for it and share it."""
        with self._lock:
            started = time.monotonic()
            if started - self.state[1] <= CHECK_EVERY_S:
                return
            with self.db.read() as s:
                counter = read(s)
            self.state = (counter, started)
