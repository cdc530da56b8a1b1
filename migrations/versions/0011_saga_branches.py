"""A saga's branches: what it waits on besides its state's commands (issue 28).

The undo of a step's success that came after the saga gave up on it is awaited, retried and
bounded by its deadline like any compensation, beside whatever the saga does meanwhile; its
record lives here (``orchestrator/core/branches.py``) and its timers in ``deadlines``, under
kinds ``deadline:<branch>`` and ``retry:<branch>``. Adding a column with a constant default
rewrites no row (PostgreSQL 11 and later).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sagas", sa.Column("branches", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")))


def downgrade() -> None:
    op.execute("DELETE FROM deadlines WHERE kind LIKE 'deadline:%' OR kind LIKE 'retry:%'")
    op.drop_column("sagas", "branches")
