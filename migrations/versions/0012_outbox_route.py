"""Outbox rows may be messages the orchestrator sends itself (issue 28, child sagas).

A child saga's start, its outcome for its parent and its parent's cancel are published into the
orchestrator's own queue, not to a participant: ``outbox.route`` says where (``start:<workflow>``
or ``saga:<saga id>``, ``orchestrator/core/children.py``); NULL is a participant's command, as
every row before it was.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("route", sa.Text))


def downgrade() -> None:
    op.execute("DELETE FROM outbox WHERE route IS NOT NULL")
    op.drop_column("outbox", "route")
