"""Retention: tombstones of archived sagas, and the index that prunes the inbox by saga.

``orchestrator archive`` exports finished sagas with their journals and deletes them; each leaves
a tombstone (id, workflow, key, release, final state and status, when it was created, finished
and archived), so that a late duplicate of its start event, or ``POST /sagas`` with its key again,
is recognised and does not start the business a second time. ``inbox_saga`` lets the archive and
the inbox pruning find a saga's inbox rows without reading the whole inbox.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tombstones",
        sa.Column("saga_id", sa.Text, primary_key=True),
        sa.Column("workflow", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("release", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("tombstones_archived_at", "tombstones", ["archived_at"])
    op.create_index("inbox_saga", "inbox", ["saga_id"])


def downgrade() -> None:
    op.drop_index("inbox_saga", table_name="inbox")
    op.drop_table("tombstones")
