"""Outbox rows name the replica that committed them, so that another replica's sweep re-sends
only the rows of a replica that is gone.

``outbox.holder`` is the key of the session-level advisory lock the committing replica holds
(``pg_advisory_lock(<orchestrator>, holder)``) for as long as it lives: PostgreSQL releases it when
that session ends, however the replica died. Rows from before (NULL) belong to nobody.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("holder", sa.Integer))


def downgrade() -> None:
    op.drop_column("outbox", "holder")
