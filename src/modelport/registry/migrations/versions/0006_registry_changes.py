"""registry_changes: a counter bumped by triggers on every write to the tables serving caches

Revision ID: 0006
Revises: 0005

Triggers, not application hooks, so that a write from anywhere (another worker, an operator's SQL)
bumps it in the same transaction. On SQLite a later ``batch_alter_table`` on a tracked table copies the
table and drops its triggers: such a migration must call ``create_triggers`` again (a test checks that
every tracked table bumps the counter after the last migration).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TRACKED = ("models", "versions", "aliases", "permissions", "api_keys", "deployments")  # = changes.TRACKED
BUMP = "UPDATE registry_changes SET counter = counter + 1 WHERE id = 1"


def create_triggers(tables: tuple[str, ...] = TRACKED) -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in tables:
            for event in ("INSERT", "UPDATE", "DELETE"):
                name = f"registry_changes_{table}_{event.lower()}"
                op.execute(f"DROP TRIGGER IF EXISTS {name}")
                op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} BEGIN {BUMP}; END")
        return
    # PostgreSQL: deferred constraint triggers run at COMMIT, so the counter's row lock is the last lock a
    # writer takes and nobody waits for it while holding it (a statement trigger took it mid-transaction,
    # and a writer that then waited for a row another writer held could deadlock with that writer).
    op.execute(
        "CREATE OR REPLACE FUNCTION registry_changes_bump() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN {BUMP}; RETURN NULL; END $$"
    )
    for table in tables:
        op.execute(f"DROP TRIGGER IF EXISTS registry_changes_{table} ON {table}")
        op.execute(
            f"CREATE CONSTRAINT TRIGGER registry_changes_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION registry_changes_bump()"
        )
        op.execute(f"DROP TRIGGER IF EXISTS registry_changes_{table}_truncate ON {table}")
        op.execute(
            f"CREATE TRIGGER registry_changes_{table}_truncate AFTER TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION registry_changes_bump()"
        )


def upgrade() -> None:
    table = op.create_table(
        "registry_changes",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("counter", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(table, [{"id": 1, "counter": 0}])
    create_triggers()


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in TRACKED:
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS registry_changes_{table}_{event}")
    else:
        for table in TRACKED:
            op.execute(f"DROP TRIGGER IF EXISTS registry_changes_{table} ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS registry_changes_{table}_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS registry_changes_bump()")
    op.drop_table("registry_changes")
