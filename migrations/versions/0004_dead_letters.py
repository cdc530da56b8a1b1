"""Dead letters: every message the orchestrator or the broker set aside, with its reason.

A queue cannot be browsed, filtered or replayed from; a table can. The orchestrator records what
it refuses in the transaction that acks it, and drains ``{ns}.dead-letter`` into the same table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, JSONB

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text),
        sa.Column("message_type", sa.Text),
        sa.Column("correlation_id", sa.Text),
        sa.Column("exchange", sa.Text, nullable=False),
        sa.Column("routing_key", sa.Text, nullable=False),
        sa.Column("properties", JSONB, nullable=False),
        sa.Column("body", BYTEA, nullable=False),
        sa.Column("body_size", sa.Integer, nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True)),
        sa.Column("replayed_by", sa.Text),
    )
    op.create_index("dead_letters_dead_at", "dead_letters", [sa.text("dead_at DESC"), sa.text("id DESC")])
    op.create_index("dead_letters_reason", "dead_letters", ["reason"])


def downgrade() -> None:
    op.drop_table("dead_letters")
