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
see it ahead of the change it stands for.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.registry.tables import RegistryChanges

if TYPE_CHECKING:
    from modelport.registry.db import Database

TRACKED = ("models", "versions", "aliases", "permissions", "api_keys", "deployments")
"""The tables whose rows the hot path's caches are built from."""
CHECK_EVERY_S = 0.1
"""A read of the counter this recent is reused by every cache that asks (one query per process)."""


def read(session: Session) -> int:
    """The counter as this session sees it; read it first in a lookup (see the module docstring)."""
    return session.scalar(select(RegistryChanges.counter).where(RegistryChanges.id == 1)) or 0


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
