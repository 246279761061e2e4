"""Migration 0002 creates exactly the job tables the ORM describes (checked by Alembic's autogenerate)."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from modelport.config import Settings
from modelport.jobs.tables import Job, JobEvent
from modelport.registry.db import Database
from modelport.registry.tables import Base


def test_migrated_schema_matches_the_job_tables(tmp_path: Path) -> None:
    db = Database(Settings(home=tmp_path))
    try:
        db.migrate()
        db.migrate()  # idempotent
        with db.write_engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        ours = {Job.__tablename__, JobEvent.__tablename__}
        mine = [d for d in diff if any(t in repr(d) for t in ours)]
        assert mine == []
    finally:
        db.dispose()
