"""Partition epochs: the fence of a partition's hand-over between replicas.

A replica that takes a partition raises its epoch, and every batch it commits checks, first and
under a share lock, that the epochs of its messages' partitions are still the ones it took: a
batch taken before a hand-over cannot commit after it (the taker waits for it, and the batches
that come later find the epoch moved on). Rows, unlike the advisory locks that say who owns a
partition, survive a database failover.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "partition_epochs",
        sa.Column("namespace", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("namespace", "partition", name="partition_epochs_pk"),
    )


def downgrade() -> None:
    op.drop_table("partition_epochs")
