"""Sagas, journal, outbox, inbox and deadlines.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sagas",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("workflow", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("parked", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.UniqueConstraint("workflow", "key", name="sagas_workflow_key"),
    )
    op.create_index("sagas_status_updated", "sagas", ["status", "updated_at"])
    op.create_index("sagas_workflow_state", "sagas", ["workflow", "state"])
    op.create_table(
        "journal",
        sa.Column("saga_id", sa.Text, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("message_type", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column("message", JSONB, nullable=False),
        sa.Column("decision", JSONB, nullable=False),
        sa.Column("actor", sa.Text),
        sa.Column("recorded_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("saga_id", "seq", name="journal_pk"),
    )
    op.create_table(
        "outbox",
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("saga_id", sa.Text, nullable=False),
        sa.Column("workflow", sa.Text, nullable=False),
        sa.Column("message_type", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "inbox",
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("saga_id", sa.Text),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("duplicates", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.create_table(
        "deadlines",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("saga_id", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("due_at", TZ, nullable=False),
        sa.UniqueConstraint("saga_id", name="deadlines_one_per_saga"),
    )
    op.create_index("deadlines_due", "deadlines", ["due_at"])


def downgrade() -> None:
    for table in ("deadlines", "inbox", "outbox", "journal", "sagas"):
        op.drop_table(table)
