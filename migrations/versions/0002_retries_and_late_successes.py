"""Retries and late successes: what a saga waits on, its resends, its timed-out steps; timer kinds.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sagas", sa.Column("awaiting", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")))
    op.add_column("sagas", sa.Column("attempt", sa.Integer, nullable=False, server_default=sa.text("0")))
    op.add_column("sagas", sa.Column("timed_out", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")))
    op.add_column("deadlines", sa.Column("kind", sa.Text, nullable=False, server_default="deadline"))
    op.drop_constraint("deadlines_one_per_saga", "deadlines")
    op.create_unique_constraint("deadlines_one_per_kind", "deadlines", ["saga_id", "kind"])


def downgrade() -> None:
    op.drop_constraint("deadlines_one_per_kind", "deadlines")
    op.execute("DELETE FROM deadlines WHERE kind <> 'deadline'")
    op.create_unique_constraint("deadlines_one_per_saga", "deadlines", ["saga_id"])
    op.drop_column("deadlines", "kind")
    for column in ("timed_out", "attempt", "awaiting"):
        op.drop_column("sagas", column)
