"""Saga listing: newest first by (created_at, id), the order of GET /sagas and its cursor.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE INDEX sagas_created ON sagas (created_at DESC, id DESC)")


def downgrade() -> None:
    op.drop_index("sagas_created", "sagas")
