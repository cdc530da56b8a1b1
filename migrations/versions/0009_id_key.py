"""The service's id key: the secret its commands' and timers' ids are keyed with.

Command ids were uuid5 of the saga id, its version and the command's place, which anyone who
knows a saga's id can compute, and so forge a reply's id before the reply exists. They are now an
HMAC with this key (``orchestrator/core/ids.py``). It is generated here, once, and kept in the
database, so that every replica, every CLI command and a restore from backup agree on it; the
journal says per entry which scheme it was decided with. ``orchestrator migrate`` generates one
anew if the row is ever missing.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    keys = op.create_table(
        "id_keys",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("secret", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.bulk_insert(keys, [{"name": "ids", "secret": secrets.token_bytes(32)}])


def downgrade() -> None:
    op.drop_table("id_keys")
