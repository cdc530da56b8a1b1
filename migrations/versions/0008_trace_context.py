"""Outbox rows and timers keep the trace context of the message that caused them.

A command is published by the relay after its commit, maybe by another replica or after a
restart, and a timer fires much later from its row: each keeps the W3C trace context
(``traceparent``, then ``tracestate`` after a space) so that what it causes stays in the saga's
trace (docs/tracing.md). NULL: untraced, or written before this migration.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("trace", sa.Text))
    op.add_column("deadlines", sa.Column("trace", sa.Text))


def downgrade() -> None:
    op.drop_column("deadlines", "trace")
    op.drop_column("outbox", "trace")
