"""registry_changes: a counter bumped by triggers on every write to the tables serving caches

Revision ID: 0006
Revises: 0005

Triggers, not application hooks, so that a write from anywhere (another worker, an operator's SQL)
bumps it in the same transaction (``registry/changes.py`` says why the design is safe). On SQLite a
later ``batch_alter_table`` on a tracked table copies the table and drops its triggers; every start
puts missing ones back (``changes.ensure``), and such a migration should call ``changes.install``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from modelport.registry import changes

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_changes",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("counter", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    changes.install(op.get_bind())  # the row (counter 0) and the triggers


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name in changes.trigger_names(dialect):
        table = name.removeprefix("registry_changes_").removesuffix("_truncate")
        if dialect == "sqlite":
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
    if dialect != "sqlite":
        op.execute("DROP FUNCTION IF EXISTS registry_changes_bump()")
    op.drop_table("registry_changes")
